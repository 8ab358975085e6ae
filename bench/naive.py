"""The naive peer: bulk create the way a small JSON:API server commonly does it.

Synchronously in the request: the document parsed with the standard library, then for each
entry its references fetched through the ORM (the identity map makes repeats free), its
costs computed, one ORM object added and flushed (one INSERT ... RETURNING per entry), and
the entry serialized on its own; one commit at the end, then the whole document encoded with
the standard library's json. No job, no queue, no worker.

It answers the same document as timebatch's result (same attributes, same order), on the
same database with the same schema, so the two can be compared. Served by gunicorn's sync
worker: ``gunicorn 'bench.naive:create_app()'``.
"""

from __future__ import annotations

import datetime as dt
import json
from fractions import Fraction
from typing import Any
from zoneinfo import ZoneInfo

from flask import Flask, Response, request
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from shared.domain.costs import CurrencyBook, entry_costs
from shared.domain.tokens import find_principal
from shared.jsonapi.render import RELATIONSHIPS
from shared.settings import Settings
from shared.store.columns import ATTRIBUTES, TIMESTAMPS
from shared.store.engine import make_engine
from shared.store.models import ExchangeRate, Organization, Person, Service, Task, TimeEntry

CONTENT_TYPE = "application/vnd.api+json; charset=utf-8"


def _error(status: int, title: str) -> Response:
    body = json.dumps({"errors": [{"status": str(status), "title": title}]})
    return Response(body, status=status, content_type=CONTENT_TYPE)


def serialize(entry: TimeEntry, zone: ZoneInfo) -> dict[str, Any]:
    attributes: dict[str, Any] = {}
    for name in ATTRIBUTES:
        value = getattr(entry, name)
        if value is not None and name in TIMESTAMPS:
            value = value.astimezone(zone).isoformat(timespec="milliseconds")
        elif isinstance(value, dt.date):
            value = value.isoformat()
        attributes[name] = value
    relationships: dict[str, Any] = {
        "organization": {"data": {"type": "organizations", "id": str(entry.organization_id)}}
    }
    for name in RELATIONSHIPS[1:]:
        relationships[name] = {"meta": {"included": False}}
    return {
        "id": str(entry.id),
        "type": "time_entries",
        "attributes": attributes,
        "relationships": relationships,
    }


def _id(relationships: dict[str, Any], name: str) -> int | None:
    ref = relationships.get(name)
    if not ref or ref.get("data") is None:
        return None
    return int(ref["data"]["id"])


def create_entries(session: Session, organization_id: int, caller_id: int, document: Any) -> Any:
    organization = session.get_one(Organization, organization_id)
    rates = {
        currency: Fraction(rate)
        for currency, rate in session.execute(
            select(ExchangeRate.currency, ExchangeRate.rate).where(
                ExchangeRate.organization_id == organization_id
            )
        )
    }
    book = CurrencyBook(organization.default_currency, organization.reporting_currency, rates)
    zone = ZoneInfo(organization.time_zone)
    data = []
    for item in document["data"]:
        attributes = item.get("attributes", {})
        relationships = item.get("relationships", {})
        person = session.get(Person, _id(relationships, "person"))
        service = session.get(Service, _id(relationships, "service"))
        task_id = _id(relationships, "task")
        task = session.get(Task, task_id) if task_id is not None else None
        if person is None or service is None or (task_id is not None and task is None):
            return None
        if {person.organization_id, service.organization_id} != {organization_id}:
            return None
        if person.cost_rate is None or person.cost_rate_currency is None:
            return None
        minutes = attributes.get("time", 0)
        costs = entry_costs(
            minutes,
            person.cost_rate,
            person.cost_rate_currency,
            book,
            internal_overhead_rate=organization.internal_overhead_rate,
            facility_overhead_rate=organization.facility_overhead_rate,
        )
        entry = TimeEntry(
            organization_id=organization_id,
            person_id=person.id,
            service_id=service.id,
            task_id=task_id,
            date=dt.date.fromisoformat(attributes["date"]),
            time=minutes,
            billable_time=minutes if service.billable else 0,
            note=attributes.get("note"),
            creator_id=caller_id,
            updater_id=caller_id,
            last_actor_id=caller_id,
            **costs,
        )
        session.add(entry)
        session.flush()
        data.append(serialize(entry, zone))
    return data


def create_app(settings: Settings | None = None) -> Flask:
    settings = settings or Settings.from_env()
    sessions = sessionmaker(bind=make_engine(settings), expire_on_commit=False)
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes

    @app.get("/healthz")
    def healthz() -> Response:
        return Response("{}", content_type="application/json")

    @app.post("/api/v2/time_entries")
    def create() -> Response:
        with sessions() as session:
            principal = find_principal(session, request.headers.get("X-Auth-Token", ""))
            if principal is None:
                return _error(401, "Unauthorized")
            document = json.loads(request.get_data())
            data = create_entries(session, principal.organization_id, principal.person_id, document)
            if data is None:
                session.rollback()
                return _error(422, "Invalid entry")
            session.commit()
        return Response(
            json.dumps({"data": data, "meta": {}}), status=201, content_type=CONTENT_TYPE
        )

    return app
