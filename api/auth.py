"""X-Auth-Token and X-Organization-Id: who is calling, for which organization."""

from __future__ import annotations

from flask import g, request

from api.context import db
from shared.domain.tokens import Principal, find_principal
from shared.jsonapi.errors import ApiError
from shared.store.engine import autocommit

READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def authenticate() -> None:
    token = request.headers.get("X-Auth-Token", "").strip()
    if not token:
        raise ApiError.one(401, "Unauthorized", "send your personal token in X-Auth-Token")
    # Outside the request's transaction: a read's or a submission's begins after it, and
    # this statement needs none of its own.
    with autocommit(db()) as session:
        principal = find_principal(session, token)
    if principal is None:
        raise ApiError.one(401, "Unauthorized", "the token in X-Auth-Token is not valid")
    organization = request.headers.get("X-Organization-Id", "").strip()
    if organization != str(principal.organization_id):
        raise ApiError.one(
            403,
            "Forbidden",
            "X-Organization-Id must name the organization of the token's person",
        )
    if principal.read_only and request.method not in READ_METHODS:
        raise ApiError.one(403, "Forbidden", "this token is read-only")
    g.principal = principal


def principal() -> Principal:
    found: Principal = g.principal
    return found
