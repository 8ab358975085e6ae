"""Approving and unapproving time entries, with or without the approval workflow.

Without the organization's workflow flag an approver approves an entry outright. With it,
each entry carries one approval status per required approver (the person's manager and the
service's approver) and is approved once every status is.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import Row, delete, insert, select, text
from sqlalchemy.orm import Session

from shared.domain.context import (
    IDS,
    LOCKED_NAMES,
    BatchContext,
    Progress,
    Written,
    lock_entries,
)
from shared.domain.documents import Item, whole
from shared.domain.problems import not_found, pointer
from shared.jsonapi.errors import ApiError, Problem
from shared.store.models import ApprovalStatus, Person, Service

_APPROVE_SQL = text(
    "UPDATE time_entries AS t SET approved = true, approved_at = :approved_at,"
    " approver_id = :approver_id, updated_at = :now, updater_id = :approver_id,"
    " last_actor_id = :approver_id WHERE t.id = ANY(:ids)"
).bindparams(IDS)
_UNAPPROVE_SQL = text(
    "UPDATE time_entries AS t SET approved = false, approved_at = NULL, approver_id = NULL,"
    " updated_at = :now, updater_id = :actor_id, last_actor_id = :actor_id"
    " WHERE t.id = ANY(:ids)"
).bindparams(IDS)


def required_approvers(
    person: Person | None, service: Service | None, fallback: Sequence[int]
) -> list[int]:
    """The people who must approve an entry: manager and service approver, else approve-all."""
    approvers: list[int] = []
    for candidate in (
        person.manager_id if person else None,
        service.approver_id if service else None,
    ):
        if candidate is not None and candidate not in approvers:
            approvers.append(candidate)
    return approvers or list(fallback)


def approve_all_people(session: Session, ctx: BatchContext) -> list[int]:
    return list(
        session.scalars(
            select(Person.id)
            .where(Person.organization_id == ctx.organization_id, Person.can_approve_all)
            .order_by(Person.id)
        )
    )


def add_pending_statuses(session: Session, approvers_by_entry: Mapping[int, Iterable[int]]) -> None:
    rows = [
        {"time_entry_id": entry_id, "approver_id": approver_id, "status": "pending"}
        for entry_id, approvers in approvers_by_entry.items()
        for approver_id in approvers
    ]
    if rows:
        session.execute(insert(ApprovalStatus), rows)


def _written(
    items: Sequence[Item],
    entries: Mapping[int, Row[Any]],
    changed: Collection[int],
    values: Mapping[str, Any],
) -> list[dict[str, Any]]:
    """The entries as stored now, in batch order: the locked rows, `changed` ones with `values`.

    The rows are locked, and since then this transaction wrote them only `values`: render
    from memory instead of reading 10,000 rows back.
    """
    changed = set(changed)
    stored: dict[int, dict[str, Any]] = {}
    for entry_id, row in entries.items():
        stored[entry_id] = dict(zip(LOCKED_NAMES, row, strict=True))
        if entry_id in changed:
            stored[entry_id].update(values)
    return [stored[item["id"]] for item in items]


def _locked(
    session: Session, ctx: BatchContext, items: Sequence[Item], problems: list[Problem]
) -> dict[int, Any]:
    entries = lock_entries(session, ctx, [item["id"] for item in items])
    for index, item in enumerate(items):
        if item["id"] not in entries:
            problems.append(not_found(index, "id", "time entry", item["id"]))
    return entries


def approve_entries(
    session: Session,
    ctx: BatchContext,
    chunks: Iterable[Sequence[Item]],
    progress: Progress,
    written: Written,
) -> None:
    caller = ctx.caller
    for_all_approvers = bool(ctx.options.get("for_all_approvers", False))
    if for_all_approvers and not caller.can_approve_all:
        raise ApiError.one(
            403,
            "Forbidden",
            "for_all_approvers needs the approve-all permission",
            pointer="/for_all_approvers",
        )
    if not (caller.can_approve or caller.can_approve_all):
        raise ApiError.one(403, "Forbidden", "you do not have the permission to approve time")
    # Whole: its entries are locked in one pass, in id order (see lock_entries).
    items = whole(chunks)
    problems: list[Problem] = []
    entries = _locked(session, ctx, items, problems)
    pending = [e for e in entries.values() if not e.approved]
    to_approve: list[int] = []
    if not ctx.organization.approval_workflow:
        to_approve = [e.id for e in pending]
    else:
        statuses: dict[int, dict[int, str]] = defaultdict(dict)
        for status in session.scalars(
            select(ApprovalStatus).where(ApprovalStatus.time_entry_id.in_([e.id for e in pending]))
        ):
            statuses[status.time_entry_id][status.approver_id] = status.status
        marks: list[int] = []
        for index, item in enumerate(items):
            entry = entries.get(item["id"])
            if entry is None or entry.approved:
                continue
            mine = statuses[entry.id]
            if for_all_approvers:
                marks.append(entry.id)
                mine = dict.fromkeys(mine, "approved")
            elif caller.id in mine:
                marks.append(entry.id)
                mine[caller.id] = "approved"
            else:
                problems.append(
                    Problem(
                        403,
                        "Forbidden",
                        f"you are not an approver of time entry {entry.id}",
                        pointer=pointer(index, "id"),
                    )
                )
                continue
            if all(s == "approved" for s in mine.values()):
                to_approve.append(entry.id)
        if not problems and marks:
            mark_filter = "" if for_all_approvers else " AND approver_id = :caller"
            session.execute(
                text(
                    "UPDATE approval_statuses SET status = 'approved', approved_at = :now"
                    " WHERE time_entry_id = ANY(:ids) AND status = 'pending'" + mark_filter
                ),
                {"ids": marks, "now": ctx.now, "caller": caller.id},
            )
    if problems:
        raise ApiError(problems)
    approved = {
        "approved": True,
        "approved_at": ctx.now.replace(microsecond=0),
        "approver_id": caller.id,
        "updated_at": ctx.now,
        "updater_id": caller.id,
        "last_actor_id": caller.id,
    }
    if to_approve:
        session.execute(
            _APPROVE_SQL,
            {
                "ids": to_approve,
                "approved_at": approved["approved_at"],
                "approver_id": caller.id,
                "now": ctx.now,
            },
        )
    progress(len(items))
    written(_written(items, entries, to_approve, approved))


def unapprove_entries(
    session: Session,
    ctx: BatchContext,
    chunks: Iterable[Sequence[Item]],
    progress: Progress,
    written: Written,
) -> None:
    caller = ctx.caller
    if not (caller.can_approve or caller.can_approve_all):
        raise ApiError.one(403, "Forbidden", "you do not have the permission to unapprove time")
    items = whole(chunks)
    problems: list[Problem] = []
    entries = _locked(session, ctx, items, problems)
    for index, item in enumerate(items):
        entry = entries.get(item["id"])
        if entry is not None and entry.invoiced:
            problems.append(
                Problem(
                    409,
                    "Entry locked",
                    f"time entry {entry.id} is invoiced and cannot be unapproved",
                    pointer=pointer(index, "id"),
                )
            )
    if problems:
        raise ApiError(problems)
    ids = list(entries)
    session.execute(_UNAPPROVE_SQL, {"ids": ids, "now": ctx.now, "actor_id": caller.id})
    if ctx.organization.approval_workflow:
        # Statuses are recreated as pending: every approver has to approve again.
        approvers: dict[int, list[int]] = defaultdict(list)
        for entry_id, approver_id in session.execute(
            select(ApprovalStatus.time_entry_id, ApprovalStatus.approver_id)
            .where(ApprovalStatus.time_entry_id.in_(ids))
            .order_by(ApprovalStatus.id)
        ):
            approvers[entry_id].append(approver_id)
        session.execute(delete(ApprovalStatus).where(ApprovalStatus.time_entry_id.in_(ids)))
        add_pending_statuses(session, approvers)
    progress(len(items))
    unapproved = {
        "approved": False,
        "approved_at": None,
        "approver_id": None,
        "updated_at": ctx.now,
        "updater_id": caller.id,
        "last_actor_id": caller.id,
    }
    written(_written(items, entries, ids, unapproved))
