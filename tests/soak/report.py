"""The end checks of a soak run, and what it prints.

The checks compare the database, read back once every client is done, with what the
clients saw and what the model says:

- every accepted job is finished (no job `queued` or `running` is left);
- the entries equal the model: none lost, none doubled (entries per creating job's tag),
  none stray, every field and approval status as the succeeded jobs made them;
- nothing a failed job did is left (its tag, its update mark);
- each Idempotency-Key has exactly one job, the one its client was told of, in the state
  the client saw;
- and what the clients noted while it ran: no 5xx but a 503 with Retry-After, no second job
  for a key, no valid batch failed, no invalid one succeeded.

Every failure is a line of `Report.failures()`; a run passes when there is none.
"""

from __future__ import annotations

import uuid
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, text

from tests.soak.chaos import KINDS, SERVER_FAULTS, Fault, p95
from tests.soak.clients import Counters, JobRecord, Violation
from tests.soak.model import Entry, differences, tag_of, update_of
from tests.soak.stack import Exit

EVIDENCE_LINES = 8
SHOWN = 20


# ------------------------------------------------------------------------ the database


@dataclass(frozen=True)
class JobRow:
    id: str
    organization_id: int
    operation: str
    status: str
    key: str | None
    result_status: int | None
    attempts: int


def read_entries(connection: Connection) -> dict[int, Entry]:
    entries = {
        row.id: Entry(
            id=row.id,
            organization_id=row.organization_id,
            person_id=row.person_id,
            service_id=row.service_id,
            task_id=row.task_id,
            date=row.date.isoformat(),
            time=row.time,
            note=row.note,
            approved=row.approved,
        )
        for row in connection.execute(
            text(
                "SELECT id, organization_id, person_id, service_id, task_id, date, time, note,"
                " approved FROM time_entries"
            )
        )
    }
    for entry_id, approver_id, status in connection.execute(
        text("SELECT time_entry_id, approver_id, status FROM approval_statuses")
    ):
        if entry_id in entries:
            entries[entry_id].statuses[approver_id] = status
    return entries


def read_jobs(connection: Connection) -> list[JobRow]:
    return [
        JobRow(
            str(r.id),
            r.organization_id,
            r.operation,
            r.status,
            r.idempotency_key,
            r.result_status,
            r.attempts,
        )
        for r in connection.execute(
            text(
                "SELECT id, organization_id, operation, status, idempotency_key, result_status,"
                " attempts FROM jobs ORDER BY created_at"
            )
        )
    ]


def job_details(connection: Connection, job_ids: Iterable[str]) -> dict[str, str]:
    """A line per job for the evidence: its row as stored."""
    ids = sorted(set(job_ids))
    if not ids:
        return {}
    rows = connection.execute(
        text(
            "SELECT id, operation, status, attempts, result_status, total, processed,"
            " created_at, started_at, finished_at, heartbeat_at FROM jobs"
            " WHERE id = ANY(CAST(:ids AS uuid[]))"
        ),
        {"ids": ids},
    ).mappings()
    found = {}
    for row in rows:
        found[str(row["id"])] = ", ".join(f"{name}={row[name]}" for name in row if name != "id")
    return found


# -------------------------------------------------------------------------- the checks


