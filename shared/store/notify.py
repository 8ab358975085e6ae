"""Job-finished notifications through PostgreSQL LISTEN/NOTIFY.

The worker notifies inside the transaction that finishes the job, so the notification is
delivered exactly when the result becomes visible; a web request waiting on `Prefer: wait`
wakes at that moment instead of polling.

A web process listens on one connection of its own, whatever the number of its waiting
requests, and lets only so many wait at once: a waiter holds a thread, and a process whose
threads all wait could not answer a health check.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from sqlalchemy import make_url, text
from sqlalchemy.orm import Session

CHANNEL = "timebatch_jobs"
RECONNECT_DELAY = 1.0

logger = logging.getLogger(__name__)


def notify_finished(session: Session, job_id: str) -> None:
    session.execute(text("SELECT pg_notify(:channel, :job)"), {"channel": CHANNEL, "job": job_id})


class FinishListener:
    """The process's LISTEN connection, shared by every request that waits for a job."""

    def __init__(self, database_url: str, capacity: int) -> None:
        url = make_url(database_url).set(drivername="postgresql")
        self._conninfo = url.render_as_string(hide_password=False)
        self._slots = threading.BoundedSemaphore(capacity) if capacity > 0 else None
        self._lock = threading.Lock()
        self._waiters: dict[str, set[threading.Event]] = {}
        self._listening = threading.Event()
        self._thread: threading.Thread | None = None

    @contextmanager
    def waiting(self, job_id: str) -> Iterator[threading.Event | None]:
        """An event set when the job's notification arrives; None when the process's wait
        capacity is used up, and the caller should answer at once."""
        if self._slots is None or not self._slots.acquire(blocking=False):
            yield None
            return
        event = threading.Event()
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

    def _start(self) -> None:
        # Started on first use, in the process that serves requests (after gunicorn's fork).
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="finish-listener", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                with psycopg.connect(self._conninfo, autocommit=True) as connection:
                    connection.execute(f"LISTEN {CHANNEL}")
                    self._listening.set()
                    for notification in connection.notifies():
                        self._wake(notification.payload)
            except psycopg.Error:
                logger.warning("job notifications lost their connection; reconnecting")
            self._listening.clear()
            # Whatever was notified meanwhile is lost: every waiter reads its job again.
            self._wake(None)
            threading.Event().wait(RECONNECT_DELAY)

    def _wake(self, job_id: str | None) -> None:
        with self._lock:
            if job_id is None:
                events = [e for found in self._waiters.values() for e in found]
            else:
                events = list(self._waiters.get(job_id, ()))
        for event in events:
            event.set()
