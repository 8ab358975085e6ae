"""The benchmark: timebatch's pipeline against the database's floor and a naive peer.

``python -m bench.run`` (``make bench``) starts its own stack (see bench.stack), then for each
batch size measures in one run, on one database:

* create through the real pipeline, polling the job, and again with ``Prefer: wait=60``;
* at the operations size (10,000): update, approve, unapprove and delete of those entries;
* the floor and the submit floor (bench.floor) for the same request body;
* the naive peer (bench.naive) for the same request body;

and prints a table of medians, the ratios with their targets, and writes everything (each
repetition included) to ``bench/results/<timestamp>.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

import orjson
from sqlalchemy import text

from bench import fairness, streams, webhooks
from bench.client import Client, Outcome, clock_offset
from bench.documents import ADMIN, MEMBER, ORGANIZATION, create_body, refs_body, update_body
from bench.floor import Floor, SmallFloor
from bench.report import Ratio, Row, ratio, table
from bench.stack import REPO, BenchError, Child, Stack, open_stack
from shared.cli.demo import FIRST_FREE_ENTRY_ID
from shared.settings import Settings, SettingsError

DEFAULT_SIZES = (100, 1_000, 10_000, 100_000)
QUICK_SIZES = (100, 1_000, 10_000)
OPS_SIZE = 10_000
TARGET_SIZE = 10_000
MEMORY_SIZE = 100_000
# The most either process (the largest single web or worker process) may hold at 100,000.
MEMORY_LIMIT_MIB = 256.0
# Beyond the body itself, the most the worker's peak may grow per entry (from 10,000 on).
SLOPE_LIMIT_BYTES = 1024.0
CREATE_TARGET = 2.0
# Each other operation's apply time at OPS_SIZE, against create's, at most.
OPS_TARGET = 1.2
PREFER_WAIT = 60
# The naive peer is skipped at a size where one request would take longer than this.
NAIVE_BUDGET = 300.0
# ... and measured once instead of --repeat times where it would take longer than this.
NAIVE_REPEAT_BUDGET = 60.0
WARMUP_BATCHES = 6
FLOOR_RUNS = 3
FLOOR_RUNS_UP_TO = 10_000
# Small jobs with Prefer: wait against the small-job floor, each this many times (their
# fixed costs are a few milliseconds: one run says little), and the most each may take.
SMALL_TARGETS = {1: 3.0, 100: 2.0}
SMALL_RUNS = 15


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run",
        description="Benchmark timebatch against the database's floor and a naive peer.",
    )
    parser.add_argument(
        "--sizes",
        default=None,
        help="comma-separated batch sizes (default 100,1000,10000,100000)",
    )
    parser.add_argument(
        "--repeat", type=int, default=None, help="runs per measurement; the median is reported"
    )
    parser.add_argument(
        "--quick", action="store_true", help="sizes 100,1000,10000 and one run of each"
    )
    parser.add_argument("--database-url", help="PostgreSQL server to use (else DATABASE_URL)")
    parser.add_argument("--broker-url", help="broker to use (else BROKER_URL)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    parser.add_argument(
        "--logs", type=Path, help="keep the output of web, worker and naive peer in this directory"
    )
    parser.add_argument(
        "--strict", action="store_true", help="exit with status 1 when a target is missed"
    )
    parser.add_argument(
        "--no-naive", action="store_true", help="skip the naive peer (minutes at 100,000)"
    )
    parser.add_argument(
        "--pipeline-only",
        action="store_true",
        help="skip the scenarios on stacks of their own (fairness, event streams, webhooks)",
    )
    args = parser.parse_args(argv)
    if args.sizes is not None:
        try:
            args.sizes = sorted({int(s.replace("_", "")) for s in args.sizes.split(",") if s})
        except ValueError:
            parser.error("--sizes takes whole numbers separated by commas")
        if not args.sizes or min(args.sizes) < 1:
            parser.error("--sizes takes positive whole numbers")
    else:
        args.sizes = list(QUICK_SIZES if args.quick else DEFAULT_SIZES)
    if args.repeat is None:
        args.repeat = 1 if args.quick else 3
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    if (args.database_url is None) != (args.broker_url is None):
        parser.error("give both --database-url and --broker-url, or neither")
    return args


def base_settings(args: argparse.Namespace) -> Settings:
    settings = Settings.from_env()
    if args.database_url is not None:
        given = Settings.from_env(
            {"DATABASE_URL": args.database_url, "BROKER_URL": args.broker_url}
        )
        settings = settings.with_urls(given.sqlalchemy_url, given.celery_broker_url)
    return settings


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _mib(child: Child) -> float:
    return child.memory.peak()["max_process_mib"]


class Bench:
    def __init__(
        self,
        stack: Stack,
        floor: Floor,
        small_floor: SmallFloor,
        client: Client,
        args: argparse.Namespace,
    ) -> None:
        self.stack = stack
        self.floor = floor
        self.small_floor = small_floor
        self.client = client
        self.args = args
        self.rows: dict[tuple[str, int, str], Row] = {}
        self.floor_phases: dict[int, list[dict[str, float]]] = {}
        self.notes: list[str] = []
        self.member = Client.headers(stack.tokens[MEMBER], ORGANIZATION)
        self.admin = Client.headers(stack.tokens[ADMIN], ORGANIZATION)
        self.naive_rate: float | None = None
        self.scenario: fairness.Scenario | None = None
        self.streams: streams.Scenario | None = None
        self.webhooks: webhooks.Scenario | None = None

    # ----------------------------------------------------------------------------- helpers

    def row(self, operation: str, size: int, variant: str) -> Row:
        key = (operation, size, variant)
        if key not in self.rows:
            self.rows[key] = Row(operation, size, variant)
        return self.rows[key]

    def median(self, operation: str, size: int, variant: str, key: str) -> float | None:
        """The median of `key` over a row's samples; None where the row was not measured."""
        row = self.rows.get((operation, size, variant))
        return None if row is None else row.median(key)

    def cleanup(self) -> None:
        """Remove what a measurement made, so each starts from the same tables."""
        with self.stack.engine.begin() as connection:
            connection.execute(
                text("DELETE FROM time_entries WHERE id >= :first"),
                {"first": FIRST_FREE_ENTRY_ID},
            )
            connection.execute(text("DELETE FROM jobs"))
        with self.stack.engine.connect().execution_options(
            isolation_level="AUTOCOMMIT"
        ) as connection:
            connection.execute(text("VACUUM ANALYZE time_entries, approval_statuses, jobs"))

    def measured(self, children: Sequence[Child], action: Callable[[], Outcome]) -> Outcome:
        for child in children:
            child.memory.reset()
        outcome = action()
        for child in children:
            child.check_alive()
        return outcome

    def record(
        self, operation: str, size: int, variant: str, outcome: Outcome, **extra: Any
    ) -> dict[str, Any]:
        sample = outcome.metrics()
        sample["entries_per_s"] = size / outcome.e2e if outcome.e2e > 0 else None
        sample.update(extra)
        self.row(operation, size, variant).samples.append(sample)
        parts = [f"e2e {outcome.e2e * 1000:,.0f} ms"]
        if outcome.submit is not None:
            parts.insert(0, f"submit {outcome.submit * 1000:,.0f} ms")
        if outcome.apply is not None:
            parts.append(f"apply {outcome.apply * 1000:,.0f} ms")
        say(f"  {operation} {size:,} {variant}: " + ", ".join(parts))
        return sample

    def pipeline(
        self, method: str, path: str, body: bytes, headers: dict[str, str], expect: int, **kw: Any
    ) -> tuple[Outcome, dict[str, float]]:
        stack = self.stack
        outcome = self.measured(
            (stack.web, stack.worker),
            lambda: self.client.run(method, path, body, headers, expect=expect, **kw),
        )
        return outcome, {"web_peak_mib": _mib(stack.web), "worker_peak_mib": _mib(stack.worker)}

    # ------------------------------------------------------------------------ measurements

    def warm_up(self) -> None:
        """Open every process's connections and load its code before anything is measured."""
        body = create_body(20)
        for _ in range(WARMUP_BATCHES):
            self.client.run("POST", "/api/v2/time_entries", body, self.member, expect=201)
        self.client.run(
            "POST", "/api/v2/time_entries", body, self.member, expect=201, prefer_wait=PREFER_WAIT
        )
        self.client.post_sync(
            self.stack.naive_url + "/api/v2/time_entries", body, self.member, expect=201
        )
        self.floor.reset()
        self.floor.prime(body)
        self.floor.create(body)
        self.floor.submit(body)
        self.cleanup()

    def measure_floor(self, size: int, body: bytes) -> bytes:
        """The floors are cheap and a commit's fsync is noisy: up to 10,000 entries each
        repetition measures them several times (the medians are over every sample)."""
        payload = b""
        for _ in range(FLOOR_RUNS if size <= FLOOR_RUNS_UP_TO else 1):
            self.floor.reset()
            self.floor.prime(body)
            phases, payload = self.floor.create(body)
            self.floor_phases.setdefault(size, []).append(phases)
            total = phases["total"]
            self.row("create", size, "floor").samples.append(
                {"e2e_ms": round(total * 1000, 2), "entries_per_s": size / total, "phases": phases}
            )
            submit = self.floor.submit(body)
            self.row("create", size, "submit floor").samples.append(
                {
                    "submit_ms": round(submit["bytea"] * 1000, 2),
                    "jsonb_ms": round(submit["jsonb"] * 1000, 2),
                }
            )
            say(
                f"  floor {size:,}: {total * 1000:,.0f} ms; submit floor"
                f" {submit['bytea'] * 1000:,.0f} ms (as jsonb {submit['jsonb'] * 1000:,.0f} ms)"
            )
        return payload

    def measure_small(self) -> None:
        """Small jobs end to end with Prefer: wait, each beside the small-job floor."""
        for size in SMALL_TARGETS:
            body = create_body(size)
            for _ in range(SMALL_RUNS):
                seconds, _ = self.small_floor.create(body)
                self.row("create", size, "small floor").samples.append(
                    {"e2e_ms": round(seconds * 1000, 3)}
                )
                self.measure_create(size, body, prefer=True)
            say(
                f"  small floor {size:,}: "
                f"{self.row('create', size, 'small floor').median('e2e_ms'):,.1f} ms (median)"
            )
            self.cleanup()

    def measure_create(self, size: int, body: bytes, *, prefer: bool) -> tuple[list[str], bytes]:
        """Returns the new entries' ids and the result payload."""
        outcome, memory = self.pipeline(
            "POST",
            "/api/v2/time_entries",
            body,
            self.member,
            201,
            prefer_wait=PREFER_WAIT if prefer else None,
        )
        ids = [entry["id"] for entry in orjson.loads(outcome.body)["data"]]
        if len(ids) != size:
            raise BenchError(f"create of {size:,} answered {len(ids):,} entries")
        self.record("create", size, "prefer" if prefer else "poll", outcome, **memory)
        return ids, outcome.body

    def measure_ops(self, size: int, ids: list[str]) -> None:
        steps = (
            ("update", "PATCH", "/api/v2/time_entries", update_body(ids), self.member, 200),
            ("approve", "PATCH", "/api/v2/time_entries/approve", refs_body(ids), self.admin, 200),
            (
                "unapprove",
                "PATCH",
                "/api/v2/time_entries/unapprove",
                refs_body(ids),
                self.admin,
                200,
            ),
            ("delete", "DELETE", "/api/v2/time_entries", refs_body(ids), self.member, 204),
        )
        for operation, method, path, body, headers, expect in steps:
            outcome, memory = self.pipeline(method, path, body, headers, expect)
            if expect != 204 and len(orjson.loads(outcome.body)["data"]) != size:
                raise BenchError(f"{operation} of {size:,} did not answer {size:,} entries")
            self.record(operation, size, "poll", outcome, **memory)

    def measure_naive(self, size: int, body: bytes, repetition: int) -> None:
        estimate = None if self.naive_rate is None else size / self.naive_rate
        row = self.row("create", size, "naive")
        if estimate is not None and estimate > NAIVE_BUDGET:
            if repetition == 0:
                note = (
                    f"naive peer skipped at {size:,}: one request would take about"
                    f" {estimate:,.0f} s at its measured {self.naive_rate:,.0f} entries/s"
                )
                row.notes.append(note)
                self.notes.append(note)
                say(f"  {note}")
            return
        if repetition > 0 and estimate is not None and estimate > NAIVE_REPEAT_BUDGET:
            if repetition == 1:
                note = f"naive peer measured once at {size:,} (about {estimate:,.0f} s a run)"
                row.notes.append(note)
                self.notes.append(note)
            return
        naive = self.stack.naive
        assert naive is not None
        url = self.stack.naive_url + "/api/v2/time_entries"
        outcome = self.measured(
            (naive,), lambda: self.client.post_sync(url, body, self.member, expect=201)
        )
        if len(orjson.loads(outcome.body)["data"]) != size:
            raise BenchError(f"the naive peer did not answer {size:,} entries")
        self.record("create", size, "naive", outcome, web_peak_mib=_mib(naive))
        self.naive_rate = size / outcome.e2e

    def check_floor_shape(self, size: int, floor_payload: bytes, pipeline_payload: bytes) -> None:
        """The floor must produce what the pipeline answers (ids and timestamps aside)."""
        volatile = {"created_at", "updated_at", "last_activity_at"}
        floor_entry = orjson.loads(floor_payload)["data"][0]
        ours = orjson.loads(pipeline_payload)["data"][0]
        problems = []
        if list(floor_entry) != list(ours):
            problems.append("member order")
        if list(floor_entry["attributes"]) != list(ours["attributes"]):
            problems.append("attribute order")
        for name, value in ours["attributes"].items():
            if name not in volatile and floor_entry["attributes"].get(name) != value:
                problems.append(f"{name}: floor {floor_entry['attributes'].get(name)!r}")
        if floor_entry["relationships"] != ours["relationships"]:
            problems.append("relationships")
        if problems:
            note = f"floor payload differs from the pipeline's at {size:,}: {', '.join(problems)}"
            self.notes.append(note)
            say(f"  WARNING {note}")

    def run(self) -> None:
        self.warm_up()
        self.measure_small()
        for size in self.args.sizes:
            body = create_body(size)
            say(f"size {size:,} ({len(body) / 1024 / 1024:,.1f} MiB body)")
            for repetition in range(self.args.repeat):
                floor_payload = self.measure_floor(size, body)
                ids, payload = self.measure_create(size, body, prefer=False)
                if repetition == 0:
                    self.check_floor_shape(size, floor_payload, payload)
                del floor_payload, payload
                if size == OPS_SIZE:
                    self.measure_ops(size, ids)
                self.cleanup()
                ids, _ = self.measure_create(size, body, prefer=True)
                # At MEMORY_SIZE the other operations run once, for their memory, and last:
                # the worker keeps what they took, and a create measured after them would
                # start its peak from there.
                if size == MEMORY_SIZE and repetition == self.args.repeat - 1:
                    self.measure_ops(size, ids)
                self.cleanup()
                if not self.args.no_naive:
                    self.measure_naive(size, body, repetition)
                    self.cleanup()

    # ----------------------------------------------------------------------------- results

    def ordered_rows(self) -> list[Row]:
        operations = ("create", "update", "approve", "unapprove", "delete")
        variants = ("poll", "prefer", "floor", "small floor", "submit floor", "naive")
        return sorted(
            self.rows.values(),
            key=lambda r: (operations.index(r.operation), r.size, variants.index(r.variant)),
        )

    def best_create(self, size: int) -> tuple[float | None, str]:
        """The create end-to-end the ratios use: polling, unless Prefer: wait was faster."""
        poll_e2e = self.median("create", size, "poll", "e2e_ms")
        prefer_e2e = self.median("create", size, "prefer", "e2e_ms")
        if prefer_e2e is not None and (poll_e2e is None or prefer_e2e < poll_e2e):
            return prefer_e2e, "prefer"
        return poll_e2e, "poll"

    def ratios(self) -> list[Ratio]:
        found: list[Ratio] = []
        for size in self.args.sizes:
            target = size == TARGET_SIZE
            e2e, variant = self.best_create(size)
            value = ratio(e2e, self.median("create", size, "floor", "e2e_ms"))
            found.append(
                Ratio(
                    f"create {size:,} end-to-end / floor",
                    value,
                    f"<= {CREATE_TARGET:g}x" if target else None,
                    None if value is None else value <= CREATE_TARGET,
                    f"[{variant}]",
                )
            )
            value = ratio(self.median("create", size, "naive", "e2e_ms"), e2e)
            found.append(
                Ratio(
                    f"naive peer / create {size:,} end-to-end",
                    value,
                    ">= 10x" if target else None,
                    None if value is None else value >= 10,
                    f"[{variant}]" if value is not None else "not measured",
                )
            )
            submit = self.median("create", size, "poll", "submit_ms")
            value = ratio(submit, self.median("create", size, "submit floor", "submit_ms"))
            found.append(
                Ratio(
                    f"submit {size:,} / submit floor (parse + one row)",
                    value,
                    "<= 2x" if target else None,
                    None if value is None else value <= 2,
                )
            )
            found.append(
                Ratio(
                    f"submit {size:,} / (parse + one jsonb row)",
                    ratio(submit, self.median("create", size, "submit floor", "jsonb_ms")),
                )
            )
        for size, most in SMALL_TARGETS.items():
            value = ratio(
                self.median("create", size, "prefer", "e2e_ms"),
                self.median("create", size, "small floor", "e2e_ms"),
            )
            found.append(
                Ratio(
                    f"create {size:,} Prefer: wait / small-job floor",
                    value,
                    f"<= {most:g}x",
                    None if value is None else value <= most,
                )
            )
        found.extend(self.ops_ratios())
        found.extend(self.memory_ratios())
        if self.scenario is not None:
            found.extend(self.scenario.ratios())
        if self.streams is not None:
            found.extend(self.streams.ratios())
        if self.webhooks is not None:
            found.extend(self.webhooks.ratios())
        return found

    def ops_ratios(self) -> list[Ratio]:
        create = self.median("create", OPS_SIZE, "poll", "apply_ms")
        found = []
        for operation in ("update", "approve", "unapprove"):
            value = ratio(self.median(operation, OPS_SIZE, "poll", "apply_ms"), create)
            found.append(
                Ratio(
                    f"{operation} {OPS_SIZE:,} apply / create apply",
                    value,
                    f"<= {OPS_TARGET:g}x",
                    None if value is None else value <= OPS_TARGET,
                )
            )
        return found

    def peak(self, size: int, key: str, operation: str = "create") -> float | None:
        """The largest peak of one process kind over every run of the operation at that size."""
        peaks = [
            sample[key]
            for variant in ("poll", "prefer")
            for sample in self.rows.get((operation, size, variant), Row("", 0, "")).samples
            if key in sample
        ]
        return max(peaks) if peaks else None

    def memory_ratios(self) -> list[Ratio]:
        found = []
        for operation in ("create", "update", "approve", "unapprove", "delete"):
            for key, process in (("worker_peak_mib", "worker"), ("web_peak_mib", "web")):
                peak = self.peak(MEMORY_SIZE, key, operation)
                found.append(
                    Ratio(
                        f"{operation} {MEMORY_SIZE:,}: {process} peak / {MEMORY_LIMIT_MIB:g} MiB",
                        ratio(peak, MEMORY_LIMIT_MIB),
                        "< 1x",
                        None if peak is None else peak < MEMORY_LIMIT_MIB,
                        "not measured (size not run)"
                        if peak is None
                        else f"{peak:,.0f} MiB (largest process, largest of all runs)",
                    )
                )
        low, high = (
            self.peak(OPS_SIZE, "worker_peak_mib"),
            self.peak(MEMORY_SIZE, "worker_peak_mib"),
        )
        slope = beyond = None
        detail = f"not measured (needs sizes {OPS_SIZE:,} and {MEMORY_SIZE:,})"
        if low is not None and high is not None:
            entries = MEMORY_SIZE - OPS_SIZE
            slope = (high - low) * 1024 * 1024 / entries
            body = (len(create_body(MEMORY_SIZE)) - len(create_body(OPS_SIZE))) / entries
            beyond = slope - body
            detail = (
                f"worker peak {low:,.0f} -> {high:,.0f} MiB: {slope:,.0f} B/entry,"
                f" body {body:,.0f} B/entry, beyond it {beyond:,.0f} B/entry"
            )
        found.append(
            Ratio(
                f"worker growth per entry beyond the body / {SLOPE_LIMIT_BYTES:g} B",
                ratio(beyond, SLOPE_LIMIT_BYTES),
                "< 1x",
                None if beyond is None else beyond < SLOPE_LIMIT_BYTES,
                detail,
            )
        )
        return found

    def breakdown(self) -> list[str]:
        """Where create's end-to-end time goes, beside the floor's phases, per size."""
        lines = []
        for size in self.args.sizes:
            row = self.rows.get(("create", size, "poll"))
            if row is None:
                continue
            parts = [
                f"{name} {row.median(name + '_ms') or 0:,.1f}"
                for name in ("submit", "queue", "apply", "fetch")
            ]
            lines.append(
                f"create {size:>7,} ms: " + ", ".join(parts) + f"; e2e {row.median('e2e_ms'):,.1f}"
            )
        return lines

    def floor_breakdown(self) -> list[str]:
        lines = []
        for size, runs in sorted(self.floor_phases.items()):
            names = [n for n in runs[0] if n != "total"]
            parts = []
            for name in names:
                values = sorted(run[name] for run in runs)
                parts.append(f"{name} {values[len(values) // 2] * 1000:,.1f}")
            totals = sorted(run["total"] for run in runs)
            lines.append(
                f"floor  {size:>7,} ms: "
                + ", ".join(parts)
                + f"; total {totals[len(totals) // 2] * 1000:,.1f}"
            )
        for size in sorted(self.floor_phases):
            row = self.rows[("create", size, "submit floor")]
            bytea, jsonb = row.median("submit_ms"), row.median("jsonb_ms")
            lines.append(
                f"submit floor {size:>7,} ms: parse + one bytea row {bytea or 0:,.1f},"
                f" parse + one jsonb row {jsonb or 0:,.1f}"
            )
        return lines


