"""An organization's webhook endpoints and their deliveries, as the API manages them: who may,
what a request may set, and the rows. Nothing here commits; the request that calls it does.

Every lookup is scoped to one organization, so another organization's endpoint is
indistinguishable from a missing one.
"""

from __future__ import annotations

import base64
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Select, delete, func, select
from sqlalchemy.orm import Session, defer

from shared.jsonapi.errors import ApiError, Problem
from shared.store.models import Person, Webhook, WebhookDelivery, WebhookEvent
from shared.store.queries import Page, PageRequest
from shared.webhooks.targets import MAX_URL_LENGTH, TargetRefused, check_url

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32
# What an endpoint hears of when it does not say: every event, in this order.
EVENTS = tuple(WebhookEvent)
WRITABLE = ("url", "events", "enabled")
READ_ONLY = frozenset({"secret", "created_at", "updated_at"})
# The URL's shape, before check_url looks at where it leads: http(s), then printable ASCII
# without spaces (a host of another script in its xn-- form). Matched with re.search, as the
# OpenAPI document's JSON Schema `pattern` is, so that the two agree to the character.
URL_PATTERN = "^[Hh][Tt][Tt][Pp][Ss]?://[!-~]+$"
_URL = re.compile(URL_PATTERN)
ATTRIBUTES = "/data/attributes"


def new_secret() -> str:
    """A signing key as the Standard Webhooks libraries take it: whsec_ and base64 bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode("ascii")


def may_manage(session: Session, organization_id: int, person_id: int) -> bool:
    """Managers and admins: anyone who may manage others' time or approve it."""
    person = session.scalars(
        select(Person).where(Person.organization_id == organization_id, Person.id == person_id)
    ).one_or_none()
    return person is not None and (
        person.can_manage_time or person.can_approve or person.can_approve_all
    )


@dataclass(frozen=True)
class Changes:
    """What a request sets; None for what it leaves as it is."""

    url: str | None = None
    events: tuple[str, ...] | None = None
    enabled: bool | None = None


def _invalid(name: str, detail: str, where: str | None = None) -> Problem:
    return Problem(422, "Invalid attribute", detail, where or f"{ATTRIBUTES}/{name}")


def _url(value: Any, problems: list[Problem], *, allow_private: bool) -> str | None:
    where = f"{ATTRIBUTES}/url"
    if not isinstance(value, str) or len(value) > MAX_URL_LENGTH or not _URL.search(value):
        problems.append(
            _invalid(
                "url",
                f"url must be an http or https URL of at most {MAX_URL_LENGTH} printable ASCII"
                " characters without spaces",
            )
        )
        return None
    try:
        check_url(value, allow_private=allow_private)
    except TargetRefused as refused:
        problems.append(Problem(422, "Target refused", str(refused), where))
        return None
    return value


def _events(value: Any, problems: list[Problem]) -> tuple[str, ...] | None:
    known = ", ".join(EVENTS)
    if not isinstance(value, list) or not value:
        problems.append(_invalid("events", f"events must be a non-empty array of {known}"))
        return None
    found: list[str] = []
    before = len(problems)
    for index, event in enumerate(value):
        where = f"{ATTRIBUTES}/events/{index}"
        if not isinstance(event, str) or event not in EVENTS:
            problems.append(_invalid("events", f"an event is one of {known}", where))
        elif event in found:
            problems.append(
                Problem(
                    422,
                    "Duplicate event",
                    f"{event} is also at {ATTRIBUTES}/events/{found.index(event)}",
                    where,
                )
            )
        found.append(event if isinstance(event, str) else "")
    return tuple(found) if len(problems) == before else None


