"""Per request: an id (X-Request-Id, echoed back), one JSON log line, and the HTTP metrics."""

from __future__ import annotations

import logging
import re
import time
import uuid

from flask import Flask, Response, g, request

from shared.ops import logs, metrics

logger = logging.getLogger("timebatch.request")

HEADER = "X-Request-Id"
# A caller's id is kept only if it is short and plain: it goes into logs and headers.
ACCEPTED_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
JOB_ID = re.compile(r"[0-9a-fA-F\-]{32,36}")
JOB_LOCATION = re.compile(r"^/api/v2/jobs/([0-9a-f\-]{36})(?:/result)?$")
UNMATCHED = "unmatched"


def _route() -> str:
    rule = request.url_rule
    return rule.rule if rule is not None else UNMATCHED


def _start() -> None:
    given = request.headers.get(HEADER, "")
    request_id = given if ACCEPTED_ID.fullmatch(given) else uuid.uuid4().hex
    g.request_started = time.perf_counter()
    g.request_id = request_id
    job_id = (request.view_args or {}).get("job_id")
    if not (isinstance(job_id, str) and JOB_ID.fullmatch(job_id)):
        job_id = None
    g.log_tokens = [logs.bind(request_id=request_id, job_id=job_id)]
    metrics.metrics().http_in_progress.labels(request.method).inc()


def bind_principal() -> None:
    """Runs after authentication: later records carry the caller's organization."""
    g.log_tokens.append(logs.bind(organization_id=g.principal.organization_id))


def _finish(response: Response) -> Response:
    started = g.get("request_started")
    if started is None:  # a request that failed before our first hook ran
        return response
    seconds = time.perf_counter() - started
    response.headers[HEADER] = g.request_id
    route = _route()
    metrics.request_finished(request.method, route, response.status_code, seconds)
    if logs.current("job_id") is None:
        # A submission names its new job only in its answer.
        found = JOB_LOCATION.match(response.headers.get("Content-Location", ""))
        if found:
            g.log_tokens.append(logs.bind(job_id=found.group(1)))
    logger.info(
        "%s %s %s",
        request.method,
        route,
        response.status_code,
        extra={
            "method": request.method,
            "path": request.path,
            "route": route,
            "status": response.status_code,
            "duration_ms": round(seconds * 1000, 1),
        },
    )
    return response


def _teardown(_exc: BaseException | None = None) -> None:
    if g.pop("request_started", None) is not None:
        metrics.metrics().http_in_progress.labels(request.method).dec()
    for tokens in reversed(g.pop("log_tokens", [])):
        logs.unbind(tokens)


def register_telemetry(app: Flask) -> None:
    app.before_request(_start)
    app.after_request(_finish)
    app.teardown_request(_teardown)
