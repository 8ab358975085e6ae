"""The domain of the webhook endpoints, called directly: rights, checks, rows, no commit."""

from __future__ import annotations

import base64
from collections.abc import Iterator

import pytest
from sqlalchemy import event, func, select
from sqlalchemy.exc import InvalidRequestError
from sqlalchemy.orm import Session

from shared.domain.tokens import Principal
from shared.jsonapi.errors import ApiError
from shared.store.models import Job, Webhook, WebhookDelivery
from shared.store.queries import PageRequest
from shared.webhooks.endpoints import (
    EVENTS,
    Changes,
    create_webhook,
    delete_webhook,
    deliveries_page,
    find_webhook,
    may_manage,
    new_secret,
    read_changes,
    update_webhook,
    webhooks_page,
)
from tests.factories import Factories, create_resource, queue_job


@pytest.fixture
def commits(session: Session) -> Iterator[list[object]]:
    """Commits of the session: the domain makes none, the request does."""
    seen: list[object] = []

    def record(committed: Session) -> None:
        seen.append(committed)

    event.listen(session, "after_commit", record)
    yield seen
    event.remove(session, "after_commit", record)


@pytest.fixture
def job(session: Session) -> Job:
    return queue_job(session, Principal(7782, 2110, read_only=False), "create", [create_resource()])


def test_a_secret_is_whsec_and_32_random_bytes() -> None:
    made = {new_secret() for _ in range(20)}
    assert len(made) == 20
    for secret in made:
        assert secret.startswith("whsec_")
        assert len(base64.b64decode(secret.removeprefix("whsec_"), validate=True)) == 32


@pytest.mark.parametrize(
    ("person_id", "organization_id", "allowed"),
    [(7782, 2110, True), (7783, 2110, True), (7781, 2110, False), (7784, 2110, False),
     (7792, 2111, True), (7782, 2111, False)],
)  # fmt: skip
def test_managers_and_admins_may_manage(
    session: Session, person_id: int, organization_id: int, allowed: bool
) -> None:
    assert may_manage(session, organization_id, person_id) is allowed


def test_every_problem_is_named_at_once() -> None:
    with pytest.raises(ApiError) as raised:
        read_changes(
            {"url": "gopher://x", "events": ["job.failed", "x"], "enabled": 0, "id": 1},
            creating=True,
            allow_private=True,
        )
    pointers = [problem.pointer for problem in raised.value.problems]
    assert pointers == [
        "/data/attributes/url",
        "/data/attributes/events/1",
        "/data/attributes/enabled",
        "/data/attributes/id",
    ]
    assert raised.value.status == 422


def test_creating_defaults_and_patching_leaves_alone() -> None:
    created = read_changes({"url": "https://h.example/"}, creating=True, allow_private=True)
    assert created == Changes(url="https://h.example/", events=EVENTS, enabled=True)
    assert EVENTS == ("job.succeeded", "job.failed", "job.canceled")
    assert read_changes({}, creating=False, allow_private=True) == Changes()


def test_the_url_is_checked_only_when_given(monkeypatch: pytest.MonkeyPatch) -> None:
    checked: list[str] = []
    monkeypatch.setattr(
        "shared.webhooks.endpoints.check_url",
        lambda url, *, allow_private: checked.append(url),
    )
    read_changes({"enabled": False}, creating=False, allow_private=False)
    assert checked == []
    read_changes({"url": "https://h.example/x"}, creating=False, allow_private=False)
    assert checked == ["https://h.example/x"]


def test_create_update_delete_without_a_commit(
    session: Session, commits: list[object], factories: Factories, job: Job
) -> None:
    changes = read_changes({"url": "https://h.example/"}, creating=True, allow_private=True)
    webhook = create_webhook(session, 2110, changes)
    assert webhook.created_at is not None and webhook.enabled is True
    assert webhook.events == list(EVENTS)
    update_webhook(session, webhook, Changes(enabled=False, events=("job.failed",)))
    assert (webhook.enabled, webhook.events, webhook.url) == (
        False,
        ["job.failed"],
        "https://h.example/",
    )
    factories.delivery(webhook, job)
    delete_webhook(session, webhook)
    assert session.scalar(select(func.count()).select_from(Webhook)) == 0
    assert session.scalar(select(func.count()).select_from(WebhookDelivery)) == 0
    assert commits == []


def test_find_is_scoped_to_the_organization(session: Session, factories: Factories) -> None:
    webhook = factories.webhook(organization_id=2111)
    assert find_webhook(session, 2111, webhook.id) is webhook
    assert find_webhook(session, 2110, webhook.id) is None


def test_pages_count_and_order(session: Session, factories: Factories, job: Job) -> None:
    hooks = [factories.webhook() for _ in range(3)]
    factories.webhook(organization_id=2111)
    page = webhooks_page(session, 2110, PageRequest(2, 2))
    assert (list(page.items), page.total_count, page.total_pages) == ([hooks[2]], 3, 2)
    beyond = webhooks_page(session, 2110, PageRequest(3, 2))
    assert (list(beyond.items), beyond.total_count) == ([], 3)

    made = [factories.delivery(hooks[0], job) for _ in range(3)]
    session.expunge_all()
    deliveries = deliveries_page(session, hooks[0], PageRequest(1, 30))
    assert [delivery.id for delivery in deliveries.items] == [d.id for d in reversed(made)]
    # A page never loads the payloads.
    with pytest.raises(InvalidRequestError):
        _ = deliveries.items[0].payload
