"""Webhooks end to end: a real worker ends the job, the webhooks process's threads deliver to
a real HTTP receiver in this process, which verifies each delivery with the Standard
Webhooks package."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest
from pytest_httpserver import HTTPServer
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session
from standardwebhooks import Webhook as Verifier
from werkzeug import Request, Response

from api import create_app
from shared.settings import Settings
from shared.store.engine import make_session_factory
from shared.store.models import DeliveryStatus, Job, JobStatus, Webhook, WebhookDelivery
from shared.webhooks.endpoints import new_secret
from tests.checked_client import CheckedClient
from tests.e2e.conftest import WorkerProcess
from tests.factories import create_resource
from tests.jobclient import BULK, JobClient, eventually

pytestmark = pytest.mark.e2e

EVENTS = ["job.succeeded", "job.failed", "job.canceled"]


class Receiver:
    """An endpoint on a real HTTP server: answers each delivery with the next of `answers`
    (the last one repeats), and keeps what arrived."""

    def __init__(self, server: HTTPServer, path: str, answers: list[int] | None = None) -> None:
        self.server = server
        self.path = path
        self.answers = list(answers or [204])
        self.received: list[tuple[dict[str, str], bytes]] = []
        self._lock = threading.Lock()
        server.expect_request(path, method="POST").respond_with_handler(self._answer)

    @property
    def url(self) -> str:
        return self.server.url_for(self.path)

    def _answer(self, request: Request) -> Response:
        with self._lock:
            self.received.append((dict(request.headers), request.get_data()))
            status = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        return Response(status=status)

    def count(self) -> int:
        with self._lock:
            return len(self.received)


@pytest.fixture
def hook_settings(e2e_settings: Settings) -> Settings:
    """A local receiver is a private target: allowed here; retries a second apart."""
    return dataclasses.replace(
        e2e_settings,
        webhook_allow_private=True,
        webhook_retry_schedule=(0.3, 0.3, 0.3),
        webhook_timeout=3,
        sweep_interval=1,
    )


@pytest.fixture
def deliverer(
    worker_factory: Callable[..., WorkerProcess], hook_settings: Settings
) -> WorkerProcess:
    return worker_factory(hook_settings, webhooks=True)


@pytest.fixture
def hook_client(hook_settings: Settings, e2e_db: Engine) -> JobClient:
    app = create_app(hook_settings, sessions=make_session_factory(e2e_db))
    app.test_client_class = CheckedClient
    return JobClient(app.test_client())


@pytest.fixture
def endpoint(e2e_db: Engine) -> Callable[..., tuple[int, str]]:
    """An endpoint of an organization, stored as the API stores one: its id and secret."""

    def make(url: str, organization_id: int = 2110, events: list[str] = EVENTS) -> tuple[int, str]:
        secret = new_secret()
        with Session(e2e_db) as session:
            hook = Webhook(organization_id=organization_id, url=url, events=events, secret=secret)
            session.add(hook)
            session.commit()
            return hook.id, secret

    return make


def deliveries(engine: Engine, webhook_id: int) -> list[WebhookDelivery]:
    with Session(engine) as session:
        return list(
            session.scalars(
                select(WebhookDelivery)
                .where(WebhookDelivery.webhook_id == webhook_id)
                .order_by(WebhookDelivery.id)
            )
        )


def settled(engine: Engine, webhook_id: int, count: int = 1) -> Callable[[], bool]:
    def check() -> bool:
        found = deliveries(engine, webhook_id)
        return len(found) >= count and all(d.status != DeliveryStatus.PENDING for d in found)

    return check


def the_delivery(engine: Engine, webhook_id: int, what: str = "the delivery") -> WebhookDelivery:
    """The endpoint's one delivery, once it is no longer pending."""
    eventually(settled(engine, webhook_id), what=what)
    (delivery,) = deliveries(engine, webhook_id)
    return delivery


def create_job(jobs: JobClient, auth: dict[str, str], entries: int = 3) -> str:
    document = {"data": [create_resource(note=f"hook {i}") for i in range(entries)]}
    accepted = jobs.submit("POST", "/api/v2/time_entries", document, auth)
    outcome = jobs.follow(accepted, auth)
    assert outcome.status == 201, outcome.result.data
    return outcome.job_url.rsplit("/", 1)[1]


def verified(secret: str, received: list[tuple[dict[str, str], bytes]]) -> list[Any]:
    verifier = Verifier(secret)
    return [verifier.verify(body, headers) for headers, body in received]


