"""Create, update and delete time entries in bulk: validate everything, then write set-based.

Domain functions take a session and never commit: the job runner owns the transaction.
Each takes the batch's items in chunks and raises ApiError with every problem found, or
hands the rows it wrote, in batch order, to `written`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Mapping, Sequence
from operator import itemgetter
from typing import Any

from sqlalchemy import any_, delete, text
from sqlalchemy.orm import Session

from shared.domain.approval import add_pending_statuses, approve_all_people, required_approvers
from shared.domain.context import (
    IDS,
    BatchContext,
    Progress,
    Referenced,
    Written,
    add_while_writing,
    locked_chunks,
    referenced_by_id,
)
from shared.domain.costs import MissingExchangeRate, entry_costs
from shared.domain.documents import Batch, Item
from shared.domain.locks import edit_refusal
from shared.domain.problems import forbidden_for, not_found, pointer
from shared.jsonapi.errors import ApiError, Problem
from shared.store.columns import COST_COLUMNS
from shared.store.models import Person, Service, Task, TimeEntry
from shared.store.pgcopy import copy_rows, next_ids, scratch_table


def may_edit_time_of(caller: Person, person_id: int) -> bool:
    return caller.id == person_id or caller.can_manage_time


Columns = tuple[tuple[str, str], ...]

UPDATABLE: Columns = (
    ("date", "date"),
    ("time", "integer"),
    ("note", "text"),
    ("person_id", "bigint"),
    ("service_id", "bigint"),
    ("task_id", "bigint"),
    ("billable_time", "integer"),
    ("currency", "text"),
    ("currency_default", "text"),
    ("currency_normalized", "text"),
    *((name, "bigint") for name in COST_COLUMNS),
    ("updated_at", "timestamptz"),
    ("updater_id", "bigint"),
    ("last_actor_id", "bigint"),
)
INSERTABLE: Columns = (
    *UPDATABLE,
    ("organization_id", "bigint"),
    ("creator_id", "bigint"),
    ("created_at", "timestamptz"),
    ("last_activity_at", "timestamptz"),
)


# What a new entry holds in the columns a create does not set: the table's server defaults
# (tests compare rendered results with the stored rows).
CREATED_DEFAULTS: dict[str, Any] = {
    "recognized_time": 0,
    "track_method_id": 1,
    "started_at": None,
    "timer_started_at": None,
    "timer_stopped_at": None,
    "approved": False,
    "approved_at": None,
    "calendar_event_id": None,
    "invoice_attribution_id": None,
    "invoiced": False,
    "overhead": True,
    "rejected": False,
    "rejected_reason": None,
    "rejected_at": None,
    "submitted": False,
}
_UPDATE_SQL = (
    "UPDATE time_entries AS t SET "
    + ", ".join(f"{name} = v.{name}" for name, _ in UPDATABLE)
    + " FROM time_entry_updates AS v WHERE t.id = v.id"
)


class _Refs:
    """Everything a batch refers to, fetched with one query per kind for each chunk that names
    ids not seen yet (a batch names a few people and services many times)."""

    def __init__(self, session: Session, ctx: BatchContext) -> None:
        self.session = session
        self.ctx = ctx
        self.people: dict[int, Person] = {}
        self.services: dict[int, Service] = {}
        self.tasks: dict[int, Task] = {}
        self._asked: dict[type[Any], set[int]] = {Person: set(), Service: set(), Task: set()}
        self.costs: dict[tuple[int, int, str], dict[str, int | str]] = {}
        # What _derive found for references and minutes it raised no problem with, keyed by
        # everything it reads: a batch repeats a few of them many times. Shared: read only.
        self.derived: dict[tuple[int, int, int | None, int, bool], dict[str, Any]] = {}

    def load(
        self, people: Collection[int], services: Collection[int], tasks: Collection[int | None]
    ) -> None:
        self._fetch(Person, self.people, people)
        self._fetch(Service, self.services, services)
        self._fetch(Task, self.tasks, tasks)

    def _fetch(
        self, model: type[Referenced], found: dict[int, Referenced], ids: Collection[int | None]
    ) -> None:
        asked = self._asked[model]
        new = {i for i in ids if i is not None and i not in asked}
        if new:
            asked.update(new)
            found.update(referenced_by_id(self.session, self.ctx, model, new))


# What _derive checks of a merged entry: its person, service, task and minutes.
Merged = tuple[int, int, int | None, int]


def _derive(
    ctx: BatchContext,
    index: int,
    merged: Merged,
    refs: _Refs,
    problems: list[Problem],
    *,
    check_person: bool,
) -> dict[str, Any] | None:
    """Check the references of one merged entry; return the billable time and costs."""
    key = (*merged, check_person)
    derived = refs.derived.get(key)
    if derived is None:
        derived = _check(ctx, index, merged, refs, problems, check_person=check_person)
        if derived is not None:
            refs.derived[key] = derived
    return derived


def _check(
    ctx: BatchContext,
    index: int,
    merged: Merged,
    refs: _Refs,
    problems: list[Problem],
    *,
    check_person: bool,
) -> dict[str, Any] | None:
    person_id, service_id, task_id, minutes = merged
    person: Person | None = refs.people.get(person_id)
    service: Service | None = refs.services.get(service_id)
    task: Task | None = refs.tasks.get(task_id) if task_id is not None else None
    found = len(problems)
    if person is None:
        problems.append(not_found(index, "person_id", "person", person_id))
    elif check_person and not may_edit_time_of(ctx.caller, person.id):
        problems.append(forbidden_for(index, "person_id", person.id))
    if service is None:
        problems.append(not_found(index, "service_id", "service", service_id))
    if task_id is not None:
        if task is None:
            problems.append(not_found(index, "task_id", "task", task_id))
        elif service is not None and task.service_id not in (None, service.id):
            problems.append(
                Problem(
                    422,
                    "Invalid relationship",
                    f"task {task_id} belongs to service {task.service_id}, not {service.id}",
                    pointer=pointer(index, "task_id"),
                )
            )
    if person is not None and (person.cost_rate is None or person.cost_rate_currency is None):
        problems.append(
            Problem(
                422,
                "Invalid relationship",
                f"person {person.id} has no cost rate and cannot track time",
                pointer=pointer(index, "person_id"),
            )
        )
    if len(problems) > found or person is None or service is None:
        return None
    assert person.cost_rate is not None and person.cost_rate_currency is not None
    org = ctx.organization
    key = (minutes, person.cost_rate, person.cost_rate_currency)
    try:
        # Batches repeat a few (time, rate) pairs many times; the exact arithmetic is costly.
        costs = refs.costs.get(key)
        if costs is None:
            costs = refs.costs[key] = entry_costs(
                minutes,
                person.cost_rate,
                person.cost_rate_currency,
                ctx.book,
                internal_overhead_rate=org.internal_overhead_rate,
                facility_overhead_rate=org.facility_overhead_rate,
            )
        costs = dict(costs)
    except MissingExchangeRate as exc:
        problems.append(
            Problem(
                422,
                "Missing exchange rate",
                f"the organization has no exchange rate for {exc.currency}",
                pointer=pointer(index, "person_id"),
            )
        )
        return None
    costs["billable_time"] = minutes if service.billable else 0
    return costs


# A row of a create's COPY: the id, then the INSERTABLE columns.
_INSERT_NAMES = ("id", *(name for name, _ in INSERTABLE))
_INSERT_ROW = itemgetter(*_INSERT_NAMES)
_INSERT_TYPES = ("bigint", *(kind for _, kind in INSERTABLE))


def create_entries(
    session: Session,
    ctx: BatchContext,
    batch: Batch,
    progress: Progress,
    written: Written,
) -> None:
    """Chunk by chunk: check, COPY in, hand on what was written. After the first problem the
    rest is only checked, so the client hears of every problem; the caller rolls back."""
    refs = _Refs(session, ctx)
    problems: list[Problem] = []
    now = ctx.now
    caller_id = ctx.caller.id
    workflow = ctx.organization.approval_workflow
    fallback = approve_all_people(session, ctx) if workflow else []
    offset = 0
    for items in batch:
        refs.load(
            {i["person_id"] for i in items},
            {i["service_id"] for i in items},
            {i.get("task_id") for i in items},
        )
        rows: list[dict[str, Any]] = []
        for index, item in enumerate(items, offset):
            values = {
                "organization_id": ctx.organization_id,
                "person_id": item["person_id"],
                "service_id": item["service_id"],
                "task_id": item.get("task_id"),
                "date": dt.date.fromisoformat(item["date"]),
                "time": item.get("time", 0),
                "note": item.get("note"),
                "creator_id": caller_id,
                "updater_id": caller_id,
                "last_actor_id": caller_id,
                "created_at": now,
                "updated_at": now,
                "last_activity_at": now,
            }
            merged = (values["person_id"], values["service_id"], values["task_id"], values["time"])
            derived = _derive(ctx, index, merged, refs, problems, check_person=True)
            if derived is not None and not problems:
                rows.append(values | derived)
        offset += len(items)
        if problems:
            continue
        ids = next_ids(session, "time_entries", len(rows))
        created = [
            CREATED_DEFAULTS | row | {"id": entry_id}
            for entry_id, row in zip(ids, rows, strict=True)
        ]
        copy_rows(
            session,
            "time_entries",
            _INSERT_NAMES,
            map(_INSERT_ROW, created),
            types=_INSERT_TYPES,
        )
        if workflow:
            add_pending_statuses(
                session,
                {
                    row["id"]: required_approvers(
                        refs.people.get(row["person_id"]),
                        refs.services.get(row["service_id"]),
                        fallback,
                    )
                    for row in created
                },
            )
        progress(offset)
        written.add(created)
    if problems:
        raise ApiError(problems)


REPRICING_FIELDS = frozenset({"time", "person_id", "service_id"})


def _check_locked(
    ctx: BatchContext,
    ids: Sequence[int],
    offset: int,
    entries: Mapping[int, Any],
    problems: list[Problem],
) -> None:
    """Report the missing, foreign, locked and not-permitted entries among a chunk's ids."""
    caller = ctx.caller
    for index, entry_id in enumerate(ids, offset):
        entry = entries.get(entry_id)
        if entry is None:
            problems.append(not_found(index, "id", "time entry", entry_id))
            continue
        refusal = edit_refusal(entry, index)
        if refusal is not None:
            problems.append(refusal)
        elif not may_edit_time_of(caller, entry["person_id"]):
            problems.append(forbidden_for(index, "id", entry["person_id"]))


