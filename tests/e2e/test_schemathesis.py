"""schemathesis against the live app and its own OpenAPI document: no 500, no contradiction.

The app is the real one over a committed database holding the demo data and jobs in every
state (queued, canceled, succeeded with 201 and 204 results, failed, purged by retention);
its job messages go to a queue of their own that no worker reads, so the jobs schemathesis
submits simply stay queued. Every operation of the document gets a bounded number of
generated requests, valid and invalid, sent with the token of an admin of the demo
organization; path ids are aimed, deterministically, at existing resources part of the time
so that real resources and stored results are checked too, not only 404s.
"""

from __future__ import annotations

import dataclasses
import json
import zlib
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from flask import Flask
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from api import create_app
from api.openapi import document
from shared.cli.demo import load_demo
from shared.settings import Settings
from shared.store.engine import make_session_factory
from tests.checked_client import NOT_JSONAPI, VALIDATED, check_document
from tests.conftest import purge, token_for
from tests.e2e.conftest import TABLES
from tests.e2e.fuzzing import (
    ADMIN,
    EVENTS_PATH,
    KNOWN_IDS,
    SEEDED_RESULTS,
    SeededWebhooks,
    ended,
    seed_jobs,
    seed_webhooks,
)

MAX_EXAMPLES = 25
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
# What the run did, reported at the end of the pytest session.
RUN: Counter[str] = Counter()
OPERATIONS: set[str] = set()


class Report:
    """Prints the counts CI shows: requests schemathesis sent, documents validated."""

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if RUN["requests"]:
            terminalreporter.write_line(
                f"schemathesis: {len(OPERATIONS)} operations, {RUN['requests']} requests"
                f" ({RUN['2xx']} 2xx, {RUN['3xx']} 3xx, {RUN['4xx']} 4xx, {RUN['5xx']} 5xx)"
            )
        terminalreporter.write_line(
            f"JSON:API 1.0 schema: {sum(VALIDATED.values())} response documents validated"
            f" ({VALIDATED['data']} data, {VALIDATED['errors']} errors)"
        )


@pytest.fixture(scope="module", autouse=True)
def report(pytestconfig: pytest.Config) -> None:
    if not pytestconfig.pluginmanager.has_plugin("timebatch-counts"):
        pytestconfig.pluginmanager.register(Report(), "timebatch-counts")


@dataclasses.dataclass(frozen=True)
class Fuzzed:
    engine: Engine
    job_ids: list[str]
    webhooks: SeededWebhooks

    def known(self, path: str, name: str) -> list[str]:
        """The existing resources a path parameter is aimed at."""
        if name == "job_id":
            # A stream of a job that never ends stays open for its whole lifetime.
            return ended(self.job_ids) if path == EVENTS_PATH else self.job_ids
        collection = path.split("/")[3]
        if collection == "webhooks":
            return [*self.webhooks.kept, *self.webhooks.doomed]
        return KNOWN_IDS.get(collection, [])


@pytest.fixture(scope="module")
def fuzz_db(e2e_engine: Engine) -> Fuzzed:
    # Webhooks and their deliveries go with the organizations (foreign keys, CASCADE).
    with Session(e2e_engine) as session:
        session.execute(text(f"TRUNCATE {TABLES} RESTART IDENTITY CASCADE"))
        load_demo(session)
        session.commit()
    job_ids = seed_jobs(e2e_engine)
    return Fuzzed(e2e_engine, job_ids, seed_webhooks(e2e_engine, job_ids))


@pytest.fixture(scope="module")
def fuzzed_app(e2e_settings: Settings, fuzz_db: Fuzzed) -> Iterator[Flask]:
    queue = f"{e2e_settings.queue}-schemathesis"
    # No worker reads this queue: its jobs pile up, and the run is not about their limit.
    fuzzed = dataclasses.replace(e2e_settings, queue=queue, org_max_unfinished=10**6)
    app = create_app(fuzzed, sessions=make_session_factory(fuzz_db.engine))
    yield app
    purge(e2e_settings, queue)


@pytest.fixture(scope="module")
def admin(fuzz_db: Fuzzed) -> dict[str, str]:
    with Session(fuzz_db.engine) as session:
        headers = token_for(session, ADMIN.person_id)
        session.commit()
    return headers


def aim(case: Any, fuzzed: Fuzzed) -> None:
    """Point a generated path id at an existing resource, for most values of it. The events
    route's job id is an ended job's or none's: a generated one names no job."""
    for name, value in (case.path_parameters or {}).items():
        known = fuzzed.known(case.path, name)
        slot = zlib.crc32(str(value).encode()) % (len(known) + 1)
        if slot < len(known):
            case.path_parameters[name] = known[slot]
    # A PATCH names its path's id in the body, as JSON:API requires; else it is a 409.
    data = case.body.get("data") if isinstance(case.body, dict) else None
    path_id = (case.path_parameters or {}).get("id")
    patched = case.method.upper() == "PATCH" and path_id is not None
    if patched and isinstance(data, dict) and isinstance(data.get("id"), str):
        data["id"] = str(path_id)


# The document is plain data, built without the app; test_openapi checks the app serves it.
schema = schemathesis.openapi.from_dict(
    document(),
    config=schemathesis.Config.from_dict(
        {
            "generation": {
                "mode": "all",
                "max-examples": MAX_EXAMPLES,
                "deterministic": True,
                "database": "none",
            },
            "phases": {"stateful": {"enabled": False}},
        }
    ),
)


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_the_app_keeps_to_its_document(
    case: Any, fuzzed_app: Flask, admin: dict[str, str], fuzz_db: Fuzzed
) -> None:
    aim(case, fuzz_db)
    # Waiting for jobs no worker runs would only burn the time budget.
    headers = {k: v for k, v in (case.headers or {}).items() if k.lower() != "prefer"}
    # Stored results are served gzipped to clients that take gzip; the WSGI transport would
    # hand the checks the compressed bytes.
    case.headers = headers | admin | {"Accept-Encoding": "identity"}
    response = case.call(app=fuzzed_app)
    case.validate_response(response, checks=CHECKS)
    OPERATIONS.add(case.operation.label)
    RUN["requests"] += 1
    RUN[f"{response.status_code // 100}xx"] += 1
    content_types = {k.lower(): v for k, v in response.headers.items()}.get("content-type", [])
    streamed = any(str(value).startswith("text/event-stream") for value in content_types)
    if (
        case.path not in NOT_JSONAPI
        and response.content
        and response.status_code != 303
        and not streamed
    ):
        check_document(json.loads(response.content), response.status_code)


def test_the_seeded_jobs_answer_as_documented(
    fuzzed_app: Flask, admin: dict[str, str], fuzz_db: Fuzzed
) -> None:
    """The jobs the requests above were aimed at hold every kind of stored result."""
    client = fuzzed_app.test_client()
    statuses = [
        client.get(f"/api/v2/jobs/{job_id}/result", headers=admin).status_code
        for job_id in fuzz_db.job_ids
    ]
    assert statuses == SEEDED_RESULTS
