"""Factories for test data: they flush, never commit."""

from __future__ import annotations

import datetime as dt
import itertools
import uuid
from typing import Any

import orjson
from sqlalchemy.orm import Session

from shared.domain.tokens import Principal
from shared.jobs.submit import submit_job
from shared.settings import Settings
from shared.store.models import (
    ApprovalStatus,
    Job,
    Operation,
    Organization,
    Person,
    Service,
    Task,
    TimeEntry,
    Webhook,
    WebhookDelivery,
)

_ids = itertools.count(900_000)
# The default limits, for jobs queued directly.
DEFAULTS = Settings.from_env({})


class Factories:
    def __init__(self, session: Session) -> None:
        self.session = session

    def _add(self, obj: Any) -> Any:
        self.session.add(obj)
        self.session.flush()
        return obj

    def organization(self, **values: Any) -> Organization:
        values = {
            "id": next(_ids),
            "name": "Test Org",
            "default_currency": "USD",
            "reporting_currency": "EUR",
            "time_zone": "Europe/Berlin",
        } | values
        return self._add(Organization(**values))  # type: ignore[no-any-return]

    def person(self, organization_id: int = 2110, **values: Any) -> Person:
        values = {
            "id": next(_ids),
            "organization_id": organization_id,
            "first_name": "Test",
            "last_name": "Person",
            "cost_rate": 2000,
            "cost_rate_currency": "EUR",
        } | values
        return self._add(Person(**values))  # type: ignore[no-any-return]

    def service(self, organization_id: int = 2110, **values: Any) -> Service:
        values = {"id": next(_ids), "organization_id": organization_id, "name": "S"} | values
        return self._add(Service(**values))  # type: ignore[no-any-return]

    def task(self, service: Service, **values: Any) -> Task:
        values = {
            "id": next(_ids),
            "organization_id": service.organization_id,
            "service_id": service.id,
            "title": "T",
        } | values
        return self._add(Task(**values))  # type: ignore[no-any-return]

    def entry(self, **values: Any) -> TimeEntry:
        values = {
            "organization_id": 2110,
            "person_id": 7781,
            "service_id": 1213,
            "date": dt.date(2026, 1, 5),
            "time": 60,
            "billable_time": 60,
            "currency": "EUR",
            "currency_default": "USD",
            "currency_normalized": "EUR",
            "cost": 2000,
            "cost_default": 2500,
            "cost_normalized": 2000,
        } | values
        return self._add(TimeEntry(**values))  # type: ignore[no-any-return]

    def approval_status(self, entry: TimeEntry, approver_id: int, **values: Any) -> ApprovalStatus:
        return self._add(  # type: ignore[no-any-return]
            ApprovalStatus(time_entry_id=entry.id, approver_id=approver_id, **values)
        )

    def webhook(self, organization_id: int = 2110, **values: Any) -> Webhook:
        values = {
            "organization_id": organization_id,
            "url": "https://hooks.example.com/timebatch",
            "events": ["job.succeeded", "job.failed", "job.canceled"],
            "secret": "whsec_" + "A" * 43 + "=",
        } | values
        webhook = self._add(Webhook(**values))
        # The server's defaults (enabled, timestamps), as a read would see them.
        self.session.refresh(webhook)
        return webhook  # type: ignore[no-any-return]

    def delivery(self, webhook: Webhook, job: Job, **values: Any) -> WebhookDelivery:
        values = {
            "webhook_id": webhook.id,
            "job_id": job.id,
            "event": "job.succeeded",
            "message_id": f"msg_{uuid.uuid4().hex}",
            "payload": b"{}",
        } | values
        delivery = self._add(WebhookDelivery(**values))
        self.session.refresh(delivery)
        return delivery  # type: ignore[no-any-return]


def create_resource(**attributes: Any) -> dict[str, Any]:
    """One valid resource of a create document for demo person 7781 on service 1213."""
    return {
        "type": "time_entries",
        "attributes": {"date": "2026-01-02", "time": 60} | attributes,
        "relationships": {
            "person": {"data": {"type": "people", "id": "7781"}},
            "service": {"data": {"type": "services", "id": 1213}},
        },
    }


def reference(entry_id: int | str) -> dict[str, Any]:
    """A resource of a delete, approve or unapprove document."""
    return {"type": "time_entries", "id": str(entry_id)}


def queue_job(
    session: Session,
    principal: Principal,
    operation: str,
    data: list[dict[str, Any]],
    *,
    options: dict[str, Any] | None = None,
    queued_for: dt.timedelta | None = None,
) -> Job:
    """A queued job of this bulk document's data, stored the way the API stores one;
    `queued_for` makes it as old as that (a job the sweeper should find stuck)."""
    body = orjson.dumps({"data": data})
    job, _ = submit_job(
        session,
        principal,
        Operation(operation),
        body,
        options or {},
        total=len(data),
        settings=DEFAULTS,
    )
    if queued_for is not None:
        job.created_at -= queued_for
        session.flush()
    return job
