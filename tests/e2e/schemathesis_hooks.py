"""Loaded by the `st run` of test_openapi_outside.py (SCHEMATHESIS_HOOKS), not by pytest."""

from __future__ import annotations

import os
import uuid
from typing import Any

import schemathesis
from schemathesis.specs.openapi.checks import positive_data_acceptance

# A valid request may be refused for what no schema can foresee, besides the statuses
# schemathesis already allows (404 and 409 among them): by these errors' titles, a key sent
# before with another body (the Idempotency-Key draft's 422) and an entry named twice as "1",
# 1 or "01" (which JSON Schema's uniqueItems tells apart); a webhook URL whose host is no
# target (it does not resolve, or to an internal address: DNS, not the schema, says so);
# and a result retention deleted.
STATEFUL = frozenset({"Idempotency key reused", "Duplicate id", "Target refused"})
GONE = 410
# Set by test_openapi_outside.py: the seeded jobs that have ended (tests/e2e/fuzzing.py).
ENDED_JOBS = frozenset(os.environ.get("TIMEBATCH_ENDED_JOBS", "").split(","))
EVENTS_PATH = "/api/v2/jobs/{job_id}/events"


def only_ended(value: object) -> object:
    """A job id for the events route: an ended job's as it is, any other job's (one the run
    submitted, found through a Location, say) replaced by one no job has; a value that is no
    job id at all is left to be refused."""
    if not isinstance(value, str) or value in ENDED_JOBS:
        return value
    try:
        parsed = uuid.UUID(value)
    except ValueError:
        return value
    return str(uuid.uuid5(parsed, "no such job"))


@schemathesis.hook
def before_call(context: Any, case: Any, **kwargs: Any) -> None:
    """The events route only ever sees an ended job (another one's stream stays open for its
    whole lifetime); a PATCH of a webhook names, in its body, the id of its path, as JSON:API
    requires (a 409 otherwise, which no schema can say)."""
    parameters = case.path_parameters or {}
    if case.path == EVENTS_PATH and "job_id" in parameters:
        parameters["job_id"] = only_ended(parameters["job_id"])
    if case.method.upper() == "PATCH" and case.path == "/api/v2/webhooks/{id}":
        data = case.body.get("data") if isinstance(case.body, dict) else None
        if isinstance(data, dict) and isinstance(data.get("id"), str) and "id" in parameters:
            data["id"] = str(parameters["id"])


@schemathesis.check
def positive_data_acceptance_but_state(ctx: Any, response: Any, case: Any) -> bool | None:
    """positive_data_acceptance, but for the refusals above."""
    if response.status_code == GONE:
        return None
    if response.status_code == 422:
        errors = (response.json() or {}).get("errors", [])
        if errors and {error.get("title") for error in errors} <= STATEFUL:
            return None
    result: bool | None = positive_data_acceptance(ctx, response, case)
    return result
