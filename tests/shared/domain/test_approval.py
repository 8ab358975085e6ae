from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from shared.domain.approval import approve_entries, unapprove_entries
from shared.domain.context import load_context
from shared.domain.documents import CHUNK
from shared.domain.entries import create_entries, delete_entries, update_entries
from shared.jsonapi.errors import ApiError
from shared.store.models import ApprovalStatus, TimeEntry
from tests.applying import applied
from tests.factories import Factories

progress: Any = lambda n: None  # noqa: E731


def statuses(session: Session, entry_id: int) -> dict[int, str]:
    rows = session.execute(
        select(ApprovalStatus.approver_id, ApprovalStatus.status).where(
            ApprovalStatus.time_entry_id == entry_id
        )
    )
    return {approver: status for approver, status in rows}


def workflow_entry(session: Session) -> int:
    """An entry of Will (manager Wes 7792) on service 1223 (approver Wanda 7793)."""
    row = applied(
        create_entries,
        session,
        load_context(session, 2111, 7791),
        [{"date": "2026-03-02", "time": 60, "person_id": 7791, "service_id": 1223}],
        progress,
    )[0]
    return int(row["id"])


def test_approve_without_the_workflow(session: Session, factories: Factories) -> None:
    entry = factories.entry()
    ctx = load_context(session, 2110, 7782)
    row = applied(approve_entries, session, ctx, [{"id": entry.id}], progress)[0]
    assert row["approved"] is True
    assert row["approved_at"] == ctx.now.replace(microsecond=0)
    assert ctx.renderer().resource(row)["attributes"]["approved_at"].endswith(".000+01:00")
    session.refresh(entry)
    assert entry.approver_id == 7782
    # approving again is a no-op for it
    again = applied(
        approve_entries, session, load_context(session, 2110, 7783), [{"id": entry.id}], progress
    )
    assert again[0]["approved_at"] == row["approved_at"]
    session.refresh(entry)
    assert entry.approver_id == 7782


def test_approve_without_permission_is_403_and_changes_nothing(
    session: Session, factories: Factories
) -> None:
    entry = factories.entry()
    with pytest.raises(ApiError) as info:
        applied(
            approve_entries,
            session,
            load_context(session, 2110, 7781),
            [{"id": entry.id}],
            progress,
        )
    assert info.value.status == 403
    session.refresh(entry)
    assert not entry.approved


def test_approve_of_another_organizations_entry_is_404(
    session: Session, factories: Factories
) -> None:
    foreign = factories.entry(organization_id=2112, person_id=8881, service_id=2213)
    with pytest.raises(ApiError) as info:
        applied(
            approve_entries,
            session,
            load_context(session, 2110, 7783),
            [{"id": foreign.id}],
            progress,
        )
    assert info.value.status == 404
    assert info.value.problems[0].pointer == "/data/0/id"


def test_created_entries_get_one_status_per_required_approver(session: Session) -> None:
    entry_id = workflow_entry(session)
    assert statuses(session, entry_id) == {7792: "pending", 7793: "pending"}


def test_two_approvers_approve_in_turn(session: Session) -> None:
    entry_id = workflow_entry(session)
    first = applied(
        approve_entries, session, load_context(session, 2111, 7792), [{"id": entry_id}], progress
    )
    assert first[0]["approved"] is False
    assert statuses(session, entry_id) == {7792: "approved", 7793: "pending"}
    second = applied(
        approve_entries, session, load_context(session, 2111, 7793), [{"id": entry_id}], progress
    )
    assert second[0]["approved"] is True
    assert session.get_one(TimeEntry, entry_id).approver_id == 7793