@dataclass
class Checks:
    unfinished: list[JobRow] = field(default_factory=list)
    lost: list[int] = field(default_factory=list)
    stray: list[int] = field(default_factory=list)
    diverged: list[tuple[int, list[str]]] = field(default_factory=list)
    doubled: dict[str, int] = field(default_factory=dict)
    lost_by_tag: dict[str, int] = field(default_factory=dict)
    traces: list[str] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)

    def failures(self) -> list[str]:
        out: list[str] = []
        for job in self.unfinished:
            out.append(f"unfinished: job {job.id} ({job.operation}) is still {job.status}")
        if self.lost:
            out.append(
                f"lost: {len(self.lost)} entries of succeeded jobs are gone: {_ids(self.lost)}"
            )
        for tag, surplus in sorted(self.doubled.items()):
            out.append(f"doubled: {surplus} entries too many with tag {tag}")
        for tag, missing in sorted(self.lost_by_tag.items()):
            out.append(f"lost: {missing} entries missing with tag {tag}")
        if self.stray:
            out.append(
                f"stray: {len(self.stray)} entries no succeeded job made: {_ids(self.stray)}"
            )
        for entry_id, what in self.diverged[:SHOWN]:
            out.append(f"diverged: entry {entry_id}: {'; '.join(what)}")
        if len(self.diverged) > SHOWN:
            out.append(f"diverged: ... {len(self.diverged) - SHOWN} more entries")
        out += self.traces
        out += self.keys
        return out


def _ids(ids: list[int]) -> str:
    shown = ", ".join(str(i) for i in sorted(ids)[:SHOWN])
    return shown + (", ..." if len(ids) > SHOWN else "")


def _tag_counts(entries: Iterable[Entry]) -> Counter[str]:
    return Counter(tag for tag in (tag_of(e.note) for e in entries) if tag is not None)


def compare_entries(model: dict[int, Entry], found: dict[int, Entry], checks: Checks) -> None:
    expected_tags, found_tags = _tag_counts(model.values()), _tag_counts(found.values())
    for tag in expected_tags | found_tags:
        surplus = found_tags[tag] - expected_tags[tag]
        # More entries than a succeeded create made: doubled. Entries of a create that did
        # not succeed are stray (and a trace when it failed): find_traces tells.
        if surplus > 0 and expected_tags[tag]:
            checks.doubled[tag] = surplus
        elif surplus < 0:
            checks.lost_by_tag[tag] = -surplus
    doubled_tags = set(checks.doubled)
    checks.lost = sorted(set(model) - set(found))
    # Entries of a doubled tag are already counted as doubled.
    checks.stray = sorted(
        entry_id
        for entry_id in set(found) - set(model)
        if tag_of(found[entry_id].note) not in doubled_tags
    )
    for entry_id in sorted(set(model) & set(found)):
        what = differences(model[entry_id], found[entry_id])
        if what:
            checks.diverged.append((entry_id, what))


def compare_jobs(records: list[JobRecord], jobs: list[JobRow], checks: Checks) -> None:
    checks.unfinished = [job for job in jobs if job.status in ("queued", "running")]
    by_key: dict[str | None, list[JobRow]] = defaultdict(list)
    for job in jobs:
        by_key[job.key].append(job)
    known = {record.key for record in records}
    for key, found in by_key.items():
        if len(found) > 1:
            checks.keys.append(
                f"second job: Idempotency-Key {key} has {len(found)} jobs:"
                f" {', '.join(job.id for job in found)}"
            )
        if key not in known:
            for job in found:
                checks.keys.append(f"orphan: job {job.id} has a key no client sent ({key})")
    for record in records:
        found = by_key.get(record.key, [])
        if record.job_id is None:
            if found and not record.refused:
                checks.keys.append(
                    f"untold: job {found[0].id} exists for key {record.key}, its client was"
                    " never told of it"
                )
            elif found and record.refused:
                checks.keys.append(
                    f"trace: job {found[0].id} exists for key {record.key}, refused with"
                    f" {record.result_status}"
                )
            continue
        if not any(job.id == record.job_id for job in found):
            checks.keys.append(
                f"second job: the client was told of job {record.job_id} for key {record.key},"
                f" which holds {', '.join(job.id for job in found) or 'no job'}"
            )
            continue
        job = next(job for job in found if job.id == record.job_id)
        if record.result_status is None:
            continue  # the client gave up on it: counted as unfinished
        seen = "succeeded" if record.succeeded else "failed"
        if job.status != seen or job.result_status != record.result_status:
            checks.keys.append(
                f"state: job {job.id} is {job.status} ({job.result_status}) but its client"
                f" was answered {record.result_status}"
            )


