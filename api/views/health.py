"""GET /healthz: can we reach the database and the broker?"""

from __future__ import annotations

import orjson
from flask import Blueprint, Response, request
from sqlalchemy import text

from api.context import db, services
from api.errors import UNAVAILABLE_RETRY_AFTER
from api.listing import no_query

blueprint = Blueprint("health", __name__)


@blueprint.get("/healthz")
def healthz() -> Response:
    no_query(request.args)
    report: dict[str, str] = {}
    try:
        db().execute(text("SELECT 1"))
        report["database"] = "ok"
    except Exception:
        report["database"] = "down"
    try:
        services().broker_ping()
        report["broker"] = "ok"
    except Exception:
        report["broker"] = "down"
    status = 200 if all(v == "ok" for v in report.values()) else 503
    response = Response(orjson.dumps(report), status=status, content_type="application/json")
    if status == 503:
        response.headers["Retry-After"] = UNAVAILABLE_RETRY_AFTER
    return response
