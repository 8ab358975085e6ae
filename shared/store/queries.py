"""Reading: an organization's entries, people, services, tasks and jobs, a page at a time.

Every statement here starts from `scoped()`, the one place that adds the organization
condition, so an id of another organization is indistinguishable from a missing one.
Each page costs one COUNT and one SELECT; related resources cost one query per kind.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sqlalchemy import ColumnElement, Row, Select, func, or_, select
from sqlalchemy.orm import Session, defer

from shared.store.columns import READ_COLUMNS, REFERENCE_NAMED, REFERENCES
from shared.store.models import Job, Organization, Person, Service, Task, TimeEntry

T = TypeVar("T")
Scoped = type[Person] | type[Service] | type[Task] | type[TimeEntry] | type[Job]
Directory = type[Person] | type[Service] | type[Task]

DEFAULT_PAGE_SIZE = 30
MAX_PAGE_SIZE = 200

# A sort key: the name of a sortable field and whether it runs descending.
SortKey = tuple[str, bool]

ENTRY_COLUMNS = tuple(getattr(TimeEntry, name) for name in READ_COLUMNS)
# What `include` can name on entries: the relationships to the people, services and tasks
# they reference, and the model of each.
ENTRY_INCLUDES = tuple(reference.name for reference in REFERENCES)
DIRECTORIES: dict[str, Directory] = {"person": Person, "service": Service, "task": Task}
ENTRY_SORTS = {"date": TimeEntry.date, "updated_at": TimeEntry.updated_at}
# `approved` and `invoiced` are independent flags; a list of statuses matches any of them.
ENTRY_STATUSES: dict[str, ColumnElement[bool]] = {
    "approved": TimeEntry.approved.is_(True),
    "unapproved": TimeEntry.approved.is_(False),
    "invoiced": TimeEntry.invoiced.is_(True),
}
JOB_SORTS = {"created_at": Job.created_at}
# A job's stored batch and result can be megabytes each: a list never loads them.
JOB_UNLISTED = (Job.batch, Job.result_body, Job.options)


def scoped(model: Scoped, organization_id: int, *columns: Any) -> Select[Any]:
    """SELECT the model (or these columns of it) among one organization's rows only."""
    return select(*(columns or (model,))).where(model.organization_id == organization_id)


@dataclass(frozen=True)
class PageRequest:
    number: int = 1
    size: int = DEFAULT_PAGE_SIZE

    @property
    def offset(self) -> int:
        return (self.number - 1) * self.size


