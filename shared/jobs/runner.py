"""The worker side of a job's life: apply it once, report progress, keep its heartbeat.

A job's effect and its `succeeded` (or `failed`) mark commit in one transaction, run under
an advisory lock on the job id, so a redelivered or duplicated task message finds the job
busy or finished and does nothing.
"""

from __future__ import annotations

import datetime as dt
import gc
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    Integer,
    Row,
    Update,
    bindparam,
    case,
    func,
    select,
    true,
    update,
)
from sqlalchemy.orm import Session

from shared.domain.approval import approve_entries, unapprove_entries
from shared.domain.context import BatchContext, BatchResult, Progress, Written, load_context
from shared.domain.documents import Batch
from shared.domain.entries import create_entries, delete_entries, update_entries
from shared.jsonapi.errors import ApiError
from shared.jsonapi.render import gzip_document
from shared.store.engine import UnflushedWrite, run_alone
from shared.store.models import UNFINISHED_STATUSES, Job, JobStatus, Operation
from shared.store.notify import notify_finished, progress_notice, result_notice
from shared.store.queries import stored_batch
from shared.webhooks.outbox import RECORD, job_event, record_job_event

Apply = Callable[[Session, BatchContext, Batch, Progress, Written], None]

# Each operation's domain function and the HTTP status of its success.
APPLY: dict[Operation, tuple[Apply, int]] = {
    Operation.CREATE: (create_entries, 201),
    Operation.UPDATE: (update_entries, 200),
    Operation.DELETE: (delete_entries, 204),
    Operation.APPROVE: (approve_entries, 200),
    Operation.UNAPPROVE: (unapprove_entries, 200),
}