def environment(stack: Stack, offset: float) -> dict[str, Any]:
    with stack.engine.connect() as connection:
        server = connection.execute(text("SHOW server_version")).scalar_one()
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "postgres": server,
        "embedded_servers": stack.embedded,
        "web_concurrency": stack.settings.web_concurrency,
        "worker_concurrency": stack.settings.worker_concurrency,
        "max_batch_size": stack.settings.max_batch_size,
        "clock_offset_ms": round(offset * 1000, 3),
    }


def render(bench: Bench, env: dict[str, Any]) -> str:
    lines = [
        "",
        f"timebatch bench: medians of {bench.args.repeat} run(s); {env['cpus']} CPUs;"
        f" PostgreSQL {env['postgres']}; {'embedded' if env['embedded_servers'] else 'given'}"
        f" servers; web {env['web_concurrency']} processes, worker concurrency"
        f" {env['worker_concurrency']}",
        "",
        table(bench.ordered_rows()),
        "",
        *bench.breakdown(),
        *bench.floor_breakdown(),
        *(bench.scenario.lines() if bench.scenario is not None else ()),
        *(bench.streams.lines() if bench.streams is not None else ()),
        *(bench.webhooks.lines() if bench.webhooks is not None else ()),
        "",
        "ratios (same run, same database):",
        *(r.line() for r in bench.ratios()),
    ]
    sources = {
        s.get("apply_source")
        for row in bench.rows.values()
        for s in row.samples
        if s.get("apply_source")
    }
    if "poll" in sources:
        lines.append(
            "note: apply ms is measured to the poll that saw the job finished where the job's"
            " finished_at was not after its started_at"
        )
    lines.extend(f"note: {note}" for note in bench.notes)
    return "\n".join(lines)


