"""COPY in, ids reserved ahead, and scratch tables that go with their transaction."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from psycopg.errors import UndefinedColumn
from sqlalchemy import Engine, func, select, text
from sqlalchemy.orm import Session

from shared.store.models import TimeEntry
from shared.store.pgcopy import PROGRESS_EVERY, copy_rows, next_ids, scratch_table

COLUMNS = (
    "organization_id",
    "person_id",
    "service_id",
    "date",
    "time",
    "note",
    "currency",
    "currency_default",
    "currency_normalized",
)


def entry(n: int, note: str | None = None) -> tuple[Any, ...]:
    return (2110, 7781, 1213, dt.date(2026, 1, 1) + dt.timedelta(days=n), n, note, "EUR", "USD", "EUR")  # fmt: skip


def notes_of(session: Session, ids: list[int]) -> dict[int, str | None]:
    rows = session.execute(select(TimeEntry.id, TimeEntry.note).where(TimeEntry.id.in_(ids)))
    return {row.id: row.note for row in rows}


def test_copy_rows_writes_every_row_on_the_session_s_transaction(session: Session) -> None:
    # Text that COPY's own format must escape: tabs, newlines, backslashes, "\N", and NULL.
    notes = ["tab\there", "line\nbreak\r\n", "back\\slash \\N", None]
    ids = next_ids(session, "time_entries", len(notes))
    rows = [(i, *entry(n, note)) for n, (i, note) in enumerate(zip(ids, notes, strict=True))]
    written = copy_rows(session, "time_entries", ("id", *COLUMNS), rows)
    assert written == 4
    assert notes_of(session, ids) == dict(zip(ids, notes, strict=True))
    stored = session.get_one(TimeEntry, ids[1])
    assert (stored.date, stored.time, stored.currency) == (dt.date(2026, 1, 2), 1, "EUR")
    assert stored.billable_time == 0 and stored.approved is False  # server defaults apply


def test_copy_rows_with_types_writes_binary_the_same_rows(session: Session) -> None:
    notes = ["tab\there", "back\\slash \\N", None]
    ids = next_ids(session, "time_entries", len(notes))
    rows = [(i, *entry(n, note)) for n, (i, note) in enumerate(zip(ids, notes, strict=True))]
    types = ("bigint", "bigint", "bigint", "bigint", "date", "integer", "text", "text", "text", "text")  # fmt: skip
    assert copy_rows(session, "time_entries", ("id", *COLUMNS), rows, types=types) == 3
    assert notes_of(session, ids) == dict(zip(ids, notes, strict=True))
    stored = session.get_one(TimeEntry, ids[2])
    assert (stored.date, stored.time, stored.currency) == (dt.date(2026, 1, 3), 2, "EUR")
    calls: list[int] = []
    scratch_table(session, "scratch_entries", "time_entries", ["updated_at"])
    at = dt.datetime(2026, 1, 1, 12, 30, 0, 123456, tzinfo=dt.UTC)
    many = ((n, at) for n in range(PROGRESS_EVERY + 1))
    copied = copy_rows(session, "scratch_entries", ["id", "updated_at"], many, calls.append, types=("bigint", "timestamptz"))  # fmt: skip
    assert (copied, calls) == (PROGRESS_EVERY + 1, [PROGRESS_EVERY])
    assert session.scalar(text("SELECT updated_at FROM scratch_entries WHERE id = 7")) == at


def test_copy_rows_reports_progress_every_thousand_rows(session: Session) -> None:
    calls: list[int] = []
    count = 2 * PROGRESS_EVERY + 500
    before = session.scalar(select(func.count()).select_from(TimeEntry))
    written = copy_rows(
        session, "time_entries", COLUMNS, (entry(n % 300) for n in range(count)), calls.append
    )
    assert written == count
    assert calls == [PROGRESS_EVERY, 2 * PROGRESS_EVERY]
    assert session.scalar(select(func.count()).select_from(TimeEntry)) == (before or 0) + count
    assert copy_rows(session, "time_entries", COLUMNS, [], calls.append) == 0
    assert calls == [PROGRESS_EVERY, 2 * PROGRESS_EVERY]


def test_next_ids_are_increasing_and_never_handed_out_twice(session: Session) -> None:
    assert next_ids(session, "time_entries", 0) == []
    first = next_ids(session, "time_entries", 500)
    second = next_ids(session, "time_entries", 3)
    assert len(first) == len(set(first)) == 500
    assert first == sorted(first)
    assert second == sorted(second) and min(second) > max(first)
    # Reserved ids are ahead of what the sequence gave anyone, demo rows included.
    highest = session.scalar(select(func.max(TimeEntry.id)))
    assert highest is not None and min(first) > highest


def test_a_scratch_table_has_the_chosen_columns_of_its_model_and_no_rows(
    session: Session,
) -> None:
    scratch_table(session, "scratch_entries", "time_entries", ["note", "time", "approved_at"])
    columns = session.execute(
        text(
            "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute"
            " WHERE attrelid = 'pg_temp.scratch_entries'::regclass AND attnum > 0"
            " ORDER BY attnum"
        )
    ).all()
    assert [tuple(column) for column in columns] == [
        ("id", "bigint"),
        ("note", "text"),
        ("time", "integer"),
        ("approved_at", "timestamp with time zone"),
    ]
    assert session.scalar(text("SELECT count(*) FROM scratch_entries")) == 0
    assert copy_rows(session, "scratch_entries", ["id", "note"], [(7, "a"), (8, None)]) == 2
    assert session.execute(text("SELECT id, note FROM scratch_entries ORDER BY id")).all() == [
        (7, "a"),
        (8, None),
    ]


def test_a_second_scratch_table_of_one_name_replaces_the_first(session: Session) -> None:
    scratch_table(session, "scratch_entries", "time_entries", ["note"])
    copy_rows(session, "scratch_entries", ["id", "note"], [(1, "first")])
    scratch_table(session, "scratch_entries", "time_entries", ["time"])
    assert session.execute(text("SELECT * FROM scratch_entries")).all() == []
    copy_rows(session, "scratch_entries", ["id", "time"], [(1, 5)])
    assert session.execute(text("SELECT id, time FROM scratch_entries")).all() == [(1, 5)]


def test_a_scratch_table_is_dropped_when_its_transaction_commits(engine: Engine) -> None:
    # A commit of its own: the table is temporary, on this connection only, and nothing else
    # is written.
    with engine.connect() as connection:
        with Session(bind=connection) as session:
            scratch_table(session, "scratch_commit", "time_entries", ["note"])
            exists = text("SELECT to_regclass('pg_temp.scratch_commit') IS NOT NULL")
            assert session.scalar(exists) is True
            session.commit()
        assert connection.scalar(exists) is False


def test_copy_into_a_missing_column_fails_and_writes_nothing(session: Session) -> None:
    before = session.scalar(select(func.count()).select_from(TimeEntry))
    with pytest.raises(UndefinedColumn), session.begin_nested():
        copy_rows(session, "time_entries", (*COLUMNS, "colour"), [(*entry(1), "red")])
    assert session.scalar(select(func.count()).select_from(TimeEntry)) == before
