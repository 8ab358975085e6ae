"""Jobs: one per accepted batch. Stored before anything is published; applied exactly once.

A job's effect and its `succeeded` (or `failed`) mark commit in one transaction, guarded
by a transaction-level advisory lock on the job id, so a redelivered or duplicated task
message finds the job finished and does nothing.
"""

from __future__ import annotations

import datetime as dt
import gc
import hashlib
import logging
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import orjson
from sqlalchemy import Engine, func, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session, defer

from shared import documents
from shared.approval import approve_entries, unapprove_entries
from shared.context import BatchContext, load_context
from shared.entries import Item, Progress, create_entries, delete_entries, update_entries
from shared.jsonapi import ApiError, Problem
from shared.models import Job
from shared.notify import notify_finished
from shared.render import gzip_document
from shared.tokens import Principal

Apply = Callable[
    [Session, BatchContext, Sequence[Item], Progress], Sequence[Mapping[Any, Any]] | None
]

OPERATIONS: dict[str, tuple[Apply, int]] = {
    "create": (create_entries, 201),
    "update": (update_entries, 200),
    "delete": (delete_entries, 204),
    "approve": (approve_entries, 200),
    "unapprove": (unapprove_entries, 200),
}
UNFINISHED = ("queued", "running")

logger = logging.getLogger(__name__)


def stored(error: ApiError) -> bytes:
    """Result bodies are stored gzip-compressed, ready to serve as they are."""
    return gzip_document(error.document())


def fingerprint(operation: str, body: bytes, options: dict[str, Any]) -> str:
    """What makes two submissions the same request: operation, options and the body's bytes."""
    digest = hashlib.sha256(body)
    digest.update(orjson.dumps([operation, options], option=orjson.OPT_SORT_KEYS))
    return digest.hexdigest()


def submit_job(
    session: Session,
    principal: Principal,
    operation: str,
    batch: bytes | list[dict[str, Any]],
    options: dict[str, Any],
    idempotency_key: str | None = None,
    digest: str | None = None,
    total: int | None = None,
) -> tuple[Job, bool]:
    """Store a queued job; returns it and whether it is new (False: an idempotent replay).

    `batch` is the bulk document's body as received and checked (or items to encode as one);
    it is stored as it is, and the worker decodes it.
    """
    if not isinstance(batch, bytes):
        total = len(batch)
        batch = documents.encode_items(operation, batch)
    if total is None:
        total = len(documents.decode(operation, batch).data)
    if digest is None:
        digest = fingerprint(operation, batch, options)
    values = {
        "organization_id": principal.organization_id,
        "person_id": principal.person_id,
        "operation": operation,
        "batch": batch,
        "options": options,
        "idempotency_key": idempotency_key,
        "request_hash": digest,
        "total": total,
    }
    statement = pg_insert(Job).values(**values)
    if idempotency_key is not None:
        # Two racing requests with one key: the unique index lets exactly one insert win.
        statement = statement.on_conflict_do_nothing(
            index_elements=["organization_id", "idempotency_key"],
            index_where=text("idempotency_key IS NOT NULL"),
        )
    job_id = session.scalar(statement.returning(Job.id))
    # The stored batch can be megabytes: the submitting request has it already.
    without_batch = select(Job).options(defer(Job.batch), defer(Job.result_body))
    if job_id is not None:
        return session.scalars(without_batch.where(Job.id == job_id)).one(), True
    existing = session.scalars(
        without_batch.where(
            Job.organization_id == principal.organization_id,
            Job.idempotency_key == idempotency_key,
        )
    ).one()
    if existing.request_hash != digest or existing.operation != operation:
        raise ApiError.one(
            422,
            "Idempotency key reused",
            "this Idempotency-Key was already used with a different request",
        )
    return existing, False


def find_job(session: Session, organization_id: int, job_id: str) -> Job | None:
    try:
        key = uuid.UUID(job_id)
    except ValueError:
        return None
    return session.scalars(
        select(Job).where(Job.id == key, Job.organization_id == organization_id)
    ).one_or_none()


def lock_key(job_id: uuid.UUID) -> int:
    return int.from_bytes(job_id.bytes[:8], "big", signed=True)


class ProgressReporter:
    """Writes `processed` and the heartbeat on its own connection, visible while the job runs."""

    def __init__(self, engine: Engine, job_id: uuid.UUID, min_interval: float = 0.25) -> None:
        self.engine = engine
        self.job_id = job_id
        self.min_interval = min_interval
        self._last = 0.0

    def __call__(self, processed: int) -> None:
        now = dt.datetime.now(dt.UTC).timestamp()
        if now - self._last < self.min_interval:
            return
        self._last = now
        with self.engine.begin() as connection:
            connection.execute(
                update(Job)
                .where(Job.id == self.job_id, Job.status == "running")
                .values(processed=func.least(processed, Job.total), heartbeat_at=func.now())
            )


