"""Generated malformed documents, headers and query strings at every endpoint.

Whatever arrives: no 500, every body a valid JSON:API document (the checked client asserts
it on each response), and nothing stored unless the request was accepted.
"""

from __future__ import annotations

import copy
import json
import re
from typing import Any

from flask import Flask
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from shared.store.models import Job, TimeEntry
from tests.conftest import BULK

EXAMPLES = 1000
SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30)
    | st.sampled_from(["time_entries", "people", "2026-01-02", "7781", "223", "", "\u0000"])
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(["data", "type", "id", "attributes", "relationships", "note", "x"])
            | st.text(max_size=8),
            children,
            max_size=4,
        )
    ),
    max_leaves=12,
)
VALID_ENTRY: dict[str, Any] = {
    "type": "time_entries",
    "attributes": {"date": "2026-01-02", "time": 60, "note": "n"},
    "relationships": {
        "person": {"data": {"type": "people", "id": "7781"}},
        "service": {"data": {"type": "services", "id": "1213"}},
    },
}


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(value, dict):
        for key, child in value.items():
            found += _paths(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            found += _paths(child, (*prefix, index))
    return found


@st.composite
def mutated_documents(draw: st.DrawFn) -> Any:
    """A valid bulk document with one member replaced by something else."""
    document = copy.deepcopy({"data": [VALID_ENTRY, {"type": "time_entries", "id": 223}]})
    path = draw(st.sampled_from(_paths(document)[1:]))
    target: Any = document
    for key in path[:-1]:
        target = target[key]
    if draw(st.booleans()):
        target[path[-1]] = draw(json_values)
    elif isinstance(target, dict):
        del target[path[-1]]
    else:
        target.append(draw(json_values))
    return document


bodies = (
    mutated_documents().map(lambda d: json.dumps(d).encode())
    | json_values.map(lambda v: json.dumps(v).encode())
    | st.binary(max_size=64)
)
header_values = st.text(
    alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=40
) | st.sampled_from(
    [BULK, "application/vnd.api+json", "application/json", "*/*", "wait=5", "wait=abc", ""]
)
query_keys = st.sampled_from(
    [
        "filter[person_id]",
        "filter[date]",
        "filter[status]",
        "filter[operation]",
        "filter[nope]",
        "sort",
        "include",
        "page[number]",
        "page[size]",
        "for_all_approvers",
    ]
) | st.text(max_size=12)
query_strings = st.dictionaries(query_keys, st.text(max_size=12), max_size=4)


def routes(app: Flask) -> list[tuple[str, str]]:
    found = []
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):  # type: ignore[operator]
            found.append((method, re.sub(r"<(?:\w+:)?\w+>", "{id}", rule.rule)))
    return sorted(found)


def counts(session: Session) -> tuple[int, int]:
    jobs = session.scalar(select(func.count()).select_from(Job)) or 0
    entries = session.scalar(select(func.count()).select_from(TimeEntry)) or 0
    return jobs, entries


def test_routes_are_known(app: Flask) -> None:
    # The walks below cover these; a new route is covered by construction.
    assert ("POST", "/api/v2/time_entries") in routes(app)
    assert ("GET", "/api/v2/jobs/{id}") in routes(app)


@SETTINGS
@given(data=st.data())
def test_malformed_bulk_documents(
    client: FlaskClient, auth: Any, session: Session, data: st.DataObject
) -> None:
    headers = auth(7783) | {"Content-Type": BULK}
    method, path = data.draw(
        st.sampled_from(
            [
                ("POST", "/api/v2/time_entries"),
                ("PATCH", "/api/v2/time_entries"),
                ("DELETE", "/api/v2/time_entries"),
                ("PATCH", "/api/v2/time_entries/approve"),
                ("PATCH", "/api/v2/time_entries/unapprove"),
            ]
        )
    )
    body = data.draw(bodies)
    before = counts(session)
    response = client.open(path, method=method, data=body, headers=headers)
    assert response.status_code < 500, response.data
    jobs, entries = counts(session)
    assert entries == before[1]
    assert jobs == before[0] + (1 if response.status_code == 202 else 0)


@SETTINGS
@given(data=st.data())
def test_malformed_headers_and_queries_everywhere(
    app: Flask, client: FlaskClient, auth: Any, session: Session, data: st.DataObject
) -> None:
    method, path = data.draw(st.sampled_from(routes(app)))
    path = path.replace("{id}", data.draw(st.sampled_from(["223", "x", "-1", "9" * 30, "%00"])))
    headers = auth(7783) if data.draw(st.booleans()) else {}
    for name in ("Content-Type", "Accept", "Prefer", "Idempotency-Key", "X-Organization-Id"):
        if data.draw(st.booleans()):
            headers[name] = data.draw(header_values)
    before = counts(session)
    response = client.open(
        path,
        method=method,
        query_string=data.draw(query_strings),
        data=data.draw(bodies),
        headers=headers,
    )
    assert response.status_code < 500, (method, path, response.data)
    jobs, entries = counts(session)
    assert entries == before[1]
    assert jobs == before[0] + (1 if response.status_code == 202 else 0)


@SETTINGS
@given(token=header_values, organization=header_values)
def test_garbage_credentials(
    client: FlaskClient, session: Session, token: str, organization: str
) -> None:
    response = client.post(
        "/api/v2/time_entries",
        json={"data": [VALID_ENTRY]},
        headers={"Content-Type": BULK, "X-Auth-Token": token, "X-Organization-Id": organization},
    )
    assert response.status_code in (401, 403)
