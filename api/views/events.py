"""A job's Server-Sent Events: `progress` as it moves, one `finished`, then the end.

Ids say where the job was (`running:1234`), so a client reconnecting with Last-Event-ID gets
nothing it already has; `finished` has a fixed id, and asking again after it is a 204, which
stops an EventSource from reconnecting.

A stream holds a thread but no database connection while it waits: the process's one
listener (shared/store/notify.py) hands it each change, and it reads the job only when the
job ended or a notification may have been lost, and every RECHECK seconds, when it also
checks that the caller's token is still valid: a revoked token stops seeing the job then.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import orjson
from flask import Request, Response, current_app, request
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from api.context import db, services
from shared.domain.tokens import find_principal
from shared.jobs.submit import find_job
from shared.jsonapi.errors import ApiError, Problem
from shared.store.models import ENDED_STATUSES, Job, JobStatus
from shared.store.notify import JobWatch

logger = logging.getLogger(__name__)

MEDIA_TYPE = "text/event-stream"
FINISHED_ID = "finished"
# What an EventSource waits before reconnecting, sent once at the start (milliseconds).
RETRY_MS = 2000
# Tunables in app.config (seconds), defaulted here. A comment line after this much silence:
# writing to a client that went away is how its stream learns it and gives its slot back.
KEEPALIVE = ("TIMEBATCH_STREAM_KEEPALIVE", 15.0)
# The job and the token read again this often, whatever was notified.
RECHECK = ("TIMEBATCH_STREAM_RECHECK", 5.0)
# A stream ends after this long; the client reconnects with Last-Event-ID and goes on.
LIFETIME = ("TIMEBATCH_STREAM_LIFETIME", 300.0)


def require_event_stream(request: Request) -> None:
    """406 unless Accept admits text/event-stream; no Accept admits anything (RFC 9110)."""
    header = request.headers.get("Accept")
    if header is None or not header.strip():
        return
    if request.accept_mimetypes[MEDIA_TYPE] > 0:
        return
    raise ApiError.one(
        406,
        "Not acceptable",
        f"this endpoint answers with {MEDIA_TYPE!r}; allow it in the Accept header",
    )


@dataclass(frozen=True)
class JobState:
    status: str
    processed: int
    total: int
    result_status: int | None

    @classmethod
    def of(cls, job: Job) -> JobState:
        return cls(job.status, job.processed, job.total, job.result_status)

    @property
    def ended(self) -> bool:
        return self.status in ENDED_STATUSES

    @property
    def event_id(self) -> str:
        return FINISHED_ID if self.ended else f"{self.status}:{self.processed}"


def event(name: str, event_id: str, data: dict[str, object]) -> bytes:
    return b"event: %s\nid: %s\ndata: %s\n\n" % (
        name.encode(),
        event_id.encode(),
        orjson.dumps(data),
    )


@dataclass(frozen=True)
class Timing:
    keepalive: float
    recheck: float
    lifetime: float


class EventStream:
    """The response body: iterated by the server's thread, closed by it when the client is
    gone or the stream ended, which gives the stream's slot back even if never iterated."""

    def __init__(
        self,
        watch: JobWatch,
        state: JobState,
        read: Callable[[], JobState | None],
        *,
        last_event_id: str | None,
        result_link: str,
        timing: Timing,
    ) -> None:
        self.watch = watch
        self.state = state
        self.read = read
        self.last_event_id = last_event_id
        self.result_link = result_link
        self.timing = timing

    def __iter__(self) -> Iterator[bytes]:
        return self._events()

    def close(self) -> None:
        self.watch.close()

    def _finished(self, state: JobState) -> bytes:
        link = None if state.status == JobStatus.CANCELED else self.result_link
        data = {"status": state.status, "result_status": state.result_status}
        return event("finished", FINISHED_ID, data | {"links": {"result": link}})

    def _events(self) -> Iterator[bytes]:
        timing = self.timing
        yield b"retry: %d\n\n" % RETRY_MS
        now = time.monotonic()
        end = now + timing.lifetime
        spoke = now
        next_check = now + timing.recheck
        # The first event is skipped when the client already has it (a reconnect).
        sent = self.last_event_id
        state: JobState | None = self.state
        while state is not None:
            if state.ended:
                yield self._finished(state)
                return
            if state.event_id != sent:
                data = {"status": state.status, "processed": state.processed, "total": state.total}
                yield event("progress", state.event_id, data)
                sent = state.event_id
                spoke = time.monotonic()
            now = time.monotonic()
            if now >= end:
                return
            notice = self.watch.take(min(end, spoke + timing.keepalive, next_check) - now)
            now = time.monotonic()
            if (notice is not None and (notice.finished or notice.stale)) or now >= next_check:
                state = self.read()
                next_check = now + timing.recheck
            elif notice is not None and notice.progress is not None:
                progress = notice.progress
                state = replace(
                    state,
                    status=progress.status,
                    processed=progress.processed,
                    total=progress.total,
                )
            if notice is None and now - spoke >= timing.keepalive:
                yield b": keep-alive\n\n"
                spoke = now


def _reader(
    sessions: sessionmaker[Session], token: str, organization_id: int, job_id: str
) -> Callable[[], JobState | None]:
    """The job as it is now, on a session of its own, opened and closed for this read; None
    when the stream should end: the token was revoked, or the database cannot be read."""

    def read() -> JobState | None:
        try:
            with sessions() as session:
                principal = find_principal(session, token)
                if principal is None or principal.organization_id != organization_id:
                    return None
                job = find_job(session, organization_id, job_id)
                return None if job is None else JobState.of(job)
        except SQLAlchemyError:
            # Mid-stream no error can be answered: the client reconnects, and is told then.
            logger.warning("event stream of job %s cannot read it; ended", job_id, exc_info=True)
            return None

    return read


def _seconds(setting: tuple[str, float]) -> float:
    name, default = setting
    return float(current_app.config.get(name, default))


def stream_response(job: Job, *, token: str, organization_id: int, result_link: str) -> Response:
    last_event_id = request.headers.get("Last-Event-ID", "").strip() or None
    if job.status in ENDED_STATUSES and last_event_id == FINISHED_ID:
        # The client has seen the end: 204 tells an EventSource not to reconnect.
        response = Response(status=204)
        response.headers.pop("Content-Type", None)
        return response
    found = services()
    watch = found.listener.watch(str(job.id))
    if watch is None:
        retry = str(found.settings.retry_after)
        detail = f"this server has as many event streams open as it allows; retry in {retry} s"
        raise ApiError([Problem(503, "Too many streams", detail)], headers={"Retry-After": retry})
    try:
        session = db()
        # Read again now that the watch is on, so no change falls between the read and it;
        # the commits hand the connection back: the stream holds none while it waits.
        session.commit()
        session.refresh(job)
        state = JobState.of(job)
        session.commit()
    except BaseException:
        watch.close()
        raise
    timing = Timing(_seconds(KEEPALIVE), _seconds(RECHECK), _seconds(LIFETIME))
    stream = EventStream(
        watch,
        state,
        _reader(found.sessions, token, organization_id, str(job.id)),
        last_event_id=last_event_id,
        result_link=result_link,
        timing=timing,
    )
    response = Response(stream, status=200, content_type=MEDIA_TYPE)
    response.headers["Cache-Control"] = "no-cache"
    # nginx and its kind would hold the events back to send them in one piece.
    response.headers["X-Accel-Buffering"] = "no"
    return response
