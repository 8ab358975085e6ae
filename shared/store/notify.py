"""Job-finished notifications through PostgreSQL LISTEN/NOTIFY.

The worker notifies inside the transaction that finishes the job, so the notification is
delivered exactly when the result becomes visible; a web request waiting on `Prefer: wait`
wakes at that moment instead of polling.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import psycopg
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

CHANNEL = "timebatch_jobs"


def notify_finished(session: Session, job_id: str) -> None:
    session.execute(text("SELECT pg_notify(:channel, :job)"), {"channel": CHANNEL, "job": job_id})


@contextmanager
def finish_listener(engine: Engine) -> Iterator[Callable[[str, float], bool]]:
    """Yields wait(job_id, timeout) -> True when that job's notification arrived in time.

    Listening starts before the caller re-reads the job, so no notification falls between.
    """
    url = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute(f"LISTEN {CHANNEL}")

        def wait(job_id: str, timeout: float) -> bool:
            if timeout <= 0:
                return False
            for notification in connection.notifies(timeout=timeout):
                if notification.payload == job_id:
                    return True
            return False

        yield wait