def write_json(bench: Bench, env: dict[str, Any], started: dt.datetime) -> Path:
    out: Path = bench.args.out
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{started.strftime('%Y%m%dT%H%M%SZ')}.json"
    document = {
        "started_at": started.isoformat(),
        "finished_at": dt.datetime.now(dt.UTC).isoformat(),
        "sizes": bench.args.sizes,
        "repeat": bench.args.repeat,
        "environment": env,
        "rows": [row.as_json() for row in bench.ordered_rows()],
        "ratios": [r.as_json() for r in bench.ratios()],
        "notes": bench.notes,
        "streams": bench.streams,
        "webhooks": bench.webhooks,
    }
    path.write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2))
    return path


@contextmanager
def last_output_on_error(parts: Stack) -> Iterator[None]:
    try:
        yield
    except Exception:
        for child in (parts.web, parts.worker, parts.naive):
            if child is not None:
                say(f"--- last output of {child.name} ---\n{child.tail()}")
        raise


def _stop_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        base = base_settings(args)
    except SettingsError as exc:
        say(f"error: {exc}")
        return 2
    started = dt.datetime.now(dt.UTC)
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        return _run(args, base, started)
    except BenchError as exc:
        say(f"error: {exc}")
        return 1
    except KeyboardInterrupt:
        say("interrupted; everything started was stopped")
        return 130


