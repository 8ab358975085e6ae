"""The outbox: deliveries written with the job's end, none for what did not happen.

On the committed database (`e2e_db`): run_job opens its own sessions, as a worker does.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import orjson
import pytest
from sqlalchemy import Engine, select, update
from sqlalchemy.orm import Session

from shared.domain.tokens import Principal
from shared.jobs import runner
from shared.jobs.runner import Outcome, run_job
from shared.jobs.submit import cancel_job
from shared.store.models import DeliveryStatus, Job, Webhook, WebhookDelivery
from shared.webhooks.endpoints import new_secret
from shared.webhooks.outbox import claim_overdue, claim_unpublished
from tests.factories import create_resource, queue_job

MEMBER = Principal(person_id=7781, organization_id=2110, read_only=False)
EVENTS = ["job.succeeded", "job.failed", "job.canceled"]


def endpoint(
    engine: Engine, organization_id: int = 2110, events: list[str] = EVENTS, enabled: bool = True
) -> int:
    with Session(engine) as session:
        secret = new_secret()
        hook = Webhook(
            organization_id=organization_id,
            url="https://hooks.example/in",
            events=events,
            secret=secret,
            enabled=enabled,
        )
        session.add(hook)
        session.commit()
        return hook.id


def queued(engine: Engine, data: list[dict[str, Any]]) -> uuid.UUID:
    with Session(engine) as session:
        job = queue_job(session, MEMBER, "create", data)
        session.commit()
        return job.id


def rows(engine: Engine, job_id: uuid.UUID) -> list[WebhookDelivery]:
    with Session(engine) as session:
        return list(
            session.scalars(
                select(WebhookDelivery)
                .where(WebhookDelivery.job_id == job_id)
                .order_by(WebhookDelivery.webhook_id)
            )
        )


def test_a_finished_job_has_one_delivery_per_endpoint_that_wants_its_event(
    e2e_db: Engine,
) -> None:
    wants_all = endpoint(e2e_db)
    wants_success = endpoint(e2e_db, events=["job.succeeded"])
    endpoint(e2e_db, events=["job.failed"])
    endpoint(e2e_db, enabled=False)
    endpoint(e2e_db, organization_id=2111)
    job_id = queued(e2e_db, [create_resource(), create_resource()])

    run = run_job(e2e_db, job_id, max_runs=3)
    assert run.outcome is Outcome.SUCCEEDED

    found = rows(e2e_db, job_id)
    assert [d.webhook_id for d in found] == [wants_all, wants_success]
    # The run hands on what it wrote, to publish once it has committed.
    assert sorted(run.deliveries) == sorted(d.id for d in found)
    assert len({d.message_id for d in found}) == 2
    assert all(d.message_id.startswith("msg_") for d in found)
    assert all(d.status == DeliveryStatus.PENDING and d.published_at is None for d in found)
    body = orjson.loads(found[0].payload)
    assert found[0].payload == found[1].payload
    assert body["type"] == "job.succeeded"
    assert body["data"]["attributes"] == {
        "operation": "create",
        "status": "succeeded",
        "result_status": 201,
        "total": 2,
        "errors": 0,
    }
    assert dt.datetime.fromisoformat(body["timestamp"]).tzinfo is not None


def test_a_batch_that_fails_is_told_as_failed(e2e_db: Engine) -> None:
    hook = endpoint(e2e_db)
    unknown_service = create_resource()
    unknown_service["relationships"]["service"]["data"]["id"] = "999999"
    job_id = queued(e2e_db, [create_resource(), unknown_service])

    assert run_job(e2e_db, job_id, max_runs=3).outcome is Outcome.FAILED

    (delivery,) = rows(e2e_db, job_id)
    assert delivery.webhook_id == hook
    attributes = orjson.loads(delivery.payload)["data"]["attributes"]
    assert (attributes["status"], attributes["errors"]) == ("failed", 1)
    assert attributes["result_status"] >= 400


def test_a_run_that_rolls_back_writes_no_delivery(
    e2e_db: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    endpoint(e2e_db)
    job_id = queued(e2e_db, [create_resource()])

    # The run fails once the statement that ends the job, and writes its deliveries, has
    # run: the whole transaction goes.
    def fails(*args: Any, **kwargs: Any) -> runner.Run:
        raise RuntimeError("after the end")

    with monkeypatch.context() as patched:
        patched.setattr(runner, "Run", fails)
        with pytest.raises(RuntimeError, match="after the end"):
            run_job(e2e_db, job_id, max_runs=3)
    assert rows(e2e_db, job_id) == []

    assert run_job(e2e_db, job_id, max_runs=3).outcome is Outcome.SUCCEEDED
    assert len(rows(e2e_db, job_id)) == 1


def test_a_job_given_up_after_its_internal_errors_is_told_as_failed(e2e_db: Engine) -> None:
    endpoint(e2e_db)
    job_id = queued(e2e_db, [create_resource()])
    runner.fail_unexpectedly(e2e_db, job_id)
    runner.fail_unexpectedly(e2e_db, job_id)  # already failed: nothing more

    (delivery,) = rows(e2e_db, job_id)
    attributes = orjson.loads(delivery.payload)["data"]["attributes"]
    assert (attributes["status"], attributes["result_status"]) == ("failed", 500)


def test_a_canceled_job_is_told_with_no_result_link(e2e_db: Engine) -> None:
    endpoint(e2e_db)
    job_id = queued(e2e_db, [create_resource()])
    with Session(e2e_db) as session:
        assert cancel_job(session, session.get_one(Job, job_id))
        session.commit()

    (delivery,) = rows(e2e_db, job_id)
    body = orjson.loads(delivery.payload)
    assert body["type"] == "job.canceled"
    assert body["data"]["links"] == {"self": f"/api/v2/jobs/{job_id}", "result": None}


def test_unpublished_deliveries_are_claimed_once(e2e_db: Engine) -> None:
    endpoint(e2e_db)
    endpoint(e2e_db)
    job_id = queued(e2e_db, [create_resource()])
    run_job(e2e_db, job_id, max_runs=3)
    with Session(e2e_db) as session, session.begin():
        first = claim_unpublished(session, job_id)
    with Session(e2e_db) as session, session.begin():
        second = claim_unpublished(session, job_id)
    assert sorted(first) == sorted(d.id for d in rows(e2e_db, job_id))
    assert second == []


def test_overdue_deliveries_are_claimed_for_the_sweeper(e2e_db: Engine) -> None:
    endpoint(e2e_db)
    job_id = queued(e2e_db, [create_resource()])
    run_job(e2e_db, job_id, max_runs=3)
    (delivery,) = rows(e2e_db, job_id)
    grace = dt.timedelta(seconds=5)

    def claim() -> list[int]:
        with Session(e2e_db) as session, session.begin():
            return claim_overdue(session, grace=grace, limit=10)

    def set_times(**values: Any) -> None:
        with Session(e2e_db) as session, session.begin():
            session.execute(
                update(WebhookDelivery).where(WebhookDelivery.id == delivery.id).values(**values)
            )

    now = dt.datetime.now(dt.UTC)
    assert claim() == []  # due just now: its message is on its way
    set_times(next_attempt_at=now - 2 * grace)
    assert claim() == [delivery.id]  # never published
    assert claim() == []  # sent just now
    # A retry left to the sweeper: published before it fell due.
    set_times(published_at=now - dt.timedelta(hours=1), next_attempt_at=now - 2 * grace)
    assert claim() == [delivery.id]
    # Sent after it fell due, a moment ago: on its way.
    set_times(published_at=now - 2 * grace, next_attempt_at=now - dt.timedelta(minutes=5))
    assert claim() == []
    # A message the sweeper sent and the broker lost again: sent once more after a minute.
    set_times(
        published_at=now - dt.timedelta(minutes=2), next_attempt_at=now - dt.timedelta(minutes=5)
    )
    assert claim() == [delivery.id]
    set_times(status=DeliveryStatus.DELIVERED, published_at=now - dt.timedelta(hours=1))
    assert claim() == []