def test_approvers_approve_in_turn_a_batch_of_more_than_one_chunk(session: Session) -> None:
    will = {"date": "2026-03-02", "time": 60, "person_id": 7791, "service_id": 1223}
    created = applied(
        create_entries, session, load_context(session, 2111, 7791), [will] * (CHUNK + 1), progress
    )
    named = [{"id": row["id"]} for row in created[::-1]]
    ids = [row["id"] for row in created]
    every = select(ApprovalStatus.approver_id, ApprovalStatus.status, func.count()).where(
        ApprovalStatus.time_entry_id.in_(ids)
    )
    every = every.group_by(ApprovalStatus.approver_id, ApprovalStatus.status)
    approved = select(TimeEntry.approved, TimeEntry.approver_id, func.count())
    approved = approved.where(TimeEntry.id.in_(ids)).group_by(
        TimeEntry.approved, TimeEntry.approver_id
    )

    first = applied(approve_entries, session, load_context(session, 2111, 7792), named, progress)
    assert {row["approved"] for row in first} == {False}
    assert {tuple(row) for row in session.execute(every)} == {
        (7792, "approved", CHUNK + 1),
        (7793, "pending", CHUNK + 1),
    }
    second = applied(approve_entries, session, load_context(session, 2111, 7793), named, progress)
    assert [row["id"] for row in second] == [item["id"] for item in named]
    assert {row["approved"] for row in second} == {True}
    assert {tuple(row) for row in session.execute(every)} == {
        (7792, "approved", CHUNK + 1),
        (7793, "approved", CHUNK + 1),
    }
    assert {tuple(row) for row in session.execute(approved)} == {(True, 7793, CHUNK + 1)}


def test_caller_who_is_no_approver_is_403(session: Session, factories: Factories) -> None:
    approver = factories.person(organization_id=2111, can_approve=True)
    entry_id = workflow_entry(session)
    with pytest.raises(ApiError) as info:
        applied(
            approve_entries,
            session,
            load_context(session, 2111, approver.id),
            [{"id": entry_id}],
            progress,
        )
    assert info.value.status == 403
    assert info.value.problems[0].pointer == "/data/0/id"


def test_for_all_approvers(session: Session) -> None:
    entry_id = workflow_entry(session)
    without = load_context(session, 2111, 7792, {"for_all_approvers": True})
    with pytest.raises(ApiError) as info:
        applied(approve_entries, session, without, [{"id": entry_id}], progress)
    assert info.value.status == 403
    assert statuses(session, entry_id) == {7792: "pending", 7793: "pending"}
    with_permission = load_context(session, 2111, 7793, {"for_all_approvers": True})
    row = applied(approve_entries, session, with_permission, [{"id": entry_id}], progress)[0]
    assert row["approved"] is True
    assert statuses(session, entry_id) == {7792: "approved", 7793: "approved"}


def test_unapprove_recreates_pending_statuses(session: Session) -> None:
    entry_id = workflow_entry(session)
    admin = load_context(session, 2111, 7793, {"for_all_approvers": True})
    applied(approve_entries, session, admin, [{"id": entry_id}], progress)
    row = applied(unapprove_entries, session, admin, [{"id": entry_id}], progress)[0]
    assert (row["approved"], row["approved_at"]) == (False, None)
    assert statuses(session, entry_id) == {7792: "pending", 7793: "pending"}


def test_unapprove_makes_each_status_anew_in_the_order_they_were_made(session: Session) -> None:
    first, second = workflow_entry(session), workflow_entry(session)
    admin = load_context(session, 2111, 7793, {"for_all_approvers": True})
    applied(approve_entries, session, admin, [{"id": first}, {"id": second}], progress)
    kept = (ApprovalStatus.time_entry_id, ApprovalStatus.approver_id)
    made = select(ApprovalStatus.id, *kept, ApprovalStatus.status, ApprovalStatus.approved_at)
    made = made.where(ApprovalStatus.time_entry_id.in_([first, second])).order_by(ApprovalStatus.id)
    before = session.execute(made).all()
    assert {row.status for row in before} == {"approved"}

    # Named in the other order: the statuses keep the order they were made in.
    applied(unapprove_entries, session, admin, [{"id": second}, {"id": first}], progress)

    after = session.execute(made).all()
    assert [(row.time_entry_id, row.approver_id) for row in after] == [
        (row.time_entry_id, row.approver_id) for row in before
    ]
    assert min(row.id for row in after) > max(row.id for row in before)
    assert {(row.status, row.approved_at) for row in after} == {("pending", None)}


