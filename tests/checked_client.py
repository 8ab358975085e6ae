"""A Flask test client that checks every response it sees against the JSON:API contract."""

from __future__ import annotations

import gzip
import json
from collections import Counter
from functools import cache
from pathlib import Path
from typing import Any

from flask.testing import FlaskClient
from jsonschema import Draft202012Validator
from werkzeug.test import TestResponse

SCHEMA = Path(__file__).parent / "fixtures" / "jsonapi-schema-1.0.json"
JSONAPI = "application/vnd.api+json; charset=utf-8"
# Routes that do not speak JSON:API: health (plain JSON), metrics (Prometheus text), OpenAPI.
NOT_JSONAPI = frozenset({"/healthz", "/metrics", "/api/v2/openapi.json"})
# How many response documents this test session validated against the JSON:API schema.
VALIDATED = Counter[str]()


def _match_all_patterns(node: Any) -> Any:
    """The schema says `patternProperties: {"": ...}` (any name). jsonschema joins the
    patterns and skips an empty result, so "" would match nothing; "^" means the same."""
    if isinstance(node, dict):
        fixed = {k: _match_all_patterns(v) for k, v in node.items()}
        patterns = fixed.get("patternProperties")
        if isinstance(patterns, dict) and "" in patterns:
            fixed["patternProperties"] = {("^" if k == "" else k): v for k, v in patterns.items()}
        return fixed
    if isinstance(node, list):
        return [_match_all_patterns(v) for v in node]
    return node


@cache
def validator() -> Draft202012Validator:
    return Draft202012Validator(_match_all_patterns(json.loads(SCHEMA.read_text())))


def check_response(response: TestResponse) -> None:
    path = response.request.path
    if response.status_code in (204, 303) or path in NOT_JSONAPI:
        assert not response.data or path in NOT_JSONAPI
        return
    assert response.content_type == JSONAPI, response.content_type
    raw = response.data
    if response.headers.get("Content-Encoding") == "gzip":
        raw = gzip.decompress(raw)
    check_document(json.loads(raw), response.status_code)


def check_document(document: Any, status: int) -> None:
    """A JSON:API 1.0 document, with error objects as the contract has them."""
    errors = sorted(validator().iter_errors(_sample(document)), key=str)
    assert not errors, f"not a JSON:API document: {errors[0].message[:300]}"
    VALIDATED["errors" if status >= 400 else "data"] += 1
    if status >= 400:
        assert "errors" in document, document
        for error in document["errors"]:
            assert error["status"] == str(int(error["status"]))
            assert error["title"] and error["detail"]


SAMPLE = 50


def _shape(resource: Any) -> Any:
    if not isinstance(resource, dict):
        return type(resource).__name__
    return (
        sorted(resource),
        list(resource.get("attributes", {})),
        json.dumps(resource.get("relationships"), sort_keys=True),
    )


def _sample(document: Any) -> Any:
    """Large collections: the schema check (slow) runs on the first resources and the last,
    and every other resource must have exactly the shape of the first."""
    data = document.get("data") if isinstance(document, dict) else None
    if not isinstance(data, list) or len(data) <= SAMPLE:
        return document
    first = _shape(data[0])
    odd = [i for i, r in enumerate(data) if _shape(r) != first and r.get("type") == "time_entries"]
    assert not odd, f"resources {odd[:5]} differ in shape from the first"
    return document | {"data": data[:SAMPLE] + data[-1:]}


class CheckedClient(FlaskClient):
    def open(self, *args: Any, **kwargs: Any) -> TestResponse:
        response = super().open(*args, **kwargs)
        check_response(response)
        return response