class Outcome(StrEnum):
    """What one run of a job did: finished it, or left it to the delivery that holds it."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    BUSY = "busy"
    SKIPPED = "skipped"


@dataclass(frozen=True)
class Run:
    """What one run of a job did. A run that ended the job has the job as its running mark
    returned it (STARTED), and the webhook deliveries it recorded, to publish after it."""

    outcome: Outcome
    job: Row[Any] | None = None
    deliveries: Sequence[int] = ()


logger = logging.getLogger(__name__)


def stored(error: ApiError) -> bytes:
    """Result bodies are stored gzip-compressed, ready to serve as they are."""
    return gzip_document(error.document())


def lock_key(job_id: uuid.UUID) -> int:
    return int.from_bytes(job_id.bytes[:8], "big", signed=True)


class ProgressReporter:
    """Writes `processed` and the heartbeat on its own connection, visible while the job runs,
    and tells the event streams of the job in the same transaction."""

    # Called every PROGRESS_EVERY rows: often enough that a stream of a 10,000-entry job sees
    # it move, and a write (and a notification) per 50 ms at most per job.
    def __init__(
        self, engine: Engine, job_id: uuid.UUID, total: int, min_interval: float = 0.05
    ) -> None:
        self.engine = engine
        self.job_id = job_id
        self.total = total
        self.min_interval = min_interval
        self._last = 0.0

    def __call__(self, processed: int) -> None:
        if processed >= self.total:
            # All written: the job's end follows at once and says so. A small job, written
            # in one go, spares a transaction.
            return
        now = dt.datetime.now(dt.UTC).timestamp()
        if now - self._last < self.min_interval:
            return
        self._last = now
        _MOVE(self.engine, job_id=self.job_id, processed=processed)


JOB_ID = bindparam("job_id", type_=Job.id.type)
# Bytes: a batch this small is read with the job's running mark, in the text protocol's hex;
# a larger one in binary pieces (stored_batch).
SMALL_BATCH = 64 * 1024


def _moving(statement: Update) -> UnflushedWrite:
    """A write of a running job that tells its event streams where it is, in one round trip."""
    moved = statement.cte("moved")
    notice = progress_notice(moved.c.id, JobStatus.RUNNING, moved.c.processed, moved.c.total)
    return UnflushedWrite(select(moved, notice))


# What the worker needs of a job it runs, and reports of it once it has ended.
STARTED = (
    Job.id,
    Job.organization_id,
    Job.person_id,
    Job.operation,
    Job.options,
    Job.total,
    Job.processed,
    Job.attempts,
    Job.created_at,
    Job.started_at,
)
# The job's lock, taken by the connection that runs the job and held until the run releases
# it: one runner per job, and a second delivery finds it taken. A session lock, not a
# transaction's: it is taken before the job's transaction begins, with the running mark.
_HELD = select(func.pg_try_advisory_lock(bindparam("key")).label("held")).cte("held")
_MARKED = (
    update(Job)
    .where(
        select(_HELD.c.held).scalar_subquery(),
        Job.id == JOB_ID,
        Job.status.in_(UNFINISHED_STATUSES),
    )
    .values(
        status=JobStatus.RUNNING,
        attempts=Job.attempts + 1,
        started_at=func.coalesce(Job.started_at, func.now()),
        heartbeat_at=func.now(),
    )
    .returning(
        *STARTED, case((func.length(Job.batch) <= SMALL_BATCH, Job.batch)).label("small_batch")
    )
    .cte("marked")
)
# Claims the job in one round trip: its lock and, only once this run holds it, the running
# mark (status running, attempts + 1), committed at once so pollers and streams see it. Its
# row says whether the lock was taken, then gives the job as STARTED has it, with its batch
# when that is small; the job's columns are empty when it has ended already.
_CLAIM = UnflushedWrite(
    select(
        _HELD.c.held,
        _MARKED,
        case(
            (
                _MARKED.c.id.is_not(None),
                progress_notice(
                    _MARKED.c.id, JobStatus.RUNNING, _MARKED.c.processed, _MARKED.c.total
                ),
            )
        ),
    ).select_from(_HELD.outerjoin(_MARKED, true()))
)
_UNLOCK = func.pg_advisory_unlock(bindparam("key"))
_RELEASE = select(_UNLOCK)
_MOVE = _moving(
    update(Job)
    .where(Job.id == JOB_ID, Job.status == JobStatus.RUNNING)
    .values(
        processed=func.least(bindparam("processed", type_=Integer), Job.total),
        heartbeat_at=func.now(),
    )
    .returning(Job.id, Job.processed, Job.total)
)
_BEAT = UnflushedWrite(
    update(Job)
    .where(Job.id == JOB_ID, Job.status == JobStatus.RUNNING)
    .values(heartbeat_at=func.now())
)
_END = bindparam("end", type_=Job.status.type)
_RECORDED = RECORD.cte("recorded")
_FINISH = (
    update(Job)
    .where(Job.id == JOB_ID)
    .values(
        status=_END,
        result_status=bindparam("result_status", type_=Job.result_status.type),
        result_body=bindparam("result_body", type_=Job.result_body.type),
        error_count=bindparam("errors", type_=Integer),
        # A success has processed all of it.
        processed=case((_END == JobStatus.SUCCEEDED, Job.total), else_=Job.processed),
        # clock_timestamp: now() is this transaction's start, before started_at was set.
        finished_at=func.clock_timestamp(),
        heartbeat_at=None,
    )
    # Waiters and streams learn of the end as it commits; a small result goes with it.
    .returning(
        result_notice(Job.id, Job.status, Job.result_status, Job.result_body),
        select(func.array_agg(_RECORDED.c.id)).scalar_subquery().label("deliveries"),
        # The job lock, which _finish says may go before the commit.
        _UNLOCK,
    )
    # The job's webhook deliveries are written by the same statement (shared/webhooks).
    .add_cte(_RECORDED)
)


class Heartbeats:
    """Renews the heartbeat of each job this process runs, every `interval` seconds, each
    on a connection of its own, so the sweeper can tell a long job from one whose worker
    died. One thread for the process, started on first use (a forked worker process starts
    its own): a thread started and joined for each job cost every job some 0.3 ms."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # Per running job: its engine, its interval and when it beats next (monotonic).
        self._running: dict[uuid.UUID, tuple[Engine, float, float]] = {}
        self._changed = threading.Event()
        self._thread: threading.Thread | None = None

    @contextmanager
    def beating(self, engine: Engine, job_id: uuid.UUID, interval: float) -> Iterator[None]:
        """While the job runs. A beat still under way as it ends finds the job ended, and
        changes nothing: _BEAT renews only a running job."""
        with self._lock:
            self._running[job_id] = (engine, interval, time.monotonic() + interval)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="job-heartbeats", daemon=True
                )
                self._thread.start()
        self._changed.set()
        try:
            yield
        finally:
            with self._lock:
                del self._running[job_id]

    def _run(self) -> None:
        while True:
            now = time.monotonic()
            with self._lock:
                due = [(job, engine) for job, (engine, _, at) in self._running.items() if at <= now]
                for job_id, engine in due:
                    interval = self._running[job_id][1]
                    self._running[job_id] = (engine, interval, now + interval)
                soonest = min((at for _, _, at in self._running.values()), default=None)
            for job_id, engine in due:
                try:
                    _BEAT(engine, job_id=job_id)
                except Exception:
                    # A missed beat only makes the sweeper re-publish early, which is harmless.
                    logger.warning("heartbeat of job %s failed", job_id, exc_info=True)
            self._changed.wait(None if soonest is None else max(soonest - time.monotonic(), 0))
            self._changed.clear()


