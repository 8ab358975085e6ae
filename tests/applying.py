"""Calling a domain function the way the job runner does, for tests that look at its rows."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy.orm import Session

from shared.domain.context import BatchContext, Progress
from shared.jobs.runner import Apply


def applied(
    apply: Apply,
    session: Session,
    ctx: BatchContext,
    items: Sequence[Mapping[str, Any]],
    progress: Progress,
) -> list[dict[str, Any]]:
    """Apply `items` as one chunk; the rows it wrote, in batch order."""
    rows: list[dict[str, Any]] = []
    apply(session, ctx, [items], progress, lambda written: rows.extend(map(dict, written)))
    return rows