def read_changes(attributes: Mapping[str, Any], *, creating: bool, allow_private: bool) -> Changes:
    """The attributes of a POST (`creating`) or PATCH, checked; raises ApiError naming every
    problem with its pointer. A new endpoint hears of every event and is enabled unless the
    attributes say otherwise."""
    problems: list[Problem] = []
    url: str | None = None
    events: tuple[str, ...] | None = EVENTS if creating else None
    enabled: bool | None = True if creating else None
    for name, value in attributes.items():
        where = f"{ATTRIBUTES}/{name.replace('~', '~0').replace('/', '~1')}"
        if name == "url":
            url = _url(value, problems, allow_private=allow_private)
        elif name == "events":
            events = _events(value, problems)
        elif name == "enabled":
            if isinstance(value, bool):
                enabled = value
            else:
                problems.append(_invalid("enabled", "enabled must be true or false"))
        elif name in READ_ONLY:
            problems.append(
                Problem(422, "Read-only attribute", f"{name} is set by the server", where)
            )
        else:
            problems.append(
                Problem(
                    422,
                    "Unknown attribute",
                    f"webhooks have no attribute {name!r}; set {', '.join(WRITABLE)}",
                    where,
                )
            )
    if creating and "url" not in attributes:
        problems.append(Problem(422, "Missing attribute", "url is required", f"{ATTRIBUTES}/url"))
    if problems:
        raise ApiError(problems)
    return Changes(url=url, events=events, enabled=enabled)


def create_webhook(session: Session, organization_id: int, changes: Changes) -> Webhook:
    """A new endpoint with a fresh secret; its timestamps are the database's."""
    assert changes.url is not None and changes.events is not None
    webhook = Webhook(
        organization_id=organization_id,
        url=changes.url,
        events=list(changes.events),
        enabled=True if changes.enabled is None else changes.enabled,
        secret=new_secret(),
    )
    session.add(webhook)
    session.flush()
    session.refresh(webhook)
    return webhook


def find_webhook(session: Session, organization_id: int, webhook_id: int) -> Webhook | None:
    return session.scalars(
        select(Webhook).where(Webhook.id == webhook_id, Webhook.organization_id == organization_id)
    ).one_or_none()


def update_webhook(session: Session, webhook: Webhook, changes: Changes) -> Webhook:
    if changes.url is not None:
        webhook.url = changes.url
    if changes.events is not None:
        webhook.events = list(changes.events)
    if changes.enabled is not None:
        webhook.enabled = changes.enabled
    webhook.updated_at = func.now()
    session.flush()
    session.refresh(webhook)
    return webhook


def delete_webhook(session: Session, webhook: Webhook) -> None:
    """Deletes its deliveries too: the foreign key cascades, pending ones included, so that
    nothing is sent to an endpoint its organization removed."""
    session.execute(delete(Webhook).where(Webhook.id == webhook.id))
    session.expunge(webhook)


def _page(
    session: Session,
    statement: Select[Any],
    order: ColumnElement[Any],
    request: PageRequest,
    *options: Any,
) -> Page[Any]:
    total = (
        session.scalar(statement.with_only_columns(func.count(), maintain_column_froms=True)) or 0
    )
    items: list[Any] = []
    if request.offset < total:
        window = statement.order_by(order).limit(request.size).offset(request.offset)
        items = list(session.scalars(window.options(*options)))
    return Page(items, request, total)


def webhooks_page(session: Session, organization_id: int, request: PageRequest) -> Page[Webhook]:
    """The organization's endpoints, oldest first."""
    statement = select(Webhook).where(Webhook.organization_id == organization_id)
    return _page(session, statement, Webhook.id.asc(), request)


def deliveries_page(
    session: Session, webhook: Webhook, request: PageRequest
) -> Page[WebhookDelivery]:
    """The endpoint's deliveries, newest first. The payloads stay in the database: the API
    never shows them, and a page of them could be megabytes."""
    statement = select(WebhookDelivery).where(WebhookDelivery.webhook_id == webhook.id)
    return _page(
        session,
        statement,
        WebhookDelivery.id.desc(),
        request,
        defer(WebhookDelivery.payload, raiseload=True),
    )
