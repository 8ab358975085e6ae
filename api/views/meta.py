"""Unauthenticated: GET /metrics for Prometheus, GET /api/v2/openapi.json for API clients."""

from __future__ import annotations

from flask import Blueprint, Response, request

from api.context import db, services
from api.listing import no_query
from api.openapi import document_bytes
from shared.ops.metrics import CONTENT_TYPE, StateCollector, exposition

blueprint = Blueprint("meta", __name__)


@blueprint.get("/metrics")
def prometheus_metrics() -> Response:
    no_query(request.args)
    found = services()
    state = StateCollector(db(), found.settings.queue, found.queue_depth)
    return Response(exposition(found.settings.metrics_dir, state), content_type=CONTENT_TYPE)


@blueprint.get("/api/v2/openapi.json")
def openapi() -> Response:
    no_query(request.args)
    document = document_bytes(services().settings.max_batch_size)
    return Response(document, content_type="application/json")