def test_a_jobs_webhook_arrives_signed_and_verified(
    hook_client: JobClient,
    e2e_auth: Any,
    httpserver: HTTPServer,
    deliverer: WorkerProcess,
    worker: WorkerProcess,
    e2e_db: Engine,
) -> None:
    receiver = Receiver(httpserver, "/hooks/signed")
    manager = e2e_auth(7782)
    registered = hook_client.client.post(
        "/api/v2/webhooks",
        data=orjson.dumps({"data": {"type": "webhooks", "attributes": {"url": receiver.url}}}),
        headers={"Content-Type": "application/vnd.api+json", **manager},
    )
    assert registered.status_code == 201, registered.data
    hook = registered.get_json()["data"]
    job_id = create_job(hook_client, e2e_auth())

    eventually(settled(e2e_db, int(hook["id"])), what="the delivery")
    (body,) = verified(hook["attributes"]["secret"], receiver.received)
    assert body["type"] == "job.succeeded"
    assert body["data"] == {
        "id": job_id,
        "type": "jobs",
        "attributes": {
            "operation": "create",
            "status": "succeeded",
            "result_status": 201,
            "total": 3,
            "errors": 0,
        },
        "links": {"self": f"/api/v2/jobs/{job_id}", "result": f"/api/v2/jobs/{job_id}/result"},
    }
    # The links are the API's own: the result answers as the job's result does.
    result = hook_client.client.get(body["data"]["links"]["result"], headers=e2e_auth())
    assert result.status_code == 201
    (delivery,) = deliveries(e2e_db, int(hook["id"]))
    headers = receiver.received[0][0]
    assert headers["Webhook-Id"] == delivery.message_id
    assert (delivery.status, delivery.attempts, delivery.last_response_status) == (
        DeliveryStatus.DELIVERED,
        1,
        204,
    )
    # Listed for the endpoint's managers.
    listed = hook_client.client.get(f"/api/v2/webhooks/{hook['id']}/deliveries", headers=manager)
    assert [d["attributes"]["status"] for d in listed.get_json()["data"]] == ["delivered"]


def test_a_failing_receiver_gets_the_same_delivery_until_it_answers_2xx(
    hook_client: JobClient,
    e2e_auth: Any,
    httpserver: HTTPServer,
    endpoint: Callable[..., tuple[int, str]],
    deliverer: WorkerProcess,
    worker: WorkerProcess,
    e2e_db: Engine,
) -> None:
    receiver = Receiver(httpserver, "/hooks/flaky", answers=[500, 500, 200])
    hook_id, secret = endpoint(receiver.url)
    create_job(hook_client, e2e_auth())

    delivery = the_delivery(e2e_db, hook_id)
    assert (delivery.status, delivery.attempts, delivery.last_response_status) == (
        DeliveryStatus.DELIVERED,
        3,
        200,
    )
    assert receiver.count() == 3
    assert {headers["Webhook-Id"] for headers, _ in receiver.received} == {delivery.message_id}
    assert len({body for _, body in receiver.received}) == 1
    assert len(verified(secret, receiver.received)) == 3


def test_410_disables_the_endpoint(
    hook_client: JobClient,
    e2e_auth: Any,
    httpserver: HTTPServer,
    endpoint: Callable[..., tuple[int, str]],
    deliverer: WorkerProcess,
    worker: WorkerProcess,
    e2e_db: Engine,
) -> None:
    receiver = Receiver(httpserver, "/hooks/gone", answers=[410])
    hook_id, _ = endpoint(receiver.url)
    create_job(hook_client, e2e_auth())

    delivery = the_delivery(e2e_db, hook_id)
    assert (delivery.status, delivery.attempts, delivery.last_response_status) == (
        DeliveryStatus.FAILED,
        1,
        410,
    )
    with Session(e2e_db) as session:
        assert session.get_one(Webhook, hook_id).enabled is False
    # A disabled endpoint is not told of later jobs.
    create_job(hook_client, e2e_auth())
    assert len(deliveries(e2e_db, hook_id)) == 1
    assert receiver.count() == 1


def test_a_worker_killed_right_after_the_jobs_commit_still_leads_to_a_delivery(
    hook_client: JobClient,
    hook_settings: Settings,
    e2e_auth: Any,
    httpserver: HTTPServer,
    endpoint: Callable[..., tuple[int, str]],
    deliverer: WorkerProcess,
    worker_factory: Callable[..., WorkerProcess],
    e2e_db: Engine,
) -> None:
    """A process runs the job as the worker task does and is SIGKILLed the moment run_job
    returns: the commit is made, no delivery was published. The sweeper (beat) finds it."""
    receiver = Receiver(httpserver, "/hooks/orphan")
    hook_id, secret = endpoint(receiver.url)
    idle = dataclasses.replace(hook_settings, queue=f"{hook_settings.queue}-idle")
    idle_client = JobClient(create_app(idle, sessions=make_session_factory(e2e_db)).test_client())
    document = {"data": [create_resource(note="orphan")]}
    accepted = idle_client.submit("POST", "/api/v2/time_entries", document, e2e_auth())
    job_id = accepted.get_json()["data"]["id"]
    script = (
        "import os, signal, sys, uuid\n"
        "from shared.jobs.runner import run_job\n"
        "from shared.settings import Settings\n"
        "from shared.store.engine import make_engine\n"
        "run_job(make_engine(Settings.from_env()), uuid.UUID(sys.argv[1]), max_runs=5)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    died = subprocess.run(
        [sys.executable, "-c", script, job_id],
        env=os.environ | idle.as_env(),
        timeout=60,
        check=False,
    )
    assert died.returncode == -signal.SIGKILL
    with Session(e2e_db) as session:
        assert session.get_one(Job, job_id).status == JobStatus.SUCCEEDED
        (orphan,) = session.scalars(select(WebhookDelivery).where(WebhookDelivery.job_id == job_id))
        assert orphan.published_at is None and orphan.status == DeliveryStatus.PENDING

    worker_factory(hook_settings, beat=True)  # the sweeps a deployment's beat sends
    eventually(settled(e2e_db, hook_id), timeout=30, what="the swept delivery")
    (body,) = verified(secret, receiver.received)
    assert body["data"]["id"] == job_id


