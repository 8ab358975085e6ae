"""What the soak expects the database to hold: entries, and what each job does to them.

Each client owns the entries it created (their notes carry its tag), sends one job at a
time, and applies a job's effect to its own entries only once the job ended succeeded, so
the model is always what every succeeded job, applied once, makes of the starting data.
The rules are the app's (shared/domain/approval.py, shared/domain/locks.py): approved
entries cannot be updated or deleted; with the approval workflow an entry is approved once
each of its required approvers approved it (or one with approve-all approved it for all),
and unapproving makes every approver's status pending again.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import random
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

from tests.soak.stack import (
    SOAK_MANAGER,
    SOAK_ORGANIZATION,
    SOAK_PERSON,
    SOAK_SERVICE,
    SOAK_TASK,
)

METHODS = {
    "create": ("POST", "/api/v2/time_entries"),
    "update": ("PATCH", "/api/v2/time_entries"),
    "delete": ("DELETE", "/api/v2/time_entries"),
    "approve": ("PATCH", "/api/v2/time_entries/approve"),
    "unapprove": ("PATCH", "/api/v2/time_entries/unapprove"),
}
SIZES = (1, 1, 2, 3, 5, 8, 13, 21, 40, 80, 150, 300)
# A client that owns this many entries deletes more than it creates.
CROWDED = 600
INVALID_SHARE = 0.06
# Notes: soak:<client>:j<creating job>:e<index>, then :u<updating job> after an update.
NOTE = re.compile(r"^soak:(?P<client>c\d+):j(?P<job>\d+):e\d+(?::u(?P<update>\d+))?$")


@dataclass(frozen=True)
class Persona:
    """Who a client is: a person allowed to create and approve their own time."""

    name: str
    organization_id: int
    person_id: int
    service_id: int
    task_id: int
    # Required approvers of the person's entries under the workflow; empty without it.
    approvers: tuple[int, ...]
    approve_all: bool
    # References in other organizations, which the API must treat as not there.
    foreign_service: int
    foreign_entry: int


# The soak's own organization, run by two clients at once.
_SOL = Persona(
    "collective-sol",
    SOAK_ORGANIZATION,
    SOAK_PERSON,
    SOAK_SERVICE,
    SOAK_TASK,
    (SOAK_MANAGER, SOAK_PERSON),
    True,
    2213,
    224,
)
PERSONAS = (
    Persona("agency-mia", 2110, 7782, 1213, 302, (), False, 2213, 235),
    Persona("agency-ada", 2110, 7783, 1213, 302, (), True, 2213, 235),
    Persona("studio-wanda", 2111, 7793, 1223, 312, (7793,), True, 1213, 223),
    Persona("studio-wanda-2", 2111, 7793, 1223, 312, (7793,), True, 1213, 223),
    _SOL,
    dataclasses.replace(_SOL, name="collective-sol-2"),
)


@dataclass
class Entry:
    """The fields of an entry the soak checks, and its approval statuses by approver."""

    id: int
    organization_id: int
    person_id: int
    service_id: int
    task_id: int | None
    date: str
    time: int
    note: str | None
    approved: bool
    statuses: dict[int, str] = field(default_factory=dict)

    def copy(self) -> Entry:
        return dataclasses.replace(self, statuses=dict(self.statuses))


CHECKED = (
    "organization_id", "person_id", "service_id", "task_id", "date", "time", "note",
    "approved", "statuses",
)  # fmt: skip


def differences(expected: Entry, found: Entry) -> list[str]:
    """What differs, as `field expected != found`."""
    return [
        f"{name} {getattr(expected, name)!r} != {getattr(found, name)!r}"
        for name in CHECKED
        if getattr(expected, name) != getattr(found, name)
    ]


def tag_of(note: str | None) -> str | None:
    """The creating job of a soak entry, `soak:<client>:j<n>`, from its note."""
    match = NOTE.match(note or "")
    return None if match is None else f"soak:{match['client']}:j{match['job']}"


def update_of(note: str | None) -> str | None:
    """The updating job of a soak entry, `soak:<client>:j<n>`, from its note."""
    match = NOTE.match(note or "")
    if match is None or match["update"] is None:
        return None
    return f"soak:{match['client']}:j{match['update']}"


class ResultMismatch(ValueError):
    """A succeeded job's result does not say what the job did."""