_EDITABLE = frozenset({"date", "time", "note", "person_id", "service_id", "task_id"})
_MERGED = itemgetter("person_id", "service_id", "task_id", "time")


class _Updates:
    """The new values of an update's entries, written ROWS at a time: COPYed into a scratch
    table, then joined in by one UPDATE while they are handed on (add_while_writing)."""

    # Some 300 bytes a row in the scratch table, a few KiB a row held to hand on. Within one
    # COPY this process formats rows while the server takes the ones before: ten COPYs of a
    # thousand rows took twice as long as one of ten thousand.
    ROWS = 10_000
    NAMES = ("id", *(name for name, _ in UPDATABLE))
    TYPES = ("bigint", *(kind for _, kind in UPDATABLE))
    _ROW = itemgetter(*NAMES)

    def __init__(self, session: Session, written: Written) -> None:
        self.session = session
        self.written = written
        self._rows: list[dict[str, Any]] = []
        self._copied = False
        scratch_table(session, "time_entry_updates", "time_entries", self.NAMES[1:])

    def add(self, rows: list[dict[str, Any]]) -> None:
        """A chunk of entries as they will be stored, in batch order."""
        self._rows.extend(rows)
        if len(self._rows) >= self.ROWS:
            self.flush()

    def flush(self) -> None:
        if not self._rows:
            return
        if self._copied:
            self.session.execute(text("TRUNCATE time_entry_updates"))
        values = map(self._ROW, self._rows)
        copy_rows(self.session, "time_entry_updates", self.NAMES, values, types=self.TYPES)
        self._copied = True
        # The stored rows are the locked ones with these values: rendered from memory.
        add_while_writing(self.session, self.written, self._rows, [(_UPDATE_SQL, {})])
        self._rows = []