def _run(args: argparse.Namespace, base: Settings, started: dt.datetime) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="timebatch-bench-"))
    failed = False
    with ExitStack() as stack:
        stack.callback(shutil.rmtree, workdir, ignore_errors=True)
        if args.logs is not None:
            # Runs after everything has stopped, on error too.
            stack.callback(shutil.copytree, workdir / "logs", args.logs, dirs_exist_ok=True)
        with ExitStack() as measured:
            say("starting PostgreSQL, Redis, web, worker and the naive peer ...")
            t = time.monotonic()
            parts = open_stack(base, workdir / "pipeline", measured, (MEMBER, ADMIN))
            say(f"stack up in {time.monotonic() - t:.1f} s")
            floor = Floor(parts.settings.sqlalchemy_url, ORGANIZATION, MEMBER)
            measured.callback(floor.close)
            small_floor = SmallFloor(parts.settings.sqlalchemy_url, ORGANIZATION, MEMBER)
            measured.callback(small_floor.close)
            offset = clock_offset(parts.engine)
            client = Client(parts.web_url, parts.engine, offset)
            measured.callback(client.close)
            bench = Bench(parts, floor, small_floor, client, args)
            with last_output_on_error(parts):
                bench.run()
            env = environment(parts, offset)
        if not args.pipeline_only:
            with ExitStack() as shared:
                say(
                    "starting a stack with two worker processes for the shared-service scenario ..."
                )
                service = fairness.open_fairness_stack(base, workdir / "fairness", shared)
                with last_output_on_error(service):
                    scenario = fairness.run(service, say)
                bench.scenario = scenario
            with ExitStack() as held:
                say("starting a stack for the event-streams scenario ...")
                streaming = streams.open_streams_stack(base, workdir / "streams", held)
                with last_output_on_error(streaming):
                    bench.streams = streams.run(streaming, say)
            with ExitStack() as pushed, webhooks.Receiver() as receiver:
                say("starting a stack with the webhooks process for the delivery scenario ...")
                pushing = webhooks.open_webhooks_stack(base, workdir / "webhooks", pushed)
                with last_output_on_error(pushing):
                    bench.webhooks = webhooks.run(pushing, receiver)
        print(render(bench, env), flush=True)
        path = write_json(bench, env, started)
        print(
            f"\nresults written to {path.relative_to(REPO) if path.is_relative_to(REPO) else path}"
        )
        failed = any(r.verdict == "FAIL" for r in bench.ratios())
        say("stopping ...")
    return 1 if failed and args.strict else 0


if __name__ == "__main__":
    sys.exit(main())