def find_traces(records: list[JobRecord], found: dict[int, Entry], checks: Checks) -> None:
    """What a failed create or update would leave: its tag, its update mark."""
    failed = {record.tag: record for record in records if record.failed or record.refused}
    if not failed:
        return
    for entry in found.values():
        for tag in (tag_of(entry.note), update_of(entry.note)):
            record = failed.get(tag or "")
            if record is not None:
                checks.traces.append(
                    f"trace: entry {entry.id} carries {tag} of failed {record.operation} job"
                    f" {record.job_id} ({record.result_status})"
                )


def end_checks(
    model: dict[int, Entry],
    found: dict[int, Entry],
    records: list[JobRecord],
    jobs: list[JobRow],
) -> Checks:
    checks = Checks()
    compare_entries(model, found, checks)
    compare_jobs(records, jobs, checks)
    find_traces(records, found, checks)
    return checks


# -------------------------------------------------------------------------- the report


@dataclass
class Report:
    seed: int
    broker: str
    seconds: float
    records: list[JobRecord]
    violations: list[Violation]
    counters: Counters
    health: Counters
    faults: list[Fault]
    exits: list[Exit]
    checks: Checks
    crashes: list[str]
    entries_at_end: int
    logs: Path
    started: float
    evidence: dict[str, list[str]] = field(default_factory=dict)

    def failures(self) -> list[str]:
        return (
            [f"harness: {crash.strip().splitlines()[-1]}" for crash in self.crashes]
            + [violation.line() for violation in self.violations]
            + self.checks.failures()
        )

    @property
    def ok(self) -> bool:
        return not self.failures()

    def fault_before(self, at: float) -> str:
        """The last fault that began before `at`, as `kind at +t s (d s before)`."""
        earlier = [f for f in self.faults if not f.skipped and f.started <= at]
        if not earlier:
            return "before any fault"
        fault = earlier[-1]
        return (
            f"{fault.kind} at +{fault.started - self.started:.1f} s"
            f" ({at - fault.started:.1f} s before)"
        )

    def lines(self) -> list[str]:
        records = self.records
        succeeded = [r for r in records if r.succeeded]
        meant = [r for r in records if r.failed and not r.valid and (r.result_status or 0) < 500]
        other = [r for r in records if (r.failed and r not in meant) or r.refused]
        unanswered = [r for r in records if r.result_status is None]
        created = sum(r.size for r in succeeded if r.operation == "create")
        by_kind = Counter(f.kind for f in self.faults if not f.skipped)
        skipped = sum(f.skipped for f in self.faults)
        statuses = self.counters.statuses
        out = [
            f"soak: {self.broker}, {self.seconds:.0f} s, seed {self.seed}",
            f"soak: jobs {len(records)}: succeeded {len(succeeded)}, failed as meant"
            f" {len(meant)}, failed otherwise {len(other)}, without an answer {len(unanswered)};"
            " by operation "
            + ", ".join(
                f"{op} {n}" for op, n in sorted(Counter(r.operation for r in records).items())
            ),
            f"soak: entries created {created}, in the database at the end {self.entries_at_end}",
            "soak: faults "
            + ", ".join(f"{kind} {by_kind[kind]}" for kind in KINDS)
            + (f" ({skipped} found nothing to hit)" if skipped else ""),
            f"soak: requests {self.counters.requests}, retries {self.counters.retries}"
            f" (connection errors {self.counters.connection_errors}, 503s {statuses[503]},"
            f" 429s {statuses[429]}), 5xx other than 503:"
            f" {sum(n for s, n in statuses.items() if s >= 500 and s != 503)};"
            f" health probes {self.health.requests} (503s {self.health.statuses[503]},"
            f" connection errors {self.health.connection_errors})",
        ]
        hit = [f for f in self.faults if not f.skipped]
        for kind in KINDS:
            faults = [f for f in hit if f.kind == kind]
            if not faults:
                continue
            times = [f.recovery for f in faults if f.recovery is not None]
            never = len(faults) - len(times)
            server = "server" if kind in SERVER_FAULTS else "process"
            line = f"soak: recovery after {kind} ({server}, {len(faults)}): "
            if times:
                worst = max(faults, key=lambda f: f.recovery or 0.0)
                line += f"max {max(times):.1f} s (job {worst.slowest}), p95 {p95(times):.1f} s"
            else:
                line += "none"
            # A recovery that ran into the next fault measured both.
            overlapped = sum(
                1
                for f, after in pairwise(hit)
                if f.kind == kind and f.recovered_at is not None and f.recovered_at > after.started
            )
            if overlapped:
                line += f"; {overlapped} still recovering when the next fault came"
            out.append(line + (f"; {never} never recovered" if never else ""))
        chaos_exits = sum(e.by_chaos for e in self.exits)
        own = [e for e in self.exits if not e.by_chaos]
        out.append(
            f"soak: processes restarted {len(self.exits)} ({chaos_exits} killed by chaos"
            + (
                ", exited on their own: " + ", ".join(f"{e.name} ({e.returncode})" for e in own)
                if own
                else ""
            )
            + ")"
        )
        c = self.checks
        out.append(
            f"soak: checks: lost {len(c.lost) + sum(c.lost_by_tag.values())},"
            f" doubled {sum(c.doubled.values())}, stray {len(c.stray)},"
            f" diverged {len(c.diverged)}, traces of failed jobs {len(c.traces)},"
            f" unfinished {len(c.unfinished) + len(unanswered)},"
            f" key problems {len(c.keys)}, client violations {len(self.violations)}"
        )
        failures = self.failures()
        out.append(f"soak: {'PASSED' if not failures else f'FAILED ({len(failures)} problems)'}")
        for failure in failures[: SHOWN * 3]:
            out.append(f"  - {failure}")
        if len(failures) > SHOWN * 3:
            out.append(f"  ... {len(failures) - SHOWN * 3} more")
        for crash in self.crashes:
            out.append("harness crash:\n" + crash)
        for subject, lines in self.evidence.items():
            out.append(f"evidence for {subject}:")
            out += [f"    {line}" for line in lines]
        out.append(f"soak: logs in {self.logs}")
        return out