@dataclass
class Plan:
    """One job: its request, whether it is meant to succeed, and its effect on the model."""

    client: str
    serial: int
    operation: str
    body: bytes
    size: int
    valid: bool
    apply: Callable[[Any], None]
    why_invalid: str = ""

    @property
    def method(self) -> str:
        return METHODS[self.operation][0]

    @property
    def path(self) -> str:
        return METHODS[self.operation][1]


def _references(ids: Iterable[int]) -> list[dict[str, Any]]:
    return [{"type": "time_entries", "id": str(entry_id)} for entry_id in ids]


def _result_ids(document: Any, expected: list[int] | None, size: int) -> list[int]:
    data = document["data"] if isinstance(document, dict) else None
    if not isinstance(data, list) or len(data) != size:
        raise ResultMismatch(f"expected {size} resources in the result")
    ids = [int(resource["id"]) for resource in data]
    if expected is not None and ids != expected:
        raise ResultMismatch(f"result ids {ids[:5]}... are not the batch's {expected[:5]}...")
    return ids


class Owned:
    """A client's entries: its part of the model, changed by its succeeded jobs only."""

    def __init__(self, persona: Persona, client: str, rng: random.Random) -> None:
        self.persona = persona
        self.client = client
        self.rng = rng
        self.entries: dict[int, Entry] = {}

    # ----------------------------------------------------------------------- picking

    def _pick(self, candidates: list[int]) -> list[int]:
        size = min(self.rng.choice(SIZES), len(candidates))
        return sorted(self.rng.sample(candidates, size))

    def unapproved(self) -> list[int]:
        return sorted(i for i, e in self.entries.items() if not e.approved)

    def approved(self) -> list[int]:
        return sorted(i for i, e in self.entries.items() if e.approved)

    def next_plan(self, serial: int) -> Plan:
        weights = {"create": 3.0, "update": 2.5, "delete": 1.5, "approve": 2.0, "unapprove": 1.0}
        if len(self.entries) >= CROWDED:
            weights["create"], weights["delete"] = 0.5, 4.0
        if not self.entries:
            weights = {"create": 1.0}
        elif not self.unapproved():
            weights.update(update=0.0, delete=0.0)
        operation = self.rng.choices(list(weights), list(weights.values()))[0]
        invalid = self.rng.random() < INVALID_SHARE
        make: Callable[[int, bool], Plan] = getattr(self, f"_{operation}")
        return make(serial, invalid)

    # -------------------------------------------------------------------- operations

    def _create(self, serial: int, invalid: bool) -> Plan:
        p = self.persona
        size = self.rng.choice(SIZES)
        resources: list[dict[str, Any]] = []
        for index in range(size):
            resources.append(
                {
                    "type": "time_entries",
                    "attributes": {
                        "date": self._date(),
                        "time": self.rng.randrange(0, 600),
                        "note": f"soak:{self.client}:j{serial}:e{index}",
                    },
                    "relationships": {
                        "person": {"data": {"type": "people", "id": str(p.person_id)}},
                        "service": {"data": {"type": "services", "id": str(p.service_id)}},
                        "task": {"data": {"type": "tasks", "id": str(p.task_id)}},
                    },
                }
            )
        why = ""
        if invalid:
            bad = self.rng.randrange(size)
            service = resources[bad]["relationships"]["service"]["data"]
            service["id"] = str(p.foreign_service)
            del resources[bad]["relationships"]["task"]
            why = f"/data/{bad} names service {p.foreign_service} of another organization"

        def apply(document: Any) -> None:
            ids = _result_ids(document, None, size)
            notes = [r["attributes"]["note"] for r in document["data"]]
            if notes != [r["attributes"]["note"] for r in resources]:
                raise ResultMismatch("the result's notes are not the batch's")
            for entry_id, resource in zip(ids, resources, strict=True):
                attributes = resource["attributes"]
                self.entries[entry_id] = Entry(
                    id=entry_id,
                    organization_id=p.organization_id,
                    person_id=p.person_id,
                    service_id=p.service_id,
                    task_id=p.task_id,
                    date=attributes["date"],
                    time=attributes["time"],
                    note=attributes["note"],
                    approved=False,
                    statuses=dict.fromkeys(p.approvers, "pending"),
                )

        return self._plan(serial, "create", {"data": resources}, size, invalid, apply, why)

    def _update(self, serial: int, invalid: bool) -> Plan:
        ids = self._pick(self.unapproved())
        changes: dict[int, dict[str, Any]] = {}
        resources = []
        for entry_id in ids:
            entry = self.entries[entry_id]
            base = (entry.note or "").split(":u", 1)[0]
            attributes: dict[str, Any] = {"note": f"{base}:u{serial}"}
            if self.rng.random() < 0.5:
                attributes["time"] = self.rng.randrange(0, 600)
            if self.rng.random() < 0.3:
                attributes["date"] = self._date()
            changes[entry_id] = attributes
            resources.append(
                {"type": "time_entries", "id": str(entry_id), "attributes": attributes}
            )
        why = ""
        if invalid:
            why = self._foreign_reference(resources, {"attributes": {"note": "soak:stray"}})

        def apply(document: Any) -> None:
            _result_ids(document, ids, len(ids))
            for entry_id, attributes in changes.items():
                entry = self.entries[entry_id]
                entry.note = attributes["note"]
                entry.time = attributes.get("time", entry.time)
                entry.date = attributes.get("date", entry.date)

        return self._plan(serial, "update", {"data": resources}, len(ids), invalid, apply, why)

    def _delete(self, serial: int, invalid: bool) -> Plan:
        ids = self._pick(self.unapproved())
        resources = _references(ids)
        why = ""
        if invalid:
            approved = self.approved()
            if approved and self.rng.random() < 0.5:
                locked = self.rng.choice(approved)
                position = self.rng.randrange(len(resources) + 1)
                resources.insert(position, {"type": "time_entries", "id": str(locked)})
                why = f"/data/{position} is approved entry {locked}"
            else:
                why = self._foreign_reference(resources, {})

        def apply(document: Any) -> None:
            if document is not None:
                raise ResultMismatch("a delete answers 204 without a body")
            for entry_id in ids:
                del self.entries[entry_id]

        return self._plan(serial, "delete", {"data": resources}, len(ids), invalid, apply, why)

    def _approve(self, serial: int, invalid: bool) -> Plan:
        ids = self._pick(sorted(self.entries))
        for_all = self.persona.approve_all and self.rng.random() < 0.5
        document: dict[str, Any] = {"data": _references(ids)}
        if for_all:
            document["for_all_approvers"] = True
        why = ""
        if invalid:
            why = self._foreign_reference(document["data"], {})
        caller = self.persona.person_id

        def apply(result: Any) -> None:
            _result_ids(result, ids, len(ids))
            for entry_id in ids:
                entry = self.entries[entry_id]
                if entry.approved:
                    continue
                if entry.statuses:
                    for approver in entry.statuses:
                        if for_all or approver == caller:
                            entry.statuses[approver] = "approved"
                    entry.approved = all(s == "approved" for s in entry.statuses.values())
                else:
                    entry.approved = True

        return self._plan(serial, "approve", document, len(ids), invalid, apply, why)

    def _unapprove(self, serial: int, invalid: bool) -> Plan:
        approved = self.approved()
        ids = self._pick(approved if approved and self.rng.random() < 0.8 else sorted(self.entries))
        resources = _references(ids)
        why = ""
        if invalid:
            why = self._foreign_reference(resources, {})

        def apply(result: Any) -> None:
            _result_ids(result, ids, len(ids))
            for entry_id in ids:
                entry = self.entries[entry_id]
                entry.approved = False
                entry.statuses = dict.fromkeys(entry.statuses, "pending")

        return self._plan(serial, "unapprove", {"data": resources}, len(ids), invalid, apply, why)

    # ----------------------------------------------------------------------- helpers

    def _foreign_reference(self, resources: list[dict[str, Any]], extra: dict[str, Any]) -> str:
        """Put an entry of another organization into the batch: the whole batch must fail."""
        entry_id = self.persona.foreign_entry
        position = self.rng.randrange(len(resources) + 1)
        resources.insert(position, {"type": "time_entries", "id": str(entry_id)} | extra)
        return f"/data/{position} is entry {entry_id} of another organization"

    def _date(self) -> str:
        return (dt.date(2025, 1, 1) + dt.timedelta(days=self.rng.randrange(365))).isoformat()

    def _plan(
        self,
        serial: int,
        operation: str,
        document: dict[str, Any],
        size: int,
        invalid: bool,
        apply: Callable[[Any], None],
        why: str,
    ) -> Plan:
        return Plan(
            client=self.client,
            serial=serial,
            operation=operation,
            body=orjson.dumps(document),
            size=size,
            valid=not invalid,
            apply=apply,
            why_invalid=why,
        )