HEARTBEATS = Heartbeats()


def run_job(engine: Engine, job_id: uuid.UUID, *, max_runs: int, lease: float = 120) -> Run:
    """Apply a job once and say what happened.

    Errors other than the batch's own propagate (the transaction is rolled back): the caller
    tells a fault of ours from a bug (shared/jobs/faults.py).
    """
    # A batch allocates millions of short-lived, acyclic objects (rows, dicts, strings); with
    # the collector on, each pass rescans the growing heap. Collect once, afterwards instead,
    # and only when the job allocated enough to have set it off: the young generations only,
    # where everything the job allocated still sits. A full collection would rescan the
    # process's whole long-lived heap, some 60 ms on every job.
    collecting = gc.isenabled()
    gc.disable()
    try:
        return _run_locked(engine, job_id, max_runs, max(lease / 4, 0.5))
    finally:
        if collecting:
            gc.enable()
            if gc.get_count()[0] > gc.get_threshold()[0]:
                gc.collect(1)


def _run_locked(engine: Engine, job_id: uuid.UUID, max_runs: int, beat_every: float) -> Run:
    key = lock_key(job_id)
    with engine.connect() as connection:
        try:
            job = _CLAIM(connection, job_id=job_id, key=key)
        except BaseException:
            # The statement may have taken the lock before it failed, and a session's lock
            # outlives the statement: a connection closed holds none.
            connection.invalidate()
            raise
        assert job is not None
        if not job.held:
            # Another worker holds this job right now; it will finish it or release the lock.
            return Run(Outcome.BUSY)
        if job.id is None:
            _release(connection, key)
            return Run(Outcome.SKIPPED)
        try:
            # Left after the transaction: a beat may be waiting on the job's row lock.
            with HEARTBEATS.beating(engine, job_id, beat_every):
                return _run_claimed(connection, job, key, max_runs)
        except BaseException:
            _release(connection, key)
            raise


def _release(connection: Connection, key: int) -> None:
    """Give back the lock of a job this run did not end. Should that fail, the connection is
    dropped rather than pooled: its closing releases the lock on the server."""
    try:
        run_alone(connection, _RELEASE, key=key)
    except Exception:
        logger.warning("could not release a job lock; dropping its connection", exc_info=True)
        connection.invalidate()