def _mark_running(engine: Engine, job_id: uuid.UUID) -> int | None:
    """Flag the job running on a connection of its own, so pollers see it at once."""
    with engine.begin() as connection:
        return connection.execute(
            update(Job)
            .where(Job.id == job_id, Job.status.in_(UNFINISHED))
            .values(
                status="running",
                attempts=Job.attempts + 1,
                started_at=func.coalesce(Job.started_at, func.now()),
                heartbeat_at=func.now(),
            )
            .returning(Job.attempts)
        ).scalar_one_or_none()


class Heartbeat:
    """Renews a running job's heartbeat on its own connection, so the sweeper can tell a
    long job from one whose worker died."""

    def __init__(self, engine: Engine, job_id: uuid.UUID, interval: float) -> None:
        self.engine = engine
        self.job_id = job_id
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="job-heartbeat", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                with self.engine.begin() as connection:
                    connection.execute(
                        update(Job)
                        .where(Job.id == self.job_id, Job.status == "running")
                        .values(heartbeat_at=func.now())
                    )
            except Exception:
                # A missed beat only makes the sweeper re-publish early, which is harmless.
                logger.warning("heartbeat of job %s failed", self.job_id, exc_info=True)

    def stop(self) -> None:
        """Call after the job's transaction has ended: a beat may be waiting on its row lock."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


def run_job(engine: Engine, job_id: uuid.UUID, *, max_attempts: int, lease: float = 120) -> str:
    """Apply a job once. Returns what happened: succeeded, failed, busy or skipped.

    Transient database errors propagate (the transaction is rolled back); the caller retries.
    """
    heartbeat = Heartbeat(engine, job_id, max(lease / 4, 0.5))
    # A batch allocates millions of short-lived, acyclic objects (rows, dicts, strings); with
    # the collector on, each pass rescans the growing heap. Collect once, afterwards instead.
    collecting = gc.isenabled()
    gc.disable()
    try:
        return _run_locked(engine, job_id, max_attempts, heartbeat)
    finally:
        heartbeat.stop()
        if collecting:
            gc.enable()
            gc.collect()


def _run_locked(engine: Engine, job_id: uuid.UUID, max_attempts: int, heartbeat: Heartbeat) -> str:
    with Session(engine) as session, session.begin():
        locked = session.scalar(
            text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": lock_key(job_id)}
        )
        if not locked:
            # Another worker holds this job right now; it will finish it or release the lock.
            return "busy"
        job = session.get(Job, job_id, populate_existing=True)
        if job is None or job.status not in UNFINISHED:
            return "skipped"
        attempts = _mark_running(engine, job_id)
        if attempts is None:
            return "skipped"
        heartbeat.start()
        if attempts > max_attempts:
            error = ApiError.one(
                500,
                "Job abandoned",
                f"the job did not complete in {max_attempts} attempts and was given up",
            )
            _finish(session, job, "failed", error.status, stored(error), len(error.problems))
            return "failed"
        apply, success_status = OPERATIONS[job.operation]
        ctx = load_context(session, job.organization_id, job.person_id, job.options)
        savepoint = session.begin_nested()
        try:
            batch = documents.items(job.operation, job.batch or b"")
            rows = apply(session, ctx, batch, ProgressReporter(engine, job_id))
        except ApiError as exc:
            savepoint.rollback()
            _finish(session, job, "failed", exc.status, stored(exc), len(exc.problems))
            return "failed"
        savepoint.commit()
        body = None if rows is None else ctx.renderer().encode_collection(rows)
        _finish(session, job, "succeeded", success_status, body, 0)
        return "succeeded"


def _finish(
    session: Session, job: Job, status: str, result_status: int, body: bytes | None, errors: int
) -> None:
    notify_finished(session, str(job.id))
    session.execute(
        update(Job)
        .where(Job.id == job.id)
        .values(
            status=status,
            result_status=result_status,
            result_body=body,
            error_count=errors,
            processed=Job.total if status == "succeeded" else Job.processed,
            # clock_timestamp: now() is this transaction's start, before started_at was set.
            finished_at=func.clock_timestamp(),
            heartbeat_at=None,
        )
    )


def fail_unexpectedly(engine: Engine, job_id: uuid.UUID) -> None:
    """Fail a job whose run raised something no retry can fix, so no client waits forever."""
    error = ApiError.one(
        500, "Internal error", "the job could not be processed because of an internal error"
    )
    with Session(engine) as session, session.begin():
        notify_finished(session, str(job_id))
        session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status.in_(UNFINISHED))
            .values(
                status="failed",
                result_status=error.status,
                result_body=stored(error),
                error_count=1,
                finished_at=func.clock_timestamp(),
                heartbeat_at=None,
            )
        )


def cancel_job(session: Session, job: Job) -> bool:
    """Cancel a job that has not started; False when it is already running or finished."""
    canceled = session.execute(
        update(Job)
        .where(Job.id == job.id, Job.status == "queued")
        .values(status="canceled", finished_at=func.now())
        .returning(Job.id)
    ).scalar_one_or_none()
    return canceled is not None


def unknown_job(job_id: str) -> ApiError:
    return ApiError([Problem(404, "Not found", f"job {job_id} does not exist")])
