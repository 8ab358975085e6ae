"""The demo data of the design contract: fixed ids, so the spec's request bodies work verbatim."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from fractions import Fraction
from typing import Any

from sqlalchemy import insert, select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from shared.domain.costs import CurrencyBook, entry_costs
from shared.domain.tokens import create_token
from shared.store.models import (
    ApprovalStatus,
    ExchangeRate,
    Operation,
    Organization,
    Person,
    Service,
    Task,
    TimeEntry,
)

ORGANIZATIONS: list[dict[str, Any]] = [
    {"id": 2110, "name": "Demo Agency", "approval_workflow": False},
    {"id": 2111, "name": "Workflow Studio", "approval_workflow": True},
    {"id": 2112, "name": "Elsewhere Ltd", "approval_workflow": False},
]
ORGANIZATION_DEFAULTS = {
    "default_currency": "USD",
    "reporting_currency": "EUR",
    "time_zone": "Europe/Berlin",
}
EUR_IN_USD = Decimal("1.25")


def _person(
    id: int,
    org: int,
    first: str,
    last: str,
    *,
    rate: int | None = 2000,
    manager: int | None = None,
    manage: bool = False,
    approve: bool = False,
    approve_all: bool = False,
) -> dict[str, Any]:
    return {
        "id": id,
        "organization_id": org,
        "first_name": first,
        "last_name": last,
        "email": f"{first.lower()}.{last.lower()}@example.com",
        "cost_rate": rate,
        "cost_rate_currency": "EUR" if rate is not None else None,
        "manager_id": manager,
        "can_manage_time": manage,
        "can_approve": approve,
        "can_approve_all": approve_all,
    }


# Managers come before the people they manage: rows are inserted in this order.
PEOPLE: list[dict[str, Any]] = [
    _person(7782, 2110, "Mia", "Manager", manage=True, approve=True),
    _person(7783, 2110, "Ada", "Admin", manage=True, approve=True, approve_all=True),
    _person(7781, 2110, "Max", "Member", manager=7782),
    _person(7784, 2110, "Nora", "Norate", rate=None),
    _person(7792, 2111, "Wes", "Manager", approve=True),
    _person(7793, 2111, "Wanda", "Admin", approve=True, approve_all=True),
    _person(7791, 2111, "Will", "Member", manager=7792),
    _person(8881, 2112, "Eli", "Elsewhere"),
]
SERVICES: list[dict[str, Any]] = [
    {"id": 1213, "organization_id": 2110, "name": "Design", "billable": True, "approver_id": 7783},
    {"id": 1214, "organization_id": 2110, "name": "Internal", "billable": False},
    {
        "id": 1223,
        "organization_id": 2111,
        "name": "Studio work",
        "billable": True,
        "approver_id": 7793,
    },
    {"id": 2213, "organization_id": 2112, "name": "Consulting", "billable": True},
]
TASKS: list[dict[str, Any]] = [
    {"id": 302, "organization_id": 2110, "service_id": 1213, "title": "Wireframes"},
    {"id": 303, "organization_id": 2110, "service_id": 1214, "title": "Admin"},
    {"id": 312, "organization_id": 2111, "service_id": 1223, "title": "Storyboard"},
    {"id": 402, "organization_id": 2112, "service_id": 2213, "title": "Audit"},
]
# Entries the spec's update, delete, approve and unapprove bodies name. Most are in Demo
# Agency; 235 and 236 are in Workflow Studio, so that the spec's first approve example (one
# entry approved, one still waiting for another approver) comes out as shown when Wanda (7793)
# sends it: 235 is Wes's, whose only approver is the service's (Wanda); 236 is Will's, who
# also needs his manager Wes.
ENTRY_IDS = {
    Operation.UPDATE: (223, 224),
    Operation.DELETE: (231, 232),
    Operation.APPROVE: (235, 236, 237, 238),
    Operation.UNAPPROVE: (249, 250),
}
WORKFLOW_ENTRIES = {235: (7792, (7793,)), 236: (7791, (7792, 7793))}
FIRST_FREE_ENTRY_ID = 1000


def _demo_entries() -> list[dict[str, Any]]:
    book = CurrencyBook("USD", "EUR", {"EUR": Fraction(EUR_IN_USD)})
    costs = entry_costs(480, 2000, "EUR", book)
    approved_at = dt.datetime(2016, 10, 3, 9, 0, tzinfo=dt.UTC)
    rows = []
    for purpose, ids in ENTRY_IDS.items():
        for n, entry_id in enumerate(ids):
            approved = purpose == Operation.UNAPPROVE
            person_id, _ = WORKFLOW_ENTRIES.get(entry_id, (7781, ()))
            workflow = entry_id in WORKFLOW_ENTRIES
            rows.append(
                {
                    "id": entry_id,
                    "organization_id": 2111 if workflow else 2110,
                    "person_id": person_id,
                    "service_id": 1223 if workflow else 1213,
                    "task_id": 312 if workflow else 302,
                    "date": dt.date(2016, 10, 1),
                    "time": 480,
                    "billable_time": 480,
                    "note": "one" if n % 2 == 0 else "two",
                    "approved": approved,
                    "approved_at": approved_at if approved else None,
                    "approver_id": 7783 if approved else None,
                    "creator_id": person_id,
                    "updater_id": person_id,
                    "last_actor_id": person_id,
                    **costs,
                }
            )
    return rows


def load_demo(session: Session) -> bool:
    """Insert the demo data where missing. Returns False when it was already there.

    Entries are made only together with their organization, so that entries deleted through
    the API stay deleted when the stack restarts.
    """
    existing = set(
        session.scalars(
            select(Organization.id).where(Organization.id.in_([o["id"] for o in ORGANIZATIONS]))
        )
    )
    new_orgs = [o | ORGANIZATION_DEFAULTS for o in ORGANIZATIONS if o["id"] not in existing]
    if not new_orgs:
        return False
    new_ids = {o["id"] for o in new_orgs}
    session.execute(insert(Organization), new_orgs)
    session.execute(
        pg_insert(ExchangeRate).on_conflict_do_nothing(),
        [{"organization_id": o, "currency": "EUR", "rate": EUR_IN_USD} for o in sorted(new_ids)],
    )
    for model, rows in ((Person, PEOPLE), (Service, SERVICES), (Task, TASKS)):
        fresh = [r for r in rows if r["organization_id"] in new_ids]
        for row in fresh:
            session.execute(pg_insert(model).values(**row).on_conflict_do_nothing())
    if {2110, 2111} <= new_ids:
        session.execute(pg_insert(TimeEntry).on_conflict_do_nothing(), _demo_entries())
        session.execute(
            pg_insert(ApprovalStatus).on_conflict_do_nothing(),
            [
                {"time_entry_id": entry_id, "approver_id": approver, "status": "pending"}
                for entry_id, (_, approvers) in WORKFLOW_ENTRIES.items()
                for approver in approvers
            ],
        )
    # Spec ids are small; API-created entries start above them.
    session.execute(
        text(
            "SELECT setval(pg_get_serial_sequence('time_entries', 'id'),"
            " GREATEST((SELECT max(id) FROM time_entries), :floor))"
        ),
        {"floor": FIRST_FREE_ENTRY_ID},
    )
    session.flush()
    return True


def demo_tokens(session: Session) -> list[tuple[Person, str]]:
    """A fresh read-write token for every demo person."""
    people = session.scalars(
        select(Person).where(Person.id.in_([p["id"] for p in PEOPLE])).order_by(Person.id)
    ).all()
    return [(person, create_token(session, person)) for person in people]
