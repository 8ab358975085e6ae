"""Job notifications through PostgreSQL LISTEN/NOTIFY: a job finished, a job moved.

The worker notifies inside the transaction that changes the job, so a notification is
delivered exactly when the change becomes visible: a web request waiting on `Prefer: wait`
wakes at that moment instead of polling, and an event stream sends the change as it is.

A web process listens on one connection of its own, whatever the number of its waiting
requests and open streams, and lets only so many of each at once: each holds a thread, and
a process whose threads all wait could not answer a health check.
"""

from __future__ import annotations

import base64
import binascii
import logging
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import psycopg
from sqlalchemy import ColumnElement, Connection, Text, case, cast, func, literal, make_url, select
from sqlalchemy.orm import InstrumentedAttribute, Session

# Payload: the job id, then, when the job ended with a result this small, its status, result
# status and stored result (base64; empty when there is none); sent in the transaction that
# ends the job.
CHANNEL = "timebatch_jobs"
# Bytes of stored result a notification carries, so that a request waiting for a small job
# answers without reading it back: the most whose base64, with the job id and statuses, stays
# under the 8000 bytes a payload may have (4 characters per 3 bytes: 7,600 and some 50).
CARRIED_RESULT = 5700
# Payload: "<job id> <status> <processed> <total>", all a stream needs to send the change.
PROGRESS_CHANNEL = "timebatch_job_progress"
RECONNECT_DELAY = 1.0

logger = logging.getLogger(__name__)


def finished_notice(job_id: ColumnElement[Any] | InstrumentedAttribute[Any]) -> ColumnElement[Any]:
    """The end notification as a SQL expression: the job id alone, so its waiters read the
    job (a cancel, a job failed outside a run)."""
    return func.pg_notify(CHANNEL, cast(job_id, Text))


def result_notice(
    job_id: InstrumentedAttribute[Any],
    status: InstrumentedAttribute[Any],
    result_status: InstrumentedAttribute[Any],
    result_body: InstrumentedAttribute[Any],
) -> ColumnElement[Any]:
    """The end notification of a job that ended with a result, from the row that ended it:
    the result too when it is at most CARRIED_RESULT bytes."""
    carried = func.concat_ws(
        " ",
        job_id,
        status,
        result_status,
        # Without the line breaks PostgreSQL's base64 has every 76 characters.
        func.translate(func.coalesce(func.encode(result_body, "base64"), ""), "\n", ""),
    )
    small = func.coalesce(func.length(result_body), 0) <= CARRIED_RESULT
    return func.pg_notify(CHANNEL, case((small, carried), else_=cast(job_id, Text)))


@dataclass(frozen=True)
class Ended:
    """A job's end as its notification told it: its status, result status and stored result
    (None when it has no body)."""

    status: str
    result_status: int
    result_body: bytes | None


def parse_finished(payload: str) -> tuple[str, Ended | None]:
    """The job id, and its end when the notification carried it."""
    parts = payload.split(" ", 3)
    if len(parts) != 4 or not parts[2].isdigit():
        return parts[0], None
    job_id, status, result_status, body = parts
    try:
        result_body = base64.b64decode(body, validate=True) if body else None
    except binascii.Error:
        return job_id, None
    return job_id, Ended(status, int(result_status), result_body)


def notify_finished(session: Session, job_id: str) -> None:
    session.execute(select(finished_notice(literal(job_id, Text))))


def progress_notice(
    job_id: ColumnElement[Any],
    status: str,
    processed: ColumnElement[int],
    total: ColumnElement[int],
) -> ColumnElement[Any]:
    """The progress notification as a SQL expression: a statement that moves a job sends it
    itself, from the row it wrote, in the same round trip."""
    payload = func.concat_ws(" ", job_id, literal(status, Text), processed, total)
    return func.pg_notify(PROGRESS_CHANNEL, payload)


def notify_progress(
    connection: Connection | Session,
    job_id: uuid.UUID | str,
    status: str,
    processed: int,
    total: int,
) -> None:
    notice = progress_notice(literal(str(job_id), Text), status, literal(processed), literal(total))
    connection.execute(select(notice))


@dataclass(frozen=True)
class JobProgress:
    status: str
    processed: int
    total: int


def parse_progress(payload: str) -> tuple[str, JobProgress] | None:
    """The job id and its progress; None for a payload this version does not know."""
    parts = payload.split(" ")
    if len(parts) != 4 or not parts[2].isdigit() or not parts[3].isdigit():
        return None
    job_id, status, processed, total = parts
    return job_id, JobProgress(status, int(processed), int(total))


@dataclass(frozen=True)
class Notice:
    """What a watch was told since it last looked: the latest progress only (a stream shows
    where the job is, not every step it took), whether it finished, and whether
    notifications may have been lost, so the job must be read again."""

    progress: JobProgress | None
    finished: bool
    stale: bool


