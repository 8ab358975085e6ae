"""Loaded by the `st run` of test_openapi_outside.py (SCHEMATHESIS_HOOKS), not by pytest."""

from __future__ import annotations

from typing import Any

import schemathesis
from schemathesis.specs.openapi.checks import positive_data_acceptance

# A valid request may be refused for what no schema can foresee, besides the statuses
# schemathesis already allows (404 and 409 among them): by these errors' titles, a key sent
# before with another body (the Idempotency-Key draft's 422) and an entry named twice as "1",
# 1 or "01" (which JSON Schema's uniqueItems tells apart); and a result retention deleted.
DUPLICATES = frozenset({"Idempotency key reused", "Duplicate id"})
GONE = 410


@schemathesis.check
def positive_data_acceptance_but_state(ctx: Any, response: Any, case: Any) -> bool | None:
    """positive_data_acceptance, but for the refusals above."""
    if response.status_code == GONE:
        return None
    if response.status_code == 422:
        errors = (response.json() or {}).get("errors", [])
        if errors and {error.get("title") for error in errors} <= DUPLICATES:
            return None
    result: bool | None = positive_data_acceptance(ctx, response, case)
    return result
