from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from shared.cli.demo import load_demo
from shared.store.models import ApprovalStatus, Organization, Person, Service, Task, TimeEntry

MODELS = (Organization, Person, Service, Task, TimeEntry, ApprovalStatus)


def _counts(session: Session) -> list[int]:
    return [session.scalar(select(func.count()).select_from(m)) or 0 for m in MODELS]


def test_demo_data_matches_the_contract(session: Session) -> None:
    org = session.get_one(Organization, 2110)
    assert (org.default_currency, org.reporting_currency, org.time_zone) == (
        "USD",
        "EUR",
        "Europe/Berlin",
    )
    assert session.get_one(Organization, 2111).approval_workflow
    member = session.get_one(Person, 7781)
    assert (member.cost_rate, member.cost_rate_currency, member.manager_id) == (2000, "EUR", 7782)
    assert session.get_one(Person, 7784).cost_rate is None
    assert session.get_one(Person, 7783).can_approve_all
    assert session.get_one(Service, 1213).billable
    assert not session.get_one(Service, 1214).billable
    assert session.get_one(Task, 302).service_id == 1213
    assert session.get_one(Person, 8881).organization_id == 2112
    for entry_id in (223, 224, 231, 232, 235, 236, 237, 238, 249, 250):
        assert session.get(TimeEntry, entry_id) is not None
    assert session.get_one(TimeEntry, 249).approved


def test_loading_twice_changes_nothing(session: Session) -> None:
    before = _counts(session)
    assert load_demo(session) is False
    assert _counts(session) == before


def test_deleted_demo_entries_stay_deleted(session: Session) -> None:
    session.delete(session.get_one(TimeEntry, 231))
    session.flush()
    load_demo(session)
    assert session.get(TimeEntry, 231) is None