class JobWatch:
    """One event stream's subscription to its job's notifications; `close` gives its slot
    back. Filled by the listener's thread, drained by the stream's."""

    def __init__(self, listener: JobListener, job_id: str) -> None:
        self.job_id = job_id
        self._listener = listener
        self._lock = threading.Lock()
        self._signal = threading.Event()
        self._progress: JobProgress | None = None
        self._finished = False
        self._stale = False
        self._closed = False

    def _tell(
        self, *, progress: JobProgress | None = None, finished: bool = False, stale: bool = False
    ) -> None:
        with self._lock:
            if progress is not None:
                self._progress = progress
            self._finished = self._finished or finished
            self._stale = self._stale or stale
            self._signal.set()

    def take(self, timeout: float) -> Notice | None:
        """What came since the last call, waiting up to `timeout` seconds; None if nothing."""
        if not self._signal.wait(max(timeout, 0.0)):
            return None
        with self._lock:
            notice = Notice(self._progress, self._finished, self._stale)
            self._progress, self._finished, self._stale = None, False, False
            self._signal.clear()
        return notice

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._listener._unwatch(self)

    def __enter__(self) -> JobWatch:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class JobWait(threading.Event):
    """Set when the job's end notification arrives, with the end it carried, if any."""

    ended: Ended | None = None


class JobListener:
    """The process's LISTEN connection, shared by every request that waits for a job and
    every stream that follows one."""

    def __init__(self, database_url: str, wait_capacity: int, stream_capacity: int = 0) -> None:
        url = make_url(database_url).set(drivername="postgresql")
        self._conninfo = url.render_as_string(hide_password=False)
        self._slots = _slots(wait_capacity)
        self._stream_slots = _slots(stream_capacity)
        self._lock = threading.Lock()
        self._waiters: dict[str, set[JobWait]] = {}
        self._watches: dict[str, set[JobWatch]] = {}
        # Watches made while no LISTEN was in effect: whatever was sent before it took effect
        # never reaches them, so they read their job again once it has.
        self._unsynced: set[JobWatch] = set()
        self._listening = threading.Event()
        self._thread: threading.Thread | None = None

    @contextmanager
    def waiting(self, job_id: str) -> Iterator[JobWait | None]:
        """An event set when the job's notification arrives; None when the process's wait
        capacity is used up, and the caller should answer at once."""
        if self._slots is None or not self._slots.acquire(blocking=False):
            yield None
            return
        event = JobWait()
        try:
            with self._lock:
                self._waiters.setdefault(job_id, set()).add(event)
                self._start()
            # Listening before the caller reads the job, so no notification falls between;
            # should it not come up, the caller's periodic re-read still sees the job finish.
            self._listening.wait(timeout=RECONNECT_DELAY)
            yield event
        finally:
            with self._lock:
                events = self._waiters.get(job_id, set())
                events.discard(event)
                if not events:
                    self._waiters.pop(job_id, None)
            self._slots.release()

    def watch(self, job_id: str) -> JobWatch | None:
        """A subscription to the job's progress and end, to `close` when done; None when the
        process's stream capacity is used up, and the caller should refuse at once. Read the
        job after this returns: nothing committed from then on is missed."""
        if self._stream_slots is None or not self._stream_slots.acquire(blocking=False):
            return None
        watch = JobWatch(self, job_id)
        with self._lock:
            self._watches.setdefault(job_id, set()).add(watch)
            self._start()
        if not self._listening.wait(timeout=RECONNECT_DELAY):
            with self._lock:
                if not self._listening.is_set():
                    self._unsynced.add(watch)
        return watch

    def _unwatch(self, watch: JobWatch) -> None:
        with self._lock:
            watches = self._watches.get(watch.job_id, set())
            watches.discard(watch)
            if not watches:
                self._watches.pop(watch.job_id, None)
            self._unsynced.discard(watch)
        assert self._stream_slots is not None
        self._stream_slots.release()

    def _start(self) -> None:
        # Started on first use, in the process that serves requests (after gunicorn's fork).
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="job-listener", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                with psycopg.connect(self._conninfo, autocommit=True) as connection:
                    connection.execute(f"LISTEN {CHANNEL}")
                    connection.execute(f"LISTEN {PROGRESS_CHANNEL}")
                    self._listened()
                    for notification in connection.notifies():
                        if notification.channel == PROGRESS_CHANNEL:
                            self._moved(notification.payload)
                        else:
                            self._wake(*parse_finished(notification.payload))
            except psycopg.Error:
                logger.warning("job notifications lost their connection; reconnecting")
            with self._lock:
                self._listening.clear()
                self._unsynced = {w for found in self._watches.values() for w in found}
            # Whatever was notified meanwhile is lost: every waiter reads its job again.
            self._wake(None)
            threading.Event().wait(RECONNECT_DELAY)

    def _listened(self) -> None:
        with self._lock:
            self._listening.set()
            unsynced, self._unsynced = self._unsynced, set()
        for watch in unsynced:
            watch._tell(stale=True)

    def _moved(self, payload: str) -> None:
        parsed = parse_progress(payload)
        if parsed is None:
            logger.warning("unknown job progress notification %r", payload[:100])
            return
        job_id, progress = parsed
        with self._lock:
            watches = list(self._watches.get(job_id, ()))
        for watch in watches:
            watch._tell(progress=progress)

    def _wake(self, job_id: str | None, ended: Ended | None = None) -> None:
        with self._lock:
            if job_id is None:
                events = [e for found in self._waiters.values() for e in found]
                watches = [w for found in self._watches.values() for w in found]
            else:
                events = list(self._waiters.get(job_id, ()))
                watches = list(self._watches.get(job_id, ()))
        for event in events:
            event.ended = ended
            event.set()
        for watch in watches:
            if job_id is None:
                watch._tell(stale=True)
            else:
                watch._tell(finished=True)


def _slots(capacity: int) -> threading.BoundedSemaphore | None:
    return threading.BoundedSemaphore(capacity) if capacity > 0 else None