def _run_claimed(connection: Connection, job: Row[Any], key: int, max_runs: int) -> Run:
    """Apply the job and end it, in one transaction. A batch the domain refuses leaves none
    of its effect: that transaction is rolled back, and the failure is written in one of its
    own, still under the job's lock (a session's, not a transaction's)."""
    if job.attempts > max_runs:
        # Every run died without a word (each took its worker down): a crash loop.
        error = ApiError.one(
            500,
            "Job abandoned",
            f"the job did not complete in {max_runs} attempts and was given up",
        )
        return _failed(connection, job, key, error)
    operation = Operation(job.operation)
    apply, success_status = APPLY[operation]
    try:
        with Session(bind=connection) as session, session.begin():
            ctx = load_context(session, job.organization_id, job.person_id, job.options)
            result = BatchResult(session, ctx)
            batch = (
                job.small_batch if job.small_batch is not None else stored_batch(session, job.id)
            )
            progress = ProgressReporter(connection.engine, job.id, job.total)
            apply(session, ctx, Batch(operation, batch), progress, result)
            body = None if success_status == 204 else result.finish()
            return _finish(session, job, key, JobStatus.SUCCEEDED, success_status, body, 0)
    except ApiError as exc:
        return _failed(connection, job, key, exc)


def _failed(connection: Connection, job: Row[Any], key: int, error: ApiError) -> Run:
    with Session(bind=connection) as session, session.begin():
        return _finish(
            session, job, key, JobStatus.FAILED, error.status, stored(error), len(error.problems)
        )


def _finish(
    session: Session,
    job: Row[Any],
    key: int,
    status: JobStatus,
    result_status: int,
    body: bytes | None,
    errors: int,
) -> Run:
    """End the job: its status and result, its webhook deliveries, the notice to its waiters,
    and its lock given back, in one statement. The lock may go before the commit: the job's
    row stays locked by this statement until then, and a run that claims the job meanwhile
    waits for it, then finds the job ended."""
    event = job_event(
        job.id,
        job.organization_id,
        operation=job.operation,
        status=status,
        result_status=result_status,
        total=job.total,
        errors=errors,
    )
    params = {
        "end": status,
        "result_status": result_status,
        "result_body": body,
        "errors": errors,
        "key": key,
    }
    ended = session.connection().execute(_FINISH, event | params)
    deliveries = ended.one().deliveries or []
    return Run(
        Outcome.SUCCEEDED if status == JobStatus.SUCCEEDED else Outcome.FAILED, job, deliveries
    )


def record_error(engine: Engine, job_id: uuid.UUID, error: str) -> int:
    """Note the internal error a run met; returns how many runs in a row have met it."""
    with engine.begin() as connection:
        streak = connection.execute(
            update(Job)
            .where(Job.id == job_id, Job.status.in_(UNFINISHED_STATUSES))
            .values(
                error_streak=case((Job.last_error == error, Job.error_streak + 1), else_=1),
                last_error=error,
            )
            .returning(Job.error_streak)
        ).scalar_one_or_none()
    return streak or 0


def fail_unexpectedly(engine: Engine, job_id: uuid.UUID) -> Row[Any] | None:
    """Fail a job whose runs keep raising the same internal error, so no client waits forever;
    returns the job as STARTED has it, None when it had ended already."""
    error = ApiError.one(
        500, "Internal error", "the job could not be processed because of an internal error"
    )
    with Session(engine) as session, session.begin():
        failed = session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status.in_(UNFINISHED_STATUSES))
            .values(
                status=JobStatus.FAILED,
                result_status=error.status,
                result_body=stored(error),
                error_count=1,
                finished_at=func.clock_timestamp(),
                heartbeat_at=None,
            )
            .returning(*STARTED)
        ).one_or_none()
        if failed is None:
            return None
        notify_finished(session, str(job_id))
        event = job_event(
            job_id,
            failed.organization_id,
            operation=failed.operation,
            status=JobStatus.FAILED,
            result_status=error.status,
            total=failed.total,
            errors=1,
        )
        record_job_event(session, event)
    return failed
