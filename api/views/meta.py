"""Unauthenticated: GET /metrics for Prometheus, GET /api/v2/openapi.json for API clients."""

from __future__ import annotations

from flask import Blueprint, Response

from api.context import db, services
from api.openapi import document_bytes
from shared.ops.metrics import CONTENT_TYPE, StateCollector, exposition

blueprint = Blueprint("meta", __name__)


@blueprint.get("/metrics")
def prometheus_metrics() -> Response:
    found = services()
    state = StateCollector(db(), found.settings.queue, found.queue_depth)
    return Response(exposition(found.settings.metrics_dir, state), content_type=CONTENT_TYPE)


@blueprint.get("/api/v2/openapi.json")
def openapi() -> Response:
    return Response(document_bytes(), content_type="application/json")
