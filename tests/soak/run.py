"""One soak run from start to verdict, and the command line that starts it."""

from __future__ import annotations

import argparse
import dataclasses
import os
import random
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import orjson
from sqlalchemy import Connection, Engine, text

from tests.soak.chaos import Chaos, RecoveryWatch
from tests.soak.clients import Client, Counters, Deadline, HealthProbe
from tests.soak.model import PERSONAS, Entry
from tests.soak.report import (
    Report,
    end_checks,
    gather_evidence,
    job_details,
    job_ids_of,
    read_entries,
    read_jobs,
)
from tests.soak.stack import BROKERS, SoakSetupError, open_soak_stack, retrying

DEFAULT_SECONDS = 300
# After the run: how long clients get to see their last jobs through, and the stack to
# finish every job it accepted. Longer than a sweep after the lease and the queued grace.
DRAIN_SECONDS = 90


@dataclass(frozen=True)
class Options:
    seconds: float
    seed: int
    broker: str
    workdir: Path


def _say(started: float) -> Callable[[str], None]:
    lock = threading.Lock()

    def say(message: str) -> None:
        with lock:
            print(f"[{time.time() - started:7.1f}s] {message}", file=sys.stderr, flush=True)

    return say


def run_soak(options: Options, say: Callable[[str], None] | None = None) -> Report:
    started = time.time()
    say = say or _say(started)
    say(
        f"soak: seed {options.seed}, {options.broker}, {options.seconds:.0f} s in {options.workdir}"
    )
    with open_soak_stack(options.broker, options.workdir) as stack:
        initial: dict[int, Entry] = retrying(stack.engine, read_entries)
        stop, done, deadline = threading.Event(), threading.Event(), Deadline()
        watch = RecoveryWatch(stack.engine, done)
        health = HealthProbe(stack.web_url, done, say)
        chaos = Chaos(stack, options.seed, stop, watch, say)
        people = (persona.person_id for persona in PERSONAS)
        clients = [
            Client(
                n, persona, stack.tokens[person], stack.web_url, options.seed, stop, deadline, say
            )
            for n, (persona, person) in enumerate(zip(PERSONAS, people, strict=True), start=1)
        ]
        who = ", ".join(f"{c.client} {c.persona.name}" for c in clients)
        say(f"soak: stack up at {stack.web_url}; clients {who}; chaos on")
        watch.start()
        health.start()
        for client in clients:
            client.start()
        chaos.start()
        # The run's length is the soak's own parameter, not a wait for anything.
        stop.wait(options.seconds)
        stop.set()
        chaos.join()
        if chaos.crash:
            # Said at once: a server the chaos could not bring back fails what follows too.
            say(f"soak: the chaos thread failed:\n{chaos.crash}")
        say("soak: chaos over; clients see their last jobs through")
        deadline.set(DRAIN_SECONDS)
        drain_end = time.monotonic() + DRAIN_SECONDS
        for client in clients:
            client.join(timeout=max(0.0, drain_end - time.monotonic()) + 30)
        _wait_drained(stack.engine, drain_end)
        done.set()
        watch.join()
        health.join()

        model = dict(initial)
        for client in clients:
            model.update({i: e.copy() for i, e in client.owned.entries.items()})
        found = retrying(stack.engine, read_entries)
        jobs = retrying(stack.engine, read_jobs)
        records = [record for client in clients for record in client.records]
        counters = Counters()
        for client in clients:
            counters.add(client.counters)
        crashes = [
            c for c in (*(x.crash for x in clients), chaos.crash, watch.crash, health.crash) if c
        ]
        crashes += [
            f"client {c.client} still running after the drain\n" for c in clients if c.is_alive()
        ]
        report = Report(
            seed=options.seed,
            broker=options.broker,
            seconds=options.seconds,
            records=records,
            violations=sorted(
                [v for client in clients for v in client.violations] + health.violations,
                key=lambda v: v.at,
            ),
            counters=counters,
            health=health.counters,
            faults=chaos.faults,
            exits=list(stack.processes.exits),
            checks=end_checks(model, found, records, jobs),
            crashes=crashes,
            entries_at_end=len(found),
            logs=stack.processes.logs,
            started=started,  # the origin of the progress lines' times too
        )
        rows = retrying(stack.engine, lambda c: job_details(c, job_ids_of(report)))
        report.evidence = gather_evidence(report, rows, stack.processes.log_files())
    # For a post-mortem: the printout, and every job as its client saw it.
    (options.workdir / "report.txt").write_text("\n".join(report.lines()) + "\n")
    with (options.workdir / "jobs.jsonl").open("wb") as out:
        for record in report.records:
            out.write(orjson.dumps(dataclasses.asdict(record)) + b"\n")
    return report


def _wait_drained(engine: Engine, until: float) -> None:
    """Until no job is queued or running, or the drain time is up."""

    def unfinished(connection: Connection) -> int:
        return int(
            connection.execute(
                text("SELECT count(*) FROM jobs WHERE status IN ('queued', 'running')")
            ).scalar_one()
        )

    while time.monotonic() < until:
        if not retrying(engine, unfinished):
            return
        time.sleep(0.2)


def _env_int(name: str, default: int | None) -> int | None:
    raw = os.environ.get(name, "").strip()
    return int(raw) if raw else default


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.soak", description="A randomized chaos soak of its own stack."
    )
    parser.add_argument(
        "--seconds",
        type=float,
        default=_env_int("SOAK_S", DEFAULT_SECONDS),
        help=f"how long the clients and the chaos run (SOAK_S, default {DEFAULT_SECONDS})",
    )
    parser.add_argument(
        "--seed", type=int, default=_env_int("SOAK_SEED", None), help="SOAK_SEED; random if unset"
    )
    parser.add_argument("--broker", choices=BROKERS, default="redis")
    parser.add_argument(
        "--workdir", type=Path, help="where servers and logs go (default: a temp dir)"
    )
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(10**9)
    print(
        f"soak: seed {seed} (replay: SOAK_SEED={seed} python -m tests.soak --broker {args.broker}"
        f" --seconds {args.seconds:g})",
        flush=True,
    )
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix=f"timebatch-soak-{args.broker}-"))
    try:
        report = run_soak(Options(args.seconds, seed, args.broker, workdir))
    except SoakSetupError as exc:
        print(f"soak: cannot run: {exc}", flush=True)
        return 2
    for line in report.lines():
        print(line, flush=True)
    return 0 if report.ok else 1