def gather_evidence(
    report: Report, job_rows: dict[str, str], log_files: list[Path]
) -> dict[str, list[str]]:
    """For each violation: the fault before it, its job's row, and the log lines that name
    its job or request."""
    evidence: dict[str, list[str]] = {}
    subjects: list[tuple[str, str | None, str | None, float | None]] = [
        (v.line()[:160], v.job_id, v.request_id, v.at) for v in report.violations
    ]
    subjects += [
        (f"unfinished job {job.id}", job.id, None, None) for job in report.checks.unfinished
    ]
    texts = {path: path.read_text(errors="replace").splitlines() for path in log_files}
    for subject, job_id, request_id, at in subjects[:SHOWN]:
        lines = [] if at is None else [f"after {report.fault_before(at)}"]
        if job_id and job_id in job_rows:
            lines.append(f"job row: {job_rows[job_id]}")
        needles = [n for n in (job_id, request_id) if n]
        for path, content in texts.items():
            hits = [line for line in content if any(n in line for n in needles)]
            lines += [f"{path.name}: {hit[:400]}" for hit in hits[:EVIDENCE_LINES]]
        evidence[subject] = lines
    return evidence


def valid_uuid(value: str | None) -> bool:
    try:
        uuid.UUID(str(value))
    except ValueError:
        return False
    return True


def job_ids_of(report: Report) -> list[str]:
    ids: list[Any] = [v.job_id for v in report.violations] + [
        j.id for j in report.checks.unfinished
    ]
    return [str(i) for i in ids if valid_uuid(i)]
