"""Structured logs: one JSON object per line, carrying the ids of the work at hand.

Web requests bind `request_id` and `organization_id` (and `job_id` when a job is named),
worker tasks bind `task_id`, `job_id` and `organization_id`; every record logged meanwhile,
by any library, carries them. Nothing here logs headers or bodies, and anything shaped
like an API token is blanked in the formatted line all the same.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token
from typing import IO, Any

from pythonjsonlogger.orjson import OrjsonFormatter

from shared.domain.tokens import TOKEN_PREFIX

CONTEXT_FIELDS = ("request_id", "organization_id", "job_id", "task_id")
_context: dict[str, ContextVar[str | None]] = {
    name: ContextVar(f"timebatch_{name}", default=None) for name in CONTEXT_FIELDS
}
TOKEN_PATTERN = re.compile(re.escape(TOKEN_PREFIX) + r"[A-Za-z0-9_\-]{16,}")
REDACTED = TOKEN_PREFIX + "[redacted]"


def bind(**ids: object) -> dict[str, Token[str | None]]:
    """Attach ids to every record logged from this context on; returns what unbind needs."""
    tokens = {}
    for name, value in ids.items():
        tokens[name] = _context[name].set(None if value is None else str(value))
    return tokens


def unbind(tokens: dict[str, Token[str | None]]) -> None:
    for name, token in tokens.items():
        _context[name].reset(token)


@contextmanager
def bound(**ids: object) -> Iterator[None]:
    tokens = bind(**ids)
    try:
        yield
    finally:
        unbind(tokens)


def current(name: str) -> str | None:
    return _context[name].get()


class JsonLineFormatter(OrjsonFormatter):
    """time, level, logger, message, the bound ids, then any `extra` of the call."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(
            ["levelname", "name", "message"],
            rename_fields={"levelname": "level", "name": "logger"},
            timestamp="time",
            **kwargs,
        )

    def process_log_record(self, log_data: dict[str, Any]) -> dict[str, Any]:
        return {"time": log_data.pop("time"), **log_data}

    def serialize_log_record(self, log_data: dict[str, Any]) -> str:
        return TOKEN_PATTERN.sub(REDACTED, super().serialize_log_record(log_data))


class JsonLineHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The handler configure_logging installs (and replaces when called again).

    Without a stream of its own it writes to whatever sys.stderr is when a record comes, as
    logging's last-resort handler does: a stream replaced and closed since (pytest's
    capture, a daemon's redirection) must not turn later records into errors.
    """

    def __init__(self, stream: IO[str] | None = None) -> None:
        super().__init__(stream if stream is not None else sys.stderr)
        self._follow_stderr = stream is None

    def emit(self, record: logging.LogRecord) -> None:
        if self._follow_stderr:
            self.stream = sys.stderr
        super().emit(record)


_previous_factory: Any = None


def _install_record_factory() -> None:
    """Ids go onto records when they are made, so every handler sees them (pytest's too)."""
    global _previous_factory
    if _previous_factory is not None:
        return
    _previous_factory = logging.getLogRecordFactory()
    previous = _previous_factory

    def make_record(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record: logging.LogRecord = previous(*args, **kwargs)
        for name, var in _context.items():
            value = var.get()
            if value is not None:
                setattr(record, name, value)
        return record

    logging.setLogRecordFactory(make_record)


# timebatch's own loggers; the web app logs them at INFO and other libraries at WARNING.
OWN_LOGGERS = ("timebatch", "api", "shared", "worker")


def configure_logging(
    level: int | str = logging.INFO,
    stream: IO[str] | None = None,
    *,
    libraries: int | str | None = None,
) -> None:
    """JSON lines on stderr from the root logger; idempotent, other handlers are kept.

    `level` applies to timebatch's loggers, `libraries` to the rest (default: `level`).
    """
    _install_record_factory()
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, JsonLineHandler)]:
        root.removeHandler(handler)
    handler = JsonLineHandler(stream)
    handler.setFormatter(JsonLineFormatter())
    root.addHandler(handler)
    root.setLevel(level if libraries is None else libraries)
    for name in OWN_LOGGERS:
        logging.getLogger(name).setLevel(level)


def gunicorn_logconfig() -> dict[str, Any]:
    """gunicorn's own logs (master and workers) as JSON lines too; the app adds its handler.

    gunicorn's access log stays off: the app logs one line per request, with its ids.
    """
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "root": {"level": "INFO", "handlers": []},
        "formatters": {"json": {"()": "shared.ops.logs.JsonLineFormatter"}},
        "handlers": {
            "console": {
                "class": "logging.StreamHandler",
                "formatter": "json",
                "stream": "ext://sys.stderr",
            }
        },
        "loggers": {
            "gunicorn.error": {"level": "INFO", "handlers": ["console"], "propagate": False},
            "gunicorn.access": {"level": "WARNING", "handlers": [], "propagate": False},
        },
    }
