"""Reading queries: scoped to one organization, counted once, pages that never load too much."""

from __future__ import annotations

import datetime as dt
import os

import pytest
from sqlalchemy.exc import InvalidRequestError
from sqlalchemy.orm import Session

from shared.store import queries
from shared.store.models import Job, Person, Service, Task
from shared.store.queries import (
    DirectoryFilters,
    EntryFilters,
    PageRequest,
    directory_by_id,
    directory_page,
    entries_page,
    find_entry,
    jobs_page,
    stored_batch,
)
from tests.factories import Factories


def test_another_organization_s_rows_are_never_found(session: Session) -> None:
    assert find_entry(session, 2110, 223) is not None
    assert find_entry(session, 2110, 235) is None  # Workflow Studio's
    assert find_entry(session, 2111, 235) is not None
    assert set(directory_by_id(session, Person, 2110, [7781, 7791, 8881, None])) == {7781}
    assert set(directory_by_id(session, Service, 2112, [1213, 2213])) == {2213}
    assert directory_by_id(session, Task, 2110, []) == {}
    page = entries_page(session, 2110, EntryFilters(person_id=frozenset({7791})), (), PageRequest())
    assert page.total_count == 0 and page.items == []


def test_page_arithmetic(session: Session, factories: Factories) -> None:
    org = factories.organization()
    person = factories.person(org.id)
    service = factories.service(org.id)
    for n in range(7):
        factories.entry(
            organization_id=org.id,
            person_id=person.id,
            service_id=service.id,
            date=dt.date(2024, 1, 1) + dt.timedelta(days=n),
        )
    sizes = []
    for number in (1, 2, 3, 4):
        page = entries_page(
            session, org.id, EntryFilters(), [("date", False)], PageRequest(number, 3)
        )
        assert page.total_count == 7 and page.total_pages == 3
        sizes.append(len(page.items))
    assert sizes == [3, 3, 1, 0]
    after = EntryFilters(after=dt.date(2024, 1, 6))
    assert entries_page(session, org.id, after, (), PageRequest()).total_count == 2
    empty = entries_page(session, org.id, EntryFilters(date=dt.date(2000, 1, 1)), (), PageRequest())
    assert (empty.total_count, empty.total_pages) == (0, 0)


def test_only_tasks_filter_by_service() -> None:
    assert len(DirectoryFilters(service_id=frozenset({1})).conditions(Task)) == 1
    with pytest.raises(ValueError, match="service_id"):
        DirectoryFilters(service_id=frozenset({1})).conditions(Person)


def test_directory_page_sorts_by_id(session: Session) -> None:
    page = directory_page(
        session, Person, 2110, DirectoryFilters(), [("id", True)], PageRequest(1, 2)
    )
    assert [p.id for p in page.items] == [7784, 7783]
    assert page.total_count == 4


def test_listed_jobs_do_not_load_their_batch_or_result(session: Session) -> None:
    job = Job(organization_id=2110, person_id=7781, operation="create", total=1, batch=b"{}")
    session.add(job)
    session.flush()
    session.expunge_all()
    page = jobs_page(session, 2110, None, None, [("created_at", True)], PageRequest())
    (listed,) = page.items
    assert listed.status == "queued" and listed.total == 1
    with pytest.raises(InvalidRequestError):
        _ = listed.batch
    with pytest.raises(InvalidRequestError):
        _ = listed.result_body


@pytest.mark.parametrize("size", [0, 1, 999, 1000, 1001, 2500])
def test_a_stored_batch_reads_back_whole_piece_by_piece(
    session: Session, monkeypatch: pytest.MonkeyPatch, size: int
) -> None:
    monkeypatch.setattr(queries, "BATCH_PIECE", 1000)
    batch = os.urandom(size)
    job = Job(organization_id=2110, person_id=7781, operation="create", total=1, batch=batch)
    session.add(job)
    session.flush()
    assert stored_batch(session, job.id) == batch


def test_a_purged_batch_reads_as_empty(session: Session) -> None:
    job = Job(organization_id=2110, person_id=7781, operation="create", total=1, batch=None)
    session.add(job)
    session.flush()
    assert stored_batch(session, job.id) == b""
