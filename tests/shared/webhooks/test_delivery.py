"""One attempt of a delivery, in this process, against a real HTTP receiver (pytest-httpserver)
and the committed database: what each kind of answer does to the delivery and its endpoint."""

from __future__ import annotations

import dataclasses
import datetime as dt
import email.utils
import threading
import uuid
from collections.abc import Callable

import pytest
from pytest_httpserver import HTTPServer
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session
from standardwebhooks import Webhook as Verifier
from werkzeug import Request, Response

from shared.jobs.runner import run_job
from shared.ops.metrics import metrics
from shared.settings import Settings
from shared.store.models import Webhook, WebhookDelivery
from shared.webhooks.delivery import Result, attempt, next_delay
from tests.factories import create_resource
from tests.shared.webhooks.test_outbox import endpoint, queued


@pytest.fixture
def hook_settings(e2e_settings: Settings) -> Settings:
    return dataclasses.replace(
        e2e_settings,
        webhook_allow_private=True,
        webhook_retry_schedule=(300, 300),
        webhook_timeout=1,
    )


@pytest.fixture
def delivery(e2e_db: Engine, httpserver: HTTPServer) -> Callable[[str], int]:
    """A pending delivery of a finished job to this receiver path; its id."""

    def make(path: str) -> int:
        hook_id = endpoint(e2e_db)
        with Session(e2e_db) as session, session.begin():
            session.get_one(Webhook, hook_id).url = httpserver.url_for(path)
        job_id: uuid.UUID = queued(e2e_db, [create_resource()])
        run_job(e2e_db, job_id, max_runs=3)
        with Session(e2e_db) as session:
            return session.scalars(
                select(WebhookDelivery.id).where(WebhookDelivery.job_id == job_id)
            ).one()

    return make


def row(engine: Engine, delivery_id: int) -> WebhookDelivery:
    with Session(engine) as session:
        return session.get_one(WebhookDelivery, delivery_id)


def seconds_until(when: dt.datetime | None) -> float:
    assert when is not None
    return (when - dt.datetime.now(dt.UTC)).total_seconds()


@pytest.fixture(autouse=True)
def _clear(httpserver: HTTPServer) -> None:
    httpserver.clear()


def test_a_2xx_delivers_it_signed_and_counts_its_latency(
    hook_settings: Settings, e2e_db: Engine, httpserver: HTTPServer, delivery: Callable[[str], int]
) -> None:
    delivery_id = delivery("/ok")
    httpserver.expect_oneshot_request("/ok", method="POST").respond_with_data("", status=202)
    delivered = metrics().webhook_attempts.labels("delivered")._value.get()
    latencies = sum(b.get() for b in metrics().webhook_latency._buckets)

    assert attempt(e2e_db, hook_settings, delivery_id).result is Result.DELIVERED

    found = row(e2e_db, delivery_id)
    assert (found.status, found.attempts, found.last_response_status) == ("delivered", 1, 202)
    assert found.next_attempt_at is None and found.delivered_at is not None
    ((request, _),) = httpserver.log
    with Session(e2e_db) as session:
        secret = session.get_one(Webhook, found.webhook_id).secret
    Verifier(secret).verify(request.get_data(), dict(request.headers))
    assert request.headers["User-Agent"].startswith("timebatch-webhooks/")
    assert metrics().webhook_attempts.labels("delivered")._value.get() == delivered + 1
    assert sum(b.get() for b in metrics().webhook_latency._buckets) == latencies + 1
    # A duplicate message of a delivered delivery sends nothing.
    assert attempt(e2e_db, hook_settings, delivery_id).result is Result.SKIPPED
    assert len(httpserver.log) == 1


@pytest.mark.parametrize(("status", "honoured"), [(503, True), (429, True), (400, False)], ids=str)
def test_retry_after_is_honoured_on_429_and_5xx_only(
    hook_settings: Settings,
    e2e_db: Engine,
    httpserver: HTTPServer,
    delivery: Callable[[str], int],
    status: int,
    honoured: bool,
) -> None:
    delivery_id = delivery("/busy")
    httpserver.expect_oneshot_request("/busy").respond_with_data(
        "", status=status, headers={"Retry-After": "7"}
    )

    done = attempt(e2e_db, hook_settings, delivery_id)

    assert done.result is Result.RETRIED
    found = row(e2e_db, delivery_id)
    assert (found.status, found.last_response_status) == ("pending", status)
    assert found.last_error == f"HTTP {status}"
    if honoured:
        assert done.retry_in == 7
        assert 5 < seconds_until(found.next_attempt_at) <= 7
    else:
        assert done.retry_in is not None and 270 <= done.retry_in <= 330  # 300 s, jittered
        assert 260 < seconds_until(found.next_attempt_at) <= 330