def test_unapprove_of_invoiced_entry_is_409(session: Session, factories: Factories) -> None:
    entry = factories.entry(approved=True, invoiced=True)
    with pytest.raises(ApiError) as info:
        applied(
            unapprove_entries,
            session,
            load_context(session, 2110, 7783),
            [{"id": entry.id}],
            progress,
        )
    assert info.value.status == 409


def test_update_after_unapprove_succeeds(session: Session, factories: Factories) -> None:
    entry = factories.entry(approved=True)
    member = load_context(session, 2110, 7781)
    with pytest.raises(ApiError):
        applied(update_entries, session, member, [{"id": entry.id, "note": "x"}], progress)
    applied(
        unapprove_entries, session, load_context(session, 2110, 7783), [{"id": entry.id}], progress
    )
    row = applied(update_entries, session, member, [{"id": entry.id, "note": "x"}], progress)[0]
    assert row["note"] == "x"


def test_entry_without_any_approver_falls_back_to_approve_all_people(
    session: Session, factories: Factories
) -> None:
    loner = factories.person(organization_id=2111)
    service = factories.service(organization_id=2111)
    row = applied(
        create_entries,
        session,
        load_context(session, 2111, loner.id),
        [{"date": "2026-03-02", "time": 60, "person_id": loner.id, "service_id": service.id}],
        progress,
    )[0]
    assert statuses(session, row["id"]) == {7793: "pending"}


def test_delete_after_unapprove_succeeds(session: Session, factories: Factories) -> None:
    entry = factories.entry(approved=True)
    member = load_context(session, 2110, 7781)
    with pytest.raises(ApiError):
        applied(delete_entries, session, member, [{"id": entry.id}], progress)
    applied(
        unapprove_entries, session, load_context(session, 2110, 7783), [{"id": entry.id}], progress
    )
    applied(delete_entries, session, member, [{"id": entry.id}], progress)
    assert session.get(TimeEntry, entry.id) is None


def stored_rows(session: Session, ids: list[int]) -> dict[int, dict[str, Any]]:
    from shared.store.columns import READ_COLUMNS

    rows = session.execute(
        select(*(getattr(TimeEntry, name) for name in READ_COLUMNS)).where(TimeEntry.id.in_(ids))
    )
    return {row.id: dict(row._mapping) for row in rows}


def test_approve_and_unapprove_return_the_stored_rows_in_batch_order(
    session: Session, factories: Factories
) -> None:
    """They render from the locked rows; what they return must be what was stored."""
    from shared.store.columns import READ_COLUMNS

    done = factories.entry(approved=True)
    fresh = [factories.entry(), factories.entry(note="second")]
    batch = [{"id": fresh[1].id}, {"id": done.id}, {"id": fresh[0].id}]
    ids = [item["id"] for item in batch]
    admin = load_context(session, 2110, 7783)
    for apply in (approve_entries, unapprove_entries):
        rows = applied(apply, session, admin, batch, progress)
        assert [row["id"] for row in rows] == ids
        stored = stored_rows(session, ids)
        assert [{name: row[name] for name in READ_COLUMNS} for row in rows] == [
            stored[i] for i in ids
        ]
    assert all(row["approved"] is False for row in stored.values())


def test_a_workflow_approve_returns_partly_approved_entries_as_stored(session: Session) -> None:
    from shared.store.columns import READ_COLUMNS

    entry_id = workflow_entry(session)
    rows = applied(
        approve_entries, session, load_context(session, 2111, 7792), [{"id": entry_id}], progress
    )
    assert rows[0]["approved"] is False  # Wanda has not approved yet
    assert {name: rows[0][name] for name in READ_COLUMNS} == stored_rows(session, [entry_id])[
        entry_id
    ]
