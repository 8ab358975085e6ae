"""What an error raised by a job's run says about the run: ours to retry, or the job's own.

A client's job must never fail for a fault of ours. So an error is judged by what happened,
not only by its type: the same ProgrammingError means a bug when a query is wrong, and
nothing at all when it is what is left of a connection that a shutdown interrupted
mid-query. Only an error that comes back the same on every run is taken for a bug.
"""

from __future__ import annotations

from collections.abc import Iterator
from enum import StrEnum

import psycopg
from billiard.common import terminate_handler_fired
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

# SQLSTATE classes and codes of the moment: the connection (08), resources (53), the server
# shutting down or starting (57P01-57P03), the system (58), and conflicts between
# transactions (40001 serialization, 40P01 deadlock, 55P03 lock not available).
TRANSIENT_CLASSES = frozenset({"08", "53", "58"})
TRANSIENT_CODES = frozenset({"40001", "40P01", "55P03", "57P01", "57P02", "57P03"})


class Fault(StrEnum):
    SHUTDOWN = "shutdown"  # the process is being stopped: the run was cut, not wrong
    TRANSIENT = "transient"  # the database or the network, for now: try again soon
    UNEXPECTED = "unexpected"  # anything else: a bug once it repeats on every run


def causes(exc: BaseException) -> Iterator[BaseException]:
    """The error and every error it was raised from or while handling."""
    seen: set[int] = set()
    pending: list[BaseException | None] = [exc]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        pending += [current.__cause__, current.__context__]


def _sqlstate(exc: BaseException) -> str | None:
    orig = exc.orig if isinstance(exc, DBAPIError) else exc
    code = getattr(orig, "sqlstate", None)
    return code if isinstance(code, str) else None


def _transient(exc: BaseException) -> bool:
    code = _sqlstate(exc)
    if code is not None:
        return code[:2] in TRANSIENT_CLASSES or code in TRANSIENT_CODES
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    # Without a SQLSTATE these are the driver's own: a connection refused, reset or closed.
    return isinstance(
        exc,
        OperationalError | InterfaceError | psycopg.OperationalError | psycopg.InterfaceError
        | ConnectionError | TimeoutError,
    )  # fmt: skip


def classify(exc: BaseException) -> Fault:
    # Billiard's terminate handler (a worker shutdown, or Celery cancelling the task when
    # the broker connection is lost) raises SystemExit wherever the run was; a rollback on
    # the connection that was cut mid-query then raises an error of its own.
    if terminate_handler_fired() or any(
        isinstance(cause, SystemExit | KeyboardInterrupt) for cause in causes(exc)
    ):
        return Fault.SHUTDOWN
    if any(_transient(cause) for cause in causes(exc)):
        return Fault.TRANSIENT
    return Fault.UNEXPECTED


def fingerprint(exc: BaseException) -> str:
    """What makes two errors the same: the type and the first line of the message."""
    kind = type(exc)
    first_line = str(exc).strip().split("\n", 1)[0][:300]
    return f"{kind.__module__}.{kind.__qualname__}: {first_line}"