def test_retry_after_as_an_http_date(
    hook_settings: Settings, e2e_db: Engine, httpserver: HTTPServer, delivery: Callable[[str], int]
) -> None:
    delivery_id = delivery("/dated")
    later = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=90)
    httpserver.expect_oneshot_request("/dated").respond_with_data(
        "", status=503, headers={"Retry-After": email.utils.format_datetime(later, usegmt=True)}
    )
    done = attempt(e2e_db, hook_settings, delivery_id)
    assert done.retry_in is not None and 85 <= done.retry_in <= 90


def test_a_slow_receiver_times_out_and_is_tried_again(
    hook_settings: Settings, e2e_db: Engine, httpserver: HTTPServer, delivery: Callable[[str], int]
) -> None:
    delivery_id = delivery("/slow")
    release = threading.Event()

    def hang(request: Request) -> Response:
        release.wait(10)  # the receiver is slow; the attempt must not wait for it
        return Response(status=200)

    httpserver.expect_oneshot_request("/slow").respond_with_handler(hang)
    try:
        done = attempt(e2e_db, hook_settings, delivery_id)
    finally:
        release.set()
    assert done.result is Result.RETRIED
    found = row(e2e_db, delivery_id)
    assert found.last_response_status is None
    assert "Timeout" in (found.last_error or ""), found.last_error


def test_a_redirect_is_not_followed(
    hook_settings: Settings, e2e_db: Engine, httpserver: HTTPServer, delivery: Callable[[str], int]
) -> None:
    delivery_id = delivery("/moved")
    httpserver.expect_oneshot_request("/moved").respond_with_data(
        "", status=307, headers={"Location": httpserver.url_for("/elsewhere")}
    )
    done = attempt(e2e_db, hook_settings, delivery_id)
    assert done.result is Result.RETRIED
    assert [request.path for request, _ in httpserver.log] == ["/moved"]
    assert row(e2e_db, delivery_id).last_response_status == 307


def test_the_last_attempt_of_the_schedule_fails_it(
    hook_settings: Settings, e2e_db: Engine, httpserver: HTTPServer, delivery: Callable[[str], int]
) -> None:
    delivery_id = delivery("/down")
    httpserver.expect_request("/down").respond_with_data("", status=500)
    immediate = dataclasses.replace(hook_settings, webhook_retry_schedule=(0,))

    assert attempt(e2e_db, immediate, delivery_id).result is Result.RETRIED
    found = row(e2e_db, delivery_id)
    assert (found.status, found.attempts) == ("pending", 1)
    assert attempt(e2e_db, immediate, delivery_id).result is Result.FAILED
    found = row(e2e_db, delivery_id)
    assert (found.status, found.attempts, found.next_attempt_at) == ("failed", 2, None)
    assert len(httpserver.log) == 2


def test_a_disabled_endpoint_fails_its_pending_deliveries_without_sending(
    hook_settings: Settings, e2e_db: Engine, httpserver: HTTPServer, delivery: Callable[[str], int]
) -> None:
    delivery_id = delivery("/off")
    with Session(e2e_db) as session, session.begin():
        session.get_one(Webhook, row(e2e_db, delivery_id).webhook_id).enabled = False
    assert attempt(e2e_db, hook_settings, delivery_id).result is Result.FAILED
    assert row(e2e_db, delivery_id).last_error == "the endpoint is disabled"
    assert httpserver.log == []


def test_a_delivery_not_yet_due_is_left_alone(
    hook_settings: Settings, e2e_db: Engine, httpserver: HTTPServer, delivery: Callable[[str], int]
) -> None:
    delivery_id = delivery("/early")
    httpserver.expect_request("/early").respond_with_data("", status=500)
    assert attempt(e2e_db, hook_settings, delivery_id).result is Result.RETRIED
    # A duplicate of the message, or the countdown's message come early: not due yet.
    assert attempt(e2e_db, hook_settings, delivery_id).result is Result.SKIPPED
    assert row(e2e_db, delivery_id).attempts == 1
    assert len(httpserver.log) == 1


def test_the_schedule_is_jittered_within_a_tenth() -> None:
    delays = {next_delay((100.0, 200.0), 2, 500, None) for _ in range(50)}
    assert all(180 <= delay <= 220 for delay in delays)
    assert len(delays) > 1
    # Retry-After never asks for more than the schedule's longest wait.
    assert next_delay((100.0, 200.0), 1, 503, 10_000) == 200
    # Without an answer (a timeout), there is no Retry-After to honour.
    assert next_delay((100.0, 200.0), 1, None, 5) >= 90