@dataclass(frozen=True)
class Page(Generic[T]):
    items: Sequence[T]
    request: PageRequest
    total_count: int

    @property
    def total_pages(self) -> int:
        return -(-self.total_count // self.request.size)


def _page(
    session: Session,
    statement: Select[Any],
    order: Sequence[ColumnElement[Any]],
    request: PageRequest,
    *,
    scalars: bool,
    options: Sequence[Any] = (),
) -> Page[Any]:
    count = statement.with_only_columns(func.count(), maintain_column_froms=True)
    total = session.scalar(count) or 0
    items: Sequence[Any] = []
    if request.offset < total:
        window = statement.order_by(*order).limit(request.size).offset(request.offset)
        window = window.options(*options)
        items = session.scalars(window).all() if scalars else session.execute(window).all()
    return Page(items, request, total)


def _order(
    sorts: Sequence[SortKey], columns: dict[str, Any], tiebreaker: Any
) -> list[ColumnElement[Any]]:
    # The id, in the direction of the first key, makes the order total: pages never overlap.
    order = [
        columns[name].desc() if descending else columns[name].asc() for name, descending in sorts
    ]
    descending = bool(sorts) and sorts[0][1]
    order.append(tiebreaker.desc() if descending else tiebreaker.asc())
    return order


def time_zone(session: Session, organization_id: int) -> str:
    zone = session.scalar(select(Organization.time_zone).where(Organization.id == organization_id))
    return zone or "UTC"


@dataclass(frozen=True)
class EntryFilters:
    """`filter[...]` of time entries. Id filters and status match any of their values;
    `after` and `before` are inclusive."""

    person_id: frozenset[int] | None = None
    service_id: frozenset[int] | None = None
    task_id: frozenset[int] | None = None
    date: dt.date | None = None
    after: dt.date | None = None
    before: dt.date | None = None
    status: frozenset[str] | None = None

    def conditions(self) -> list[ColumnElement[bool]]:
        found: list[ColumnElement[bool]] = []
        for ids, column in (
            (self.person_id, TimeEntry.person_id),
            (self.service_id, TimeEntry.service_id),
            (self.task_id, TimeEntry.task_id),
        ):
            if ids is not None:
                found.append(column.in_(sorted(ids)))
        if self.date is not None:
            found.append(TimeEntry.date == self.date)
        if self.after is not None:
            found.append(TimeEntry.date >= self.after)
        if self.before is not None:
            found.append(TimeEntry.date <= self.before)
        if self.status is not None:
            found.append(or_(*(ENTRY_STATUSES[s] for s in sorted(self.status))))
        return found


def entries_page(
    session: Session,
    organization_id: int,
    filters: EntryFilters,
    sorts: Sequence[SortKey],
    request: PageRequest,
) -> Page[Row[Any]]:
    statement = scoped(TimeEntry, organization_id, *ENTRY_COLUMNS).where(*filters.conditions())
    order = _order(sorts, ENTRY_SORTS, TimeEntry.id)
    return _page(session, statement, order, request, scalars=False)


def find_entry(session: Session, organization_id: int, entry_id: int) -> Row[Any] | None:
    statement = scoped(TimeEntry, organization_id, *ENTRY_COLUMNS).where(TimeEntry.id == entry_id)
    return session.execute(statement).one_or_none()


@dataclass(frozen=True)
class DirectoryFilters:
    """`filter[id]` of people, services and tasks, and `filter[service_id]` of tasks."""

    id: frozenset[int] | None = None
    service_id: frozenset[int] | None = None

    def conditions(self, model: Directory) -> list[ColumnElement[bool]]:
        found: list[ColumnElement[bool]] = []
        if self.id is not None:
            found.append(model.id.in_(sorted(self.id)))
        if self.service_id is not None:
            if model is not Task:
                raise ValueError("only tasks filter by service_id")
            found.append(Task.service_id.in_(sorted(self.service_id)))
        return found


def directory_page(
    session: Session,
    model: Directory,
    organization_id: int,
    filters: DirectoryFilters,
    sorts: Sequence[SortKey],
    request: PageRequest,
) -> Page[Any]:
    statement = scoped(model, organization_id).where(*filters.conditions(model))
    order = _order(sorts, {"id": model.id}, model.id)
    return _page(session, statement, order, request, scalars=True)


def directory_by_id(
    session: Session, model: Directory, organization_id: int, ids: Iterable[int | None]
) -> dict[int, Any]:
    """The organization's people, services or tasks with these ids, in one query."""
    wanted = sorted({i for i in ids if i is not None})
    if not wanted:
        return {}
    found = session.scalars(scoped(model, organization_id).where(model.id.in_(wanted)))
    return {row.id: row for row in found}


def referenced(
    session: Session,
    organization_id: int,
    rows: Sequence[Mapping[Any, Any]],
    include: Collection[str],
) -> dict[str, dict[int, Any]]:
    """Per name in `include`, in ENTRY_INCLUDES order, the people, services or tasks these
    entries reference, by id: one query per kind, whatever the number of entries."""
    return {
        name: directory_by_id(
            session,
            DIRECTORIES[name],
            organization_id,
            (row[REFERENCE_NAMED[name].column] for row in rows),
        )
        for name in ENTRY_INCLUDES
        if name in include
    }


def jobs_page(
    session: Session,
    organization_id: int,
    statuses: Collection[str] | None,
    operations: Collection[str] | None,
    sorts: Sequence[SortKey],
    request: PageRequest,
) -> Page[Job]:
    statement = scoped(Job, organization_id)
    if statuses is not None:
        statement = statement.where(Job.status.in_(sorted(statuses)))
    if operations is not None:
        statement = statement.where(Job.operation.in_(sorted(operations)))
    order = _order(sorts, JOB_SORTS, Job.id)
    options = [defer(column, raiseload=True) for column in JOB_UNLISTED]
    return _page(session, statement, order, request, scalars=True, options=options)


def stored_batch(session: Session, job_id: uuid.UUID) -> bytearray:
    """A job's stored batch, on the session's connection, read BATCH_PIECE bytes at a time.

    In one read, libpq holds the whole value while psycopg copies it out, and as text a bytea
    comes as hex, twice its size: a 100,000-entry batch (some 24 MB) took the worker past
    160 MB at this one step. In binary pieces it takes the batch's size and one piece.
    """
    driver = session.connection().connection.driver_connection
    assert driver is not None
    batch = bytearray()
    with driver.cursor(binary=True) as cursor:
        while True:
            found = cursor.execute(
                "SELECT substring(batch FROM %s FOR %s) FROM jobs WHERE id = %s",
                (len(batch) + 1, BATCH_PIECE, job_id),
            ).fetchone()
            piece = None if found is None else found[0]
            if piece:
                batch += piece
            if not piece or len(piece) < BATCH_PIECE:
                return batch


BATCH_PIECE = 4 * 1024 * 1024
