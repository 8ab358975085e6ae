"""What a batch is checked against: the organization, its currencies, the caller, and lookups.

Every lookup is scoped to one organization here, so an id of another organization is
indistinguishable from a missing one.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Collection, Container, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Protocol, TypeVar

from psycopg.rows import dict_row
from sqlalchemy import any_, bindparam, func, select
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session
from sqlalchemy.types import BigInteger

from shared.domain.costs import CurrencyBook
from shared.domain.documents import CHUNK
from shared.jsonapi.render import CompressedCollection, EntryRenderer, Related
from shared.store.columns import REFERENCE_NAMED
from shared.store.models import ExchangeRate, Organization, Person, Service, Task, TimeEntry
from shared.store.queries import DIRECTORIES, ENTRY_COLUMNS, ENTRY_INCLUDES, directory_by_id

# Told how many items of the batch are written so far.
Progress = Callable[[int], None]


@dataclass(frozen=True)
class BatchContext:
    organization: Organization
    caller: Person
    book: CurrencyBook
    now: dt.datetime
    options: Mapping[str, Any] = field(default_factory=dict)

    @property
    def organization_id(self) -> int:
        return self.organization.id

    def renderer(self, related: Related | None = None) -> EntryRenderer:
        return EntryRenderer(self.organization.id, self.organization.time_zone, related)


class Written(Protocol):
    """Told the rows each chunk of the batch wrote, as stored now, in batch order."""

    def relate(self, rows: Sequence[Mapping[Any, Any]]) -> None:
        """Read ahead what the rows reference, where the answer includes it."""

    def add(self, rows: Sequence[Mapping[Any, Any]]) -> None:
        """Add the rows to the answer. Once `relate` has seen them, reads nothing from the
        database: the connection may be busy with a statement of the caller's meanwhile."""


def add_while_writing(
    session: Session,
    written: Written,
    rows: Sequence[Mapping[Any, Any]],
    statements: Iterable[tuple[str, Mapping[str, Any]]],
) -> None:
    """Run the statements (psycopg's SQL, `%(name)s` parameters) and add the rows they write
    to the answer meanwhile: in a pipeline, which sends them without waiting, so the server
    writes the rows, and upkeeps the table's indexes, while this process renders them. At
    10,000 entries each took about a quarter of an update.

    Leaving the pipeline waits for the statements and raises what they met.
    """
    written.relate(rows)
    driver = session.connection().connection.driver_connection
    assert driver is not None
    with driver.pipeline():
        for statement, params in statements:
            driver.execute(statement, params)
        written.add(rows)


class BatchResult:
    """A batch's answer, built while it is applied: each chunk of written rows is rendered,
    with what it references among what the submission asked to include, and compressed."""

    def __init__(self, session: Session, ctx: BatchContext) -> None:
        self.session = session
        self.ctx = ctx
        include = ctx.options.get("include", ())
        self.related: dict[str, dict[int, Any]] = {
            name: {} for name in ENTRY_INCLUDES if name in include
        }
        # Per relationship, the ids asked for so far: found or not, each is asked once.
        self._asked: dict[str, set[int]] = {name: set() for name in self.related}
        self._collection: CompressedCollection | None = None

    @property
    def collection(self) -> CompressedCollection:
        # Made when the first rows come: a batch refused before writing renders nothing.
        if self._collection is None:
            self._collection = CompressedCollection(self.ctx.renderer(self.related))
        return self._collection

    def relate(self, rows: Sequence[Mapping[Any, Any]]) -> None:
        for name, found in self.related.items():
            column = REFERENCE_NAMED[name].column
            new = {row[column] for row in rows} - self._asked[name]
            new.discard(None)
            if new:
                self._asked[name].update(new)
                model = DIRECTORIES[name]
                found.update(directory_by_id(self.session, model, self.ctx.organization_id, new))

    def add(self, rows: Sequence[Mapping[Any, Any]]) -> None:
        self.relate(rows)
        self.collection.add(rows)

    def finish(self) -> bytes:
        """The gzip-compressed collection document."""
        return self.collection.finish()


