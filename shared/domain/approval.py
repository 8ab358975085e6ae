"""Approving and unapproving time entries, with or without the approval workflow.

Without the organization's workflow flag an approver approves an entry outright. With it,
each entry carries one approval status per required approver (the person's manager and the
service's approver) and is approved once every status is.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import any_, insert, select, text
from sqlalchemy.orm import Session

from shared.domain.context import (
    IDS,
    BatchContext,
    Progress,
    Written,
    add_while_writing,
    locked_chunks,
)
from shared.domain.documents import Batch
from shared.domain.problems import not_found, pointer
from shared.jsonapi.errors import ApiError, Problem
from shared.store.models import ApprovalStatus, Person, Service

# A chunk's writes, in psycopg's SQL: sent in a pipeline while the chunk renders
# (add_while_writing).
_APPROVE_SQL = (
    "UPDATE time_entries AS t SET approved = true, approved_at = %(approved_at)s,"
    " approver_id = %(approver_id)s, updated_at = %(now)s, updater_id = %(approver_id)s,"
    " last_actor_id = %(approver_id)s WHERE t.id = ANY(%(ids)s)"
)
_UNAPPROVE_SQL = (
    "UPDATE time_entries AS t SET approved = false, approved_at = NULL, approver_id = NULL,"
    " updated_at = %(now)s, updater_id = %(actor_id)s, last_actor_id = %(actor_id)s"
    " WHERE t.id = ANY(%(ids)s)"
)


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
    ids: Sequence[int],
    entries: Mapping[int, dict[str, Any]],
    changed: Collection[int],
    values: Mapping[str, Any],
) -> list[dict[str, Any]]:
    """A chunk's entries as stored once the batch is written, in batch order: the locked
    rows, `changed` ones with `values`.

    The rows are locked, and this transaction writes them only `values`: render from memory
    instead of reading 10,000 rows back.
    """
    for entry_id in changed:
        entries[entry_id].update(values)
    return [entries[entry_id] for entry_id in ids]


def _not_found(
    ids: Sequence[int], offset: int, entries: Mapping[int, Any], problems: list[Problem]
) -> None:
    for index, entry_id in enumerate(ids, offset):
        if entry_id not in entries:
            problems.append(not_found(index, "id", "time entry", entry_id))


_STATUSES = select(
    ApprovalStatus.time_entry_id, ApprovalStatus.approver_id, ApprovalStatus.status
).where(ApprovalStatus.time_entry_id == any_(IDS))
_MARK_SQL = (
    "UPDATE approval_statuses SET status = 'approved', approved_at = %(now)s"
    " WHERE time_entry_id = ANY(%(ids)s) AND status = 'pending'"
)
_MARK_MINE_SQL = (
    "UPDATE approval_statuses SET status = 'approved', approved_at = %(now)s"
    " WHERE time_entry_id = ANY(%(ids)s) AND status = 'pending' AND approver_id = %(caller)s"
)
# Every approver has to approve again: their statuses are recreated as pending, in the order
# they were made.
_RENEW_SQL = text(
    "WITH old AS (DELETE FROM approval_statuses WHERE time_entry_id = ANY(:ids)"
    " RETURNING id, time_entry_id, approver_id)"
    " INSERT INTO approval_statuses (time_entry_id, approver_id, status)"
    " SELECT time_entry_id, approver_id, 'pending' FROM old"
    " ORDER BY min(id) OVER (PARTITION BY time_entry_id), id"
).bindparams(IDS)


def approve_entries(
    session: Session,
    ctx: BatchContext,
    batch: Batch,
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
    workflow = ctx.organization.approval_workflow
    approved = {
        "approved": True,
        "approved_at": ctx.now.replace(microsecond=0),
        "approver_id": caller.id,
        "updated_at": ctx.now,
        "updater_id": caller.id,
        "last_actor_id": caller.id,
    }
    problems: list[Problem] = []
    for offset, ids, entries in locked_chunks(session, ctx, batch.ids()):
        marks: list[int] = []
        _not_found(ids, offset, entries, problems)
        pending = [entry_id for entry_id, entry in entries.items() if not entry["approved"]]
        if not workflow:
            chunk_approved = pending
        else:
            chunk_approved = []
            statuses: dict[int, dict[int, str]] = defaultdict(dict)
            for entry_id, approver_id, status in session.execute(_STATUSES, {"ids": pending}):
                statuses[entry_id][approver_id] = status
            for index, entry_id in enumerate(ids, offset):
                entry = entries.get(entry_id)
                if entry is None or entry["approved"]:
                    continue
                mine = statuses[entry_id]
                if for_all_approvers:
                    marks.append(entry_id)
                    mine = dict.fromkeys(mine, "approved")
                elif caller.id in mine:
                    marks.append(entry_id)
                    mine[caller.id] = "approved"
                else:
                    problems.append(
                        Problem(
                            403,
                            "Forbidden",
                            f"you are not an approver of time entry {entry_id}",
                            pointer=pointer(index, "id"),
                        )
                    )
                    continue
                if all(s == "approved" for s in mine.values()):
                    chunk_approved.append(entry_id)
        if problems:
            continue
        writes: list[tuple[str, Mapping[str, Any]]] = []
        if marks:
            mark = _MARK_SQL if for_all_approvers else _MARK_MINE_SQL
            writes.append((mark, {"ids": marks, "now": ctx.now, "caller": caller.id}))
        if chunk_approved:
            approving = {"ids": chunk_approved, "approved_at": approved["approved_at"]}
            writes.append((_APPROVE_SQL, approving | {"approver_id": caller.id, "now": ctx.now}))
        rows = _written(ids, entries, set(chunk_approved), approved)
        add_while_writing(session, written, rows, writes)
        progress(offset + len(ids))
    if problems:
        raise ApiError(problems)


def unapprove_entries(
    session: Session,
    ctx: BatchContext,
    batch: Batch,
    progress: Progress,
    written: Written,
) -> None:
    caller = ctx.caller
    if not (caller.can_approve or caller.can_approve_all):
        raise ApiError.one(403, "Forbidden", "you do not have the permission to unapprove time")
    unapproved = {
        "approved": False,
        "approved_at": None,
        "approver_id": None,
        "updated_at": ctx.now,
        "updater_id": caller.id,
        "last_actor_id": caller.id,
    }
    problems: list[Problem] = []
    workflow = ctx.organization.approval_workflow
    # With the workflow, whose statuses are renewed at the end, in the order they were made.
    renewing: list[int] = []
    for offset, ids, entries in locked_chunks(session, ctx, batch.ids()):
        _not_found(ids, offset, entries, problems)
        for index, entry_id in enumerate(ids, offset):
            entry = entries.get(entry_id)
            if entry is not None and entry["invoiced"]:
                problems.append(
                    Problem(
                        409,
                        "Entry locked",
                        f"time entry {entry_id} is invoiced and cannot be unapproved",
                        pointer=pointer(index, "id"),
                    )
                )
        if problems:
            continue
        unapproving = list(entries)
        if workflow:
            renewing.extend(unapproving)
        writes = [(_UNAPPROVE_SQL, {"ids": unapproving, "now": ctx.now, "actor_id": caller.id})]
        add_while_writing(session, written, _written(ids, entries, entries, unapproved), writes)
        progress(offset + len(ids))
    if problems:
        raise ApiError(problems)
    if workflow:
        session.execute(_RENEW_SQL, {"ids": renewing})
