"""What a batch is checked against: loaded for one organization, and nothing outside it."""

from __future__ import annotations

import datetime as dt
import gzip
from collections.abc import Iterator
from fractions import Fraction

import orjson
import pytest
from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import NoResultFound, OperationalError
from sqlalchemy.orm import Session

from shared.domain.context import (
    LOCKED_COLUMNS,
    BatchResult,
    load_context,
    lock_entries,
    locked_chunks,
    read_locked,
    referenced_by_id,
)
from shared.domain.documents import CHUNK
from shared.store.models import Person, Service, Task
from tests.factories import Factories


@pytest.fixture
def other(engine: Engine) -> Iterator[Connection]:
    """A second connection, as another job's would be, to see the locks a batch holds."""
    with engine.connect() as connection:
        yield connection


def can_lock(connection: Connection, table: str, row_id: int, strength: str) -> bool:
    """Whether the other connection could take this row lock now (NOWAIT: it never waits)."""
    with connection.begin() as transaction:
        try:
            connection.execute(
                text(f"SELECT 1 FROM {table} WHERE id = :id FOR {strength} NOWAIT"),
                {"id": row_id},
            )
        except OperationalError as exc:
            assert getattr(exc.orig, "sqlstate", None) == "55P03"  # lock_not_available
            return False
        finally:
            transaction.rollback()
    return True


def test_load_context_holds_the_organization_caller_and_currencies(session: Session) -> None:
    before = dt.datetime.now(dt.UTC)
    ctx = load_context(session, 2110, 7781, {"for_all_approvers": True})
    assert (ctx.organization_id, ctx.organization.name, ctx.caller.id) == (
        2110,
        "Demo Agency",
        7781,
    )
    assert (ctx.book.default, ctx.book.reporting) == ("USD", "EUR")
    assert ctx.book.rates == {"EUR": Fraction(5, 4)}
    assert ctx.options == {"for_all_approvers": True}
    assert before <= ctx.now <= dt.datetime.now(dt.UTC)
    assert ctx.now.tzinfo is not None
    assert load_context(session, 2110, 7781).options == {}


def test_load_context_reads_each_organization_s_own_rates(
    session: Session, factories: Factories
) -> None:
    org = factories.organization(default_currency="EUR", reporting_currency="EUR")
    person = factories.person(org.id)
    ctx = load_context(session, org.id, person.id)
    assert (ctx.book.default, ctx.book.rates) == ("EUR", {})
    assert ctx.renderer().organization == {"data": {"type": "organizations", "id": str(org.id)}}


def test_a_caller_of_another_organization_is_not_found(session: Session) -> None:
    with pytest.raises(NoResultFound):
        load_context(session, 2110, 8881)  # Eli is in Elsewhere Ltd
    with pytest.raises(NoResultFound):
        load_context(session, 424242, 7781)


def test_referenced_by_id_finds_only_the_organization_s_rows(
    session: Session, factories: Factories
) -> None:
    elsewhere = factories.service(organization_id=2112)
    ctx = load_context(session, 2110, 7781)
    people = referenced_by_id(session, ctx, Person, [7781, 7783, 7791, 8881, 424242])
    assert sorted(people) == [7781, 7783]
    assert all(isinstance(person, Person) for person in people.values())
    services = referenced_by_id(session, ctx, Service, [1213, 1214, 1223, elsewhere.id])
    assert sorted(services) == [1213, 1214]
    assert services[1213].name == "Design"
    assert sorted(referenced_by_id(session, ctx, Task, [302, 303, 312, 402])) == [302, 303]
    assert referenced_by_id(session, ctx, Task, []) == {}


def test_referenced_rows_cannot_be_deleted_while_the_batch_runs(
    session: Session, other: Connection
) -> None:
    ctx = load_context(session, 2110, 7781)
    assert can_lock(other, "services", 1213, "UPDATE")  # what a DELETE takes
    referenced_by_id(session, ctx, Service, [1213])
    assert not can_lock(other, "services", 1213, "UPDATE")
    assert can_lock(other, "services", 1214, "UPDATE")  # not referenced


