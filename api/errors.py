"""Every error the app can raise leaves as a JSON:API error document, never as HTML."""

from __future__ import annotations

import logging

import psycopg
from flask import Flask, Response
from sqlalchemy.exc import OperationalError
from werkzeug.exceptions import HTTPException

from shared.jsonapi.errors import CONTENT_TYPE, ApiError, Problem

logger = logging.getLogger(__name__)

# Seconds a client is told to wait while the database or the broker is down.
UNAVAILABLE_RETRY_AFTER = "5"

TITLES = {
    400: "Bad request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    406: "Not acceptable",
    409: "Conflict",
    413: "Payload too large",
    414: "URI too long",
    415: "Unsupported media type",
    422: "Unprocessable entity",
    429: "Too many requests",
    431: "Request header fields too large",
    500: "Internal server error",
    503: "Service unavailable",
}


def error_response(error: ApiError) -> Response:
    response = Response(error.body(), status=error.status, content_type=CONTENT_TYPE)
    response.headers.update(error.headers)
    return response


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def handle_api_error(error: ApiError) -> Response:
        return error_response(error)

    @app.errorhandler(HTTPException)
    def handle_http_error(error: HTTPException) -> Response:
        status = error.code or 500
        detail = error.description or TITLES.get(status, "Error")
        if status == 404:
            detail = "no such resource or route"
        problem = Problem(status, TITLES.get(status, error.name), detail)
        response = error_response(ApiError([problem]))
        if status == 405 and error.response is None:
            allowed = getattr(error, "valid_methods", None)
            if allowed:
                response.headers["Allow"] = ", ".join(allowed)
        return response

    # SQLAlchemy's, or the driver's own from statements sent past SQLAlchemy (a pipeline).
    @app.errorhandler(OperationalError)
    @app.errorhandler(psycopg.OperationalError)
    def handle_database_down(error: OperationalError | psycopg.OperationalError) -> Response:
        cause = error.orig if isinstance(error, OperationalError) else error
        logger.error("database unavailable: %s", type(cause).__name__)
        problem = Problem(503, "Service unavailable", "the database is unavailable; try again")
        return error_response(ApiError([problem], headers={"Retry-After": UNAVAILABLE_RETRY_AFTER}))

    @app.errorhandler(Exception)
    def handle_unexpected(error: Exception) -> Response:
        logger.exception("unhandled error")
        problem = Problem(500, "Internal server error", "something went wrong on our side")
        return error_response(ApiError([problem]))