def test_another_organizations_endpoint_hears_nothing(
    hook_client: JobClient,
    e2e_auth: Any,
    httpserver: HTTPServer,
    endpoint: Callable[..., tuple[int, str]],
    deliverer: WorkerProcess,
    worker: WorkerProcess,
    e2e_db: Engine,
) -> None:
    ours = Receiver(httpserver, "/hooks/ours")
    theirs = Receiver(httpserver, "/hooks/theirs")
    our_hook, _ = endpoint(ours.url, organization_id=2110)
    their_hook, _ = endpoint(theirs.url, organization_id=2111)
    create_job(hook_client, e2e_auth(7781))

    eventually(settled(e2e_db, our_hook), what="our delivery")
    assert deliveries(e2e_db, their_hook) == []
    assert (ours.count(), theirs.count()) == (1, 0)


def test_a_canceled_job_is_told_as_canceled(
    hook_settings: Settings,
    e2e_auth: Any,
    httpserver: HTTPServer,
    endpoint: Callable[..., tuple[int, str]],
    worker_factory: Callable[..., WorkerProcess],
    e2e_db: Engine,
) -> None:
    receiver = Receiver(httpserver, "/hooks/canceled")
    hook_id, secret = endpoint(receiver.url, events=["job.canceled"])
    # No worker takes this queue's jobs: the job stays queued until canceled.
    idle = dataclasses.replace(hook_settings, queue=f"{hook_settings.queue}-cancel")
    worker_factory(idle, webhooks=True)
    client = create_app(idle, sessions=make_session_factory(e2e_db)).test_client()
    auth = e2e_auth()
    accepted = JobClient(client).submit(
        "POST", "/api/v2/time_entries", {"data": [create_resource()]}, auth
    )
    job_id = accepted.get_json()["data"]["id"]
    canceled = client.delete(f"/api/v2/jobs/{job_id}", headers={"Accept": BULK, **auth})
    assert canceled.status_code == 200, canceled.data

    eventually(settled(e2e_db, hook_id), what="the delivery")
    (body,) = verified(secret, receiver.received)
    assert body["type"] == "job.canceled"
    assert body["data"]["attributes"]["status"] == "canceled"
    assert body["data"]["links"]["result"] is None


def test_a_private_target_is_refused_at_delivery_too(
    hook_settings: Settings,
    hook_client: JobClient,
    e2e_auth: Any,
    httpserver: HTTPServer,
    endpoint: Callable[..., tuple[int, str]],
    worker_factory: Callable[..., WorkerProcess],
    worker: WorkerProcess,
    e2e_db: Engine,
) -> None:
    """An endpoint whose name resolved to a public address when it was registered, and to a
    loopback one now (DNS rebinding): the delivering process checks the address it connects
    to, and never sends."""
    receiver = Receiver(httpserver, "/hooks/rebound")
    hook_id, _ = endpoint(receiver.url)
    strict = dataclasses.replace(
        hook_settings, webhook_allow_private=False, webhook_retry_schedule=(0.2,)
    )
    worker_factory(strict, webhooks=True)
    create_job(hook_client, e2e_auth())

    delivery = the_delivery(e2e_db, hook_id, "the refused delivery")
    assert (delivery.status, delivery.attempts, delivery.last_response_status) == (
        DeliveryStatus.FAILED,
        2,
        None,
    )
    assert "InvalidIPAddress" in (delivery.last_error or ""), delivery.last_error
    assert receiver.count() == 0
    # And the API refuses to register it in the first place.
    manager = e2e_auth(7782)
    app = create_app(strict, sessions=make_session_factory(e2e_db))
    refused = app.test_client().post(
        "/api/v2/webhooks",
        data=orjson.dumps({"data": {"type": "webhooks", "attributes": {"url": receiver.url}}}),
        headers={"Content-Type": "application/vnd.api+json", **manager},
    )
    assert refused.status_code == 422
    assert refused.get_json()["errors"][0]["source"]["pointer"] == "/data/attributes/url"
    with Session(e2e_db) as session:
        assert session.scalar(select(func.count()).select_from(Webhook)) == 1


@pytest.fixture(autouse=True)
def _clear_receiver(httpserver: HTTPServer) -> Iterator[None]:
    yield
    httpserver.clear()
