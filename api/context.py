"""What the app holds for its requests: settings, the engine, the session, the publisher."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from flask import current_app, g
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from shared.settings import Settings
from shared.store.notify import JobListener

logger = logging.getLogger(__name__)

# Sends a committed job's id, at its rank's priority, to the workers.
Publisher = Callable[[str, int], None]
# Sends the committed webhook deliveries of a job that ended here (canceled) to be attempted.
DeliveryPublisher = Callable[[Sequence[int]], None]


@dataclass
class AppServices:
    settings: Settings
    sessions: sessionmaker[Session]
    publish: Publisher
    publish_deliveries: DeliveryPublisher
    broker_ping: Callable[[], None]
    queue_depth: Callable[[], int]
    listener: JobListener


def services() -> AppServices:
    found: AppServices = current_app.extensions["timebatch"]
    return found


def db() -> Session:
    """The request's session. The view that writes commits it; teardown closes it."""
    if "db" not in g:
        g.db = services().sessions()
    session: Session = g.db
    return session


def close_db(_exc: BaseException | None = None) -> None:
    session: Session | None = g.pop("db", None)
    if session is None:
        return
    try:
        session.close()
    except DBAPIError:
        # The connection died under the request (the database restarted): the answer is
        # already made, and an error raised here would make gunicorn send its own HTML 500.
        # The pool drops the dead connection.
        logger.warning("closing the request's session failed; its connection is dropped")