def update_entries(
    session: Session,
    ctx: BatchContext,
    batch: Batch,
    progress: Progress,
    written: Written,
) -> None:
    """Chunk by chunk, once every entry is locked: check and merge; the merged entries are
    written and handed on in large steps (_Updates). After the first problem the rest is
    only checked, so the client hears of every problem; the caller rolls back."""
    refs = _Refs(session, ctx)
    problems: list[Problem] = []
    stamp = {"updated_at": ctx.now, "updater_id": ctx.caller.id, "last_actor_id": ctx.caller.id}
    updates = _Updates(session, written)
    # The batch's chunks and those of its ids line up: both are CHUNK long.
    chunks = zip(locked_chunks(session, ctx, batch.ids()), batch, strict=True)
    for (offset, ids, entries), items in chunks:
        _check_locked(ctx, ids, offset, entries, problems)
        merged: list[tuple[int, Item, dict[str, Any]]] = []
        for index, item in enumerate(items, offset):
            values = entries.get(item["id"])
            if values is None:
                continue
            for field, value in item.items():
                if field in _EDITABLE:
                    values[field] = value
            if "date" in item:
                values["date"] = dt.date.fromisoformat(item["date"])
            merged.append((index, item, values))
        refs.load(
            {values["person_id"] for _, _, values in merged},
            {values["service_id"] for _, _, values in merged},
            {values["task_id"] for _, _, values in merged},
        )
        for index, item, values in merged:
            derived = _derive(
                ctx, index, _MERGED(values), refs, problems, check_person="person_id" in item
            )
            # Without a change of time, person or service the stored prices stand.
            if derived is not None and not REPRICING_FIELDS.isdisjoint(item):
                values.update(derived)
            values.update(stamp)
        if problems:
            continue
        updates.add([values for _, _, values in merged])
        progress(offset + len(ids))
    if problems:
        raise ApiError(problems)
    updates.flush()


# By id alone, as read_locked: these are entries just locked, all of them the organization's.
_DELETE = delete(TimeEntry).where(TimeEntry.id == any_(IDS))
# What a delete checks of an entry (_check_locked): a row of a few columns, not one to render.
_DELETING = ("id", "person_id", "invoiced", "approved")


def delete_entries(
    session: Session,
    ctx: BatchContext,
    batch: Batch,
    progress: Progress,
    written: Written,
) -> None:
    """Chunk by chunk, once every entry is locked: check, delete. Nothing is written to
    answer: a delete's answer is a 204."""
    problems: list[Problem] = []
    for offset, ids, entries in locked_chunks(session, ctx, batch.ids(), _DELETING):
        _check_locked(ctx, ids, offset, entries, problems)
        if not problems:
            session.execute(_DELETE, {"ids": list(entries)})
            progress(offset + len(ids))
    if problems:
        raise ApiError(problems)