def load_context(
    session: Session,
    organization_id: int,
    person_id: int,
    options: Mapping[str, Any] | None = None,
) -> BatchContext:
    organization = session.get_one(Organization, organization_id)
    caller = session.scalars(
        select(Person).where(Person.organization_id == organization_id, Person.id == person_id)
    ).one()
    rates = {
        currency: Fraction(rate)
        for currency, rate in session.execute(
            select(ExchangeRate.currency, ExchangeRate.rate).where(
                ExchangeRate.organization_id == organization_id
            )
        )
    }
    book = CurrencyBook(organization.default_currency, organization.reporting_currency, rates)
    now = dt.datetime.now(dt.UTC)
    return BatchContext(
        organization=organization, caller=caller, book=book, now=now, options=options or {}
    )


Referenced = TypeVar("Referenced", Person, Service, Task)


def referenced_by_id(
    session: Session, ctx: BatchContext, model: type[Referenced], ids: Collection[int]
) -> dict[int, Referenced]:
    """The organization's rows of `model` with these ids, in one query.

    They are locked FOR KEY SHARE: they cannot be deleted or re-keyed until the batch
    commits, which is what a foreign key would guarantee row by row.
    """
    if not ids:
        return {}
    found = session.scalars(
        select(model)
        .where(model.organization_id == ctx.organization_id, model.id.in_(ids))
        .with_for_update(read=True, key_share=True)  # FOR KEY SHARE
    )
    return {row.id: row for row in found}


# A locked entry is also what an update starts from: the columns it writes back.
LOCKED_COLUMNS = (
    *ENTRY_COLUMNS,
    TimeEntry.approver_id,
    TimeEntry.updater_id,
    TimeEntry.last_actor_id,
)
LOCKED_NAMES = tuple(column.key for column in LOCKED_COLUMNS)


# One array parameter, not an IN list: 10,000 ids as 10,000 bind parameters cost SQLAlchemy
# and psycopg more than the query. A bound bigint[], not a text literal cast to one: only the
# former is a constant to the planner, and with the latter the first batch on a table without
# statistics yet took seconds, searching the array once per row.
IDS = bindparam("ids", type_=ARRAY(BigInteger))
# The ids in one array: a row each cost more to fetch than the lock.
_LOCK = select(
    func.array_agg(
        select(TimeEntry.id)
        .where(TimeEntry.organization_id == bindparam("organization_id"), TimeEntry.id == any_(IDS))
        .order_by(TimeEntry.id)
        .with_for_update()
        .subquery()
        .c.id
    )
)


def lock_entries(session: Session, ctx: BatchContext, ids: Collection[int]) -> list[int]:
    """Row-lock the organization's entries with these ids; the ids it has, in id order.

    Locks are taken in id order so that jobs over overlapping entries queue up instead of
    deadlocking. Only the ids come back: the rows are read a chunk at a time (read_locked).
    """
    params = {"organization_id": ctx.organization_id, "ids": list(ids)}
    return session.connection().scalar(_LOCK, params) or []


def read_locked(
    session: Session,
    locked: Container[int],
    ids: Iterable[int],
    columns: Sequence[str] = LOCKED_NAMES,
) -> dict[int, Any]:
    """The rows of the entries among `ids` that are in `locked`, by id: dicts of `columns`,
    `id` among them, the caller's to change."""
    wanted = [entry_id for entry_id in ids if entry_id in locked]
    if not wanted:
        return {}
    # Straight from psycopg, in binary: SQLAlchemy's result rows and the text protocol's
    # parsing cost a fifth of the read. By id alone: only entries just locked are read, all
    # of them the organization's. Once psycopg prepares a statement its plan is generic, and
    # with the organization in it too, while the statistics still lagged a big create, that
    # plan scanned all the organization's entries for each chunk.
    driver = session.connection().connection.driver_connection
    assert driver is not None
    statement = f"SELECT {', '.join(columns)} FROM time_entries WHERE id = ANY(%s)"
    with driver.cursor(binary=True, row_factory=dict_row) as cursor:
        rows = cursor.execute(statement, [wanted]).fetchall()
    return {row["id"]: row for row in rows}


def locked_chunks(
    session: Session, ctx: BatchContext, ids: Sequence[int], columns: Sequence[str] = LOCKED_NAMES
) -> Iterator[tuple[int, Sequence[int], dict[int, Any]]]:
    """The entries a batch names, locked all at once (lock_entries), then CHUNK at a time:
    each chunk of ids with its offset in the batch and the rows of those the organization
    has, read as the chunk comes. A batch of 100,000 never holds all its rows."""
    locked = set(lock_entries(session, ctx, ids))
    for offset in range(0, len(ids), CHUNK):
        chunk = ids[offset : offset + CHUNK]
        yield offset, chunk, read_locked(session, locked, chunk, columns)