def test_a_second_batch_naming_the_same_rows_is_not_held_up(
    session: Session, other: Connection
) -> None:
    referenced_by_id(session, load_context(session, 2110, 7781), Service, [1213])
    with Session(bind=other) as concurrent, concurrent.begin():
        # A foreign key check would not wait here; give up fast instead of hanging.
        concurrent.execute(text("SET LOCAL lock_timeout = '200ms'"))
        ctx = load_context(concurrent, 2110, 7783)
        assert list(referenced_by_id(concurrent, ctx, Service, [1213])) == [1213]
    assert can_lock(other, "services", 1213, "NO KEY UPDATE")  # an update of its name


def test_lock_entries_returns_only_the_organization_s_entries(
    session: Session, factories: Factories
) -> None:
    mine = factories.entry()
    theirs = factories.entry(organization_id=2112, person_id=8881, service_id=2213)
    ctx = load_context(session, 2110, 7781)
    locked = lock_entries(session, ctx, [249, theirs.id, 235, mine.id, 223, 424242])
    assert locked == [223, 249, mine.id]  # in id order, the order the locks are taken
    assert lock_entries(session, ctx, []) == []


def test_read_locked_reads_only_the_locked_among_the_ids(
    session: Session, factories: Factories
) -> None:
    mine = factories.entry()
    theirs = factories.entry(organization_id=2112, person_id=8881, service_id=2213)
    rows = read_locked(session, {249, mine.id}, [theirs.id, 249, mine.id, 223])
    assert sorted(rows) == sorted([249, mine.id])  # 223 exists but was not locked
    assert rows[249]["approved"] is True and rows[249]["approver_id"] == 7783
    assert rows[mine.id]["organization_id"] == 2110
    assert list(rows[249]) == [column.key for column in LOCKED_COLUMNS]
    assert read_locked(session, {249}, [223]) == {}


def test_locked_chunks_locks_the_whole_batch_before_the_first_chunk(
    session: Session, other: Connection, factories: Factories
) -> None:
    theirs = factories.entry(organization_id=2112, person_id=8881, service_id=2213)
    ctx = load_context(session, 2110, 7781)
    ids = [249, theirs.id, *range(10**6, 10**6 + CHUNK - 2), 223]
    chunks = locked_chunks(session, ctx, ids)
    offset, chunk, rows = next(chunks)
    # The second chunk's entry is locked already; the other organization's is not.
    assert not can_lock(other, "time_entries", 223, "KEY SHARE")
    assert can_lock(other, "time_entries", theirs.id, "UPDATE")
    assert (offset, chunk, list(rows)) == (0, ids[:CHUNK], [249])
    offset, chunk, rows = next(chunks)
    assert (offset, chunk, list(rows)) == (CHUNK, [223], [223])
    assert next(chunks, None) is None


def test_locked_entries_are_row_locked_and_the_others_are_not(
    session: Session, other: Connection
) -> None:
    ctx = load_context(session, 2110, 7781)
    lock_entries(session, ctx, [223, 235])
    assert not can_lock(other, "time_entries", 223, "KEY SHARE")
    assert can_lock(other, "time_entries", 224, "UPDATE")  # not asked for
    assert can_lock(other, "time_entries", 235, "UPDATE")  # Workflow Studio's


def test_a_result_adds_what_it_has_related_without_reading_the_database(
    session: Session, factories: Factories
) -> None:
    entry = factories.entry(task_id=302)
    ctx = load_context(session, 2110, 7781, {"include": ["person", "task"]})
    result = BatchResult(session, ctx)
    (row,) = read_locked(session, {entry.id}, [entry.id]).values()
    result.relate([row])
    driver = session.connection().connection.driver_connection
    assert driver is not None
    # In a pipeline the connection answers no query of the ORM's: add must ask none.
    with driver.pipeline():
        driver.execute("SELECT 1")
        result.add([row])
    assert (set(result.related["person"]), set(result.related["task"])) == ({7781}, {302})
    document = orjson.loads(gzip.decompress(result.finish()))
    assert document["data"][0]["relationships"]["task"] == {"data": {"type": "tasks", "id": "302"}}
