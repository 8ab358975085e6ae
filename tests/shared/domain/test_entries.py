"""Domain functions called directly, inside the test's rolled-back transaction."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import psycopg
import pytest
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from shared.domain import entries
from shared.domain.context import load_context, read_locked
from shared.domain.entries import create_entries, delete_entries, update_entries
from shared.jsonapi.errors import ApiError
from shared.store.models import Organization, TimeEntry
from tests.applying import applied
from tests.factories import Factories

progress: Any = lambda n: None  # noqa: E731


def item(**values: Any) -> dict[str, Any]:
    return {"date": "2026-03-02", "time": 120, "person_id": 7781, "service_id": 1213} | values


def count(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(TimeEntry)) or 0


def test_create_computes_the_spec_costs(session: Session) -> None:
    ctx = load_context(session, 2110, 7781)
    rows = applied(
        create_entries, session, ctx, [item(task_id=302, note="a"), item(service_id=1214)], progress
    )
    first, second = rows
    assert (first["cost"], first["cost_default"], first["cost_normalized"]) == (4000, 5000, 4000)
    assert first["billable_time"] == 120
    assert second["billable_time"] == 0  # service 1214 is not billable
    assert first["track_method_id"] == 1
    assert first["created_at"] == first["updated_at"] == first["last_activity_at"] == ctx.now
    rendered = ctx.renderer().resource(first)
    assert rendered["attributes"]["created_at"].endswith("+01:00") or rendered["attributes"][
        "created_at"
    ].endswith("+02:00")
    assert len(rendered["attributes"]["created_at"].split(".")[1]) == len("000+01:00")


def test_create_uses_organization_overheads(session: Session, factories: Factories) -> None:
    org = session.get_one(Organization, 2110)
    org.internal_overhead_rate = 1000
    session.flush()
    row = applied(
        create_entries, session, load_context(session, 2110, 7781), [item(time=60)], progress
    )[0]
    assert row["internal_overhead_cost_default"] == 1000
    assert row["cost_default"] == 2500 + 1000


def test_create_reports_every_problem_and_writes_nothing(
    session: Session, factories: Factories
) -> None:
    other_service = factories.service(organization_id=2112)
    before = count(session)
    ctx = load_context(session, 2110, 7781)
    with pytest.raises(ApiError) as info:
        applied(
            create_entries,
            session,
            ctx,
            [
                item(),
                item(service_id=other_service.id),
                item(task_id=303),  # task of service 1214
                item(person_id=7782),
                item(person_id=424242),
            ],
            progress,
        )
    found = sorted((p.status, p.pointer) for p in info.value.problems)
    assert found == [
        (403, "/data/3/relationships/person"),
        (404, "/data/1/relationships/service"),
        (404, "/data/4/relationships/person"),
        (422, "/data/2/relationships/task"),
    ]
    assert info.value.status == 400
    assert count(session) == before


def test_manager_may_create_for_others(session: Session) -> None:
    rows = applied(create_entries, session, load_context(session, 2110, 7782), [item()], progress)
    assert rows[0]["cost"] == 4000


def test_update_merges_and_reprices_only_when_needed(
    session: Session, factories: Factories
) -> None:
    entry = factories.entry(time=60, cost=1234)
    ctx = load_context(session, 2110, 7781)
    noted = applied(
        update_entries, session, ctx, [{"id": entry.id, "note": "only a note"}], progress
    )[0]
    assert (noted["note"], noted["cost"], noted["time"]) == ("only a note", 1234, 60)
    timed = applied(update_entries, session, ctx, [{"id": entry.id, "time": 30}], progress)[0]
    assert (timed["time"], timed["cost"], timed["cost_default"]) == (30, 1000, 1250)
    untasked = applied(update_entries, session, ctx, [{"id": entry.id, "task_id": None}], progress)[
        0
    ]
    assert untasked["note"] == "only a note"


def test_updates_are_written_a_step_at_a_time_each_entry_once_and_handed_on_in_order(
    session: Session, factories: Factories, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(entries._Updates, "ROWS", 2)
    first, second, third = (factories.entry(note=f"was {n}") for n in range(3))
    ids = [first.id, second.id, third.id]
    stored = read_locked(session, set(ids), ids)

    def noted(entry_id: int, note: str) -> dict[str, Any]:
        return stored[entry_id] | {"note": note}

    def versions() -> dict[int, str]:
        # An UPDATE always makes a new version of the row, at a new ctid.
        found = session.execute(
            text("SELECT id, ctid::text FROM time_entries WHERE id = ANY(:ids)"), {"ids": ids}
        )
        return {entry_id: ctid for entry_id, ctid in found}

    handed: list[list[str]] = []

    class Notes:
        def relate(self, rows: Sequence[Mapping[str, Any]]) -> None:
            pass

        def add(self, rows: Sequence[Mapping[str, Any]]) -> None:
            handed.append([row["note"] for row in rows])

    updates = entries._Updates(session, Notes())
    updates.add([noted(first.id, "a")])
    assert handed == []
    updates.add([noted(second.id, "b"), noted(third.id, "c")])
    assert handed == [["a", "b", "c"]]
    before = versions()
    updates.add([noted(first.id, "d")])
    updates.flush()
    assert handed == [["a", "b", "c"], ["d"]]
    after = versions()
    # The second step wrote its own entry and left the first step's alone.
    assert after[first.id] != before[first.id]
    assert (after[second.id], after[third.id]) == (before[second.id], before[third.id])
    notes = session.execute(select(TimeEntry.id, TimeEntry.note).where(TimeEntry.id.in_(ids)))
    assert {entry_id: note for entry_id, note in notes} == {
        first.id: "d",
        second.id: "b",
        third.id: "c",
    }


def test_update_refuses_locked_foreign_and_missing_entries(
    session: Session, factories: Factories
) -> None:
    approved = factories.entry(approved=True)
    invoiced = factories.entry(invoiced=True)
    someone_elses = factories.entry(person_id=7782)
    foreign = factories.entry(organization_id=2112, person_id=8881, service_id=2213)
    ctx = load_context(session, 2110, 7781)
    with pytest.raises(ApiError) as info:
        applied(
            update_entries,
            session,
            ctx,
            [
                {"id": approved.id, "note": "x"},
                {"id": invoiced.id, "note": "x"},
                {"id": someone_elses.id, "note": "x"},
                {"id": foreign.id, "note": "x"},
            ],
            progress,
        )
    assert [(p.status, p.pointer) for p in info.value.problems] == [
        (409, "/data/0/id"),
        (409, "/data/1/id"),
        (403, "/data/2/id"),
        (404, "/data/3/id"),
    ]
    session.refresh(approved)
    assert approved.note is None


def test_delete(session: Session, factories: Factories) -> None:
    entries = [factories.entry(), factories.entry()]
    before = count(session)
    applied(
        delete_entries,
        session,
        load_context(session, 2110, 7781),
        [{"id": e.id} for e in entries],
        progress,
    )
    assert count(session) == before - 2


def test_delete_of_approved_entry_is_refused(session: Session, factories: Factories) -> None:
    entry = factories.entry(approved=True)
    with pytest.raises(ApiError) as info:
        applied(
            delete_entries, session, load_context(session, 2110, 7781), [{"id": entry.id}], progress
        )
    assert info.value.status == 409
    assert "unapprove first" in info.value.problems[0].detail


def test_returned_rows_are_the_stored_rows(session: Session, factories: Factories) -> None:
    """Create and update render from memory; what they return must be what was stored."""
    from shared.store.columns import COLUMNS

    ctx = load_context(session, 2110, 7781)
    created = applied(create_entries, session, ctx, [item(note="a"), item(task_id=302)], progress)
    updated = applied(
        update_entries, session, ctx, [{"id": created[0]["id"], "time": 45}], progress
    )
    for row in [created[1], updated[0]]:
        stored = session.execute(
            select(*(getattr(TimeEntry, name) for name in COLUMNS)).where(TimeEntry.id == row["id"])
        ).one()
        assert {name: row[name] for name in COLUMNS} == dict(stored._mapping)


def test_a_delete_chunk_stays_on_the_primary_key_when_statistics_lag_a_big_create(
    session: Session,
) -> None:
    """The plan a prepared chunk delete gets once psycopg prepares it: generic, made with the
    statistics of the table as it was before the create that filled it."""
    session.execute(text("ANALYZE time_entries"))
    ctx = load_context(session, 2110, 7781)
    ids = [row["id"] for row in applied(create_entries, session, ctx, [item()] * 20_000, progress)]
    statement = str(entries._DELETE.compile(dialect=session.get_bind().dialect))
    driver = session.connection().connection.driver_connection
    assert driver is not None
    # A client-side cursor sends its text as it is: the statement's own $1 stays the PREPARE's.
    with psycopg.ClientCursor(driver) as cursor:
        cursor.execute("SET LOCAL plan_cache_mode = force_generic_plan")
        cursor.execute(f"PREPARE delete_chunk(bigint[]) AS {statement.replace('%(ids)s', '$1')}")
        cursor.execute("EXPLAIN EXECUTE delete_chunk(%s)", (ids[:1000],))
        plan = [line for (line,) in cursor.fetchall()]
        cursor.execute("DEALLOCATE delete_chunk")
    assert "pk_time_entries" in "\n".join(plan), plan
