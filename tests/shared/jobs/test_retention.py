"""Retention: finished jobs older than the period lose batch and result, keep their summary."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from shared.domain.tokens import Principal
from shared.jobs.retention import purge_ended_deliveries, purge_expired_jobs
from shared.settings import Settings, SettingsError
from shared.store.models import Job, Operation, Webhook, WebhookDelivery
from tests.applying import decoded_items
from tests.factories import create_resource, queue_job

MEMBER = Principal(person_id=7781, organization_id=2110, read_only=False)
ITEMS = [{"date": "2026-01-02", "time": 60, "person_id": 7781, "service_id": 1213}]
DATA = [create_resource(date="2026-01-02", time=60)]


def job(session: Session, status: str, finished_days_ago: float | None, **values: Any) -> Job:
    made = queue_job(session, MEMBER, "create", DATA)
    finished_at = None
    if finished_days_ago is not None:
        finished_at = dt.datetime.now(dt.UTC) - dt.timedelta(days=finished_days_ago)
    values = {
        "status": status,
        "finished_at": finished_at,
        "result_status": 201 if status == "succeeded" else None,
        "result_body": b'{"data":[]}' if status == "succeeded" else None,
    } | values
    session.execute(update(Job).where(Job.id == made.id).values(**values))
    session.refresh(made)
    return made


def test_only_finished_jobs_past_the_period_are_purged(session: Session) -> None:
    old = [
        job(session, "succeeded", 8),
        job(session, "failed", 30, result_status=422, result_body=b'{"errors":[]}'),
        job(session, "canceled", 8),
    ]
    kept = [
        job(session, "succeeded", 6),
        job(session, "queued", None),
        job(session, "running", None),
    ]
    # A running job whose first attempt finished long ago is not finished.
    kept.append(job(session, "running", 30))

    assert purge_expired_jobs(session, retention_days=7) == 3
    session.expire_all()
    for purged in old:
        assert purged.purged_at is not None
        assert (purged.batch, purged.result_body) == (None, None)
        # The summary stays.
        assert purged.total == 1 and purged.status in {"succeeded", "failed", "canceled"}
        assert purged.finished_at is not None and purged.request_hash is not None
    assert old[1].result_status == 422
    for untouched in kept:
        assert untouched.purged_at is None and untouched.batch is not None
        assert decoded_items(Operation.CREATE, untouched.batch) == ITEMS
    assert kept[0].result_body == b'{"data":[]}'


def test_purging_twice_purges_once_and_chunks_are_bounded(session: Session) -> None:
    for _ in range(5):
        job(session, "succeeded", 10)
    assert purge_expired_jobs(session, retention_days=7, limit=2) == 2
    assert purge_expired_jobs(session, retention_days=7, limit=2) == 2
    assert purge_expired_jobs(session, retention_days=7, limit=2) == 1
    assert purge_expired_jobs(session, retention_days=7) == 0
    stamps = session.scalars(select(Job.purged_at).where(Job.purged_at.is_not(None))).all()
    assert len(stamps) == 5


def test_the_period_is_a_setting() -> None:
    urls = {"DATABASE_URL": "postgresql+psycopg://u@db/x", "BROKER_URL": "redis://r:6379/0"}
    assert Settings.from_env(urls).retention_days == 7
    settings = Settings.from_env(urls | {"TIMEBATCH_RETENTION_DAYS": "30"})
    assert settings.retention_days == 30
    assert Settings.from_env(settings.as_env()) == settings
    for bad in ("0", "a week"):
        with pytest.raises(SettingsError, match="TIMEBATCH_RETENTION_DAYS"):
            Settings.from_env(urls | {"TIMEBATCH_RETENTION_DAYS": bad})


def test_only_ended_deliveries_past_the_period_are_deleted(session: Session) -> None:
    hook = Webhook(
        organization_id=2110, url="https://hooks.example/", events=["job.failed"], secret="whsec_x"
    )
    session.add(hook)
    session.flush()
    made = job(session, "succeeded", 30)
    for status, days in [("delivered", 30), ("failed", 30), ("pending", 30), ("delivered", 1)]:
        delivery = WebhookDelivery(
            webhook_id=hook.id,
            job_id=made.id,
            event="job.succeeded",
            message_id=f"msg_{status}_{days}",
            payload=b"{}",
            status=status,
            created_at=dt.datetime.now(dt.UTC) - dt.timedelta(days=days),
        )
        session.add(delivery)
    session.flush()

    assert purge_ended_deliveries(session, retention_days=7) == 2
    left = set(session.scalars(select(WebhookDelivery.message_id)))
    assert left == {"msg_pending_30", "msg_delivered_1"}
