"""The broker restarted, or its queued messages lost, with 20 jobs queued and some running:
every job ends 201, once, within the 30 seconds the defaults promise.

Restart on Redis: a private `redis-server`, killed and started again; it keeps nothing on
disk, so every queued message and every unacknowledged one is gone. On RabbitMQ: every
connection of a private virtual host closed, as a node restart does; quorum queues keep
their messages. Either way Celery cancels the tasks running when the connection drops.
Loss: the queue purged, the connections left alone. Nothing here runs the sweeper by hand:
the worker (with beat inside, as a deployment has) recovers on its own, with the defaults.
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, select

from api import create_app
from shared.settings import Settings
from shared.store.engine import make_session_factory
from shared.store.models import Job
from tests.checked_client import CheckedClient
from tests.conftest import purge, queued
from tests.e2e.conftest import WorkerProcess
from tests.e2e.test_pipeline import create_doc, entry_count
from tests.jobclient import JobClient, eventually
from tests.servers import PrivateRedis, PrivateVhost, amqp_url, free_port, rabbitmqctl

pytestmark = pytest.mark.e2e

JOBS = 20
ENTRIES = 2000
RECOVERY_LIMIT = 30.0
# Celery's line for each failed try: "... Trying again in 4.00 seconds... (3/100)".
RETRY_IN = re.compile(r"Trying again in (\d+\.\d+) seconds")


class Broker:
    """A broker of the test's own, and the restart its kind allows."""

    def __init__(self, kind: str, workdir: Path) -> None:
        self.kind = kind
        self.redis = PrivateRedis(workdir) if kind == "redis" else None
        self.vhost = None if kind == "redis" else PrivateVhost(amqp_url())

    @property
    def url(self) -> str:
        return self.redis.url if self.redis is not None else self.vhost.url  # type: ignore[union-attr]

    def start(self) -> None:
        if self.redis is not None:
            self.redis.start()
        else:
            assert self.vhost is not None
            self.vhost.create()

    def restart(self) -> None:
        if self.redis is not None:
            self.redis.restart(down_for=1.0)
        else:
            assert self.vhost is not None
            assert self.vhost.close_connections() >= 1

    def stop(self) -> None:
        if self.redis is not None:
            self.redis.kill()
        elif self.vhost is not None:
            self.vhost.delete()


@pytest.fixture
def own_broker(broker_kind: str, tmp_path: Path) -> Iterator[Broker]:
    if broker_kind == "amqp" and rabbitmqctl() is None:
        pytest.skip("closing a vhost's connections needs rabbitmqctl")
    broker = Broker(broker_kind, tmp_path / "broker")
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture
def restart_settings(e2e_settings: Settings, own_broker: Broker) -> Settings:
    # The defaults of a deployment for every recovery rule: nothing shortened for the test.
    return dataclasses.replace(
        e2e_settings, broker_url=own_broker.url, queue=f"{e2e_settings.queue}-restart"
    )


def unfinished(engine: Engine, job_ids: list[str]) -> int:
    with engine.connect() as connection:
        return (
            connection.scalar(
                select(func.count())
                .select_from(Job)
                .where(
                    Job.id.in_([uuid.UUID(i) for i in job_ids]),
                    Job.status.in_(["queued", "running"]),
                )
            )
            or 0
        )


@pytest.fixture
def client(restart_settings: Settings, e2e_db: Engine) -> JobClient:
    app = create_app(restart_settings, sessions=make_session_factory(e2e_db))
    app.test_client_class = CheckedClient
    return JobClient(app.test_client())


def some_mid_job(engine: Engine) -> bool:
    with engine.connect() as connection:
        return bool(
            connection.scalar(
                select(func.count())
                .select_from(Job)
                .where(Job.status == "running", Job.processed > 0)
            )
        )


@pytest.mark.parametrize("fault", ["restart", "loss"])
def test_every_job_ends_once_soon_after_the_broker_fault(
    fault: str,
    restart_settings: Settings,
    own_broker: Broker,
    client: JobClient,
    e2e_db: Engine,
    e2e_auth: Any,
    worker_factory: Any,
    broker_kind: str,
) -> None:
    headers = e2e_auth(7781)
    before = entry_count(e2e_db)
    worker = worker_factory(restart_settings, beat=True)
    accepted = [
        client.submit("POST", "/api/v2/time_entries", create_doc(ENTRIES, note=f"j{n}"), headers)
        for n in range(JOBS)
    ]
    job_ids = [a.json["data"]["id"] for a in accepted]  # type: ignore[index]
    eventually(lambda: some_mid_job(e2e_db), what="a job running with progress")
    if fault == "restart":
        own_broker.restart()
    else:
        assert queued(restart_settings, restart_settings.queue) > 0
        purge(restart_settings, restart_settings.queue)
    back = time.monotonic()
    eventually(
        lambda: unfinished(e2e_db, job_ids) == 0,
        timeout=120,
        what=f"every job finishing after the broker {fault}",
    )
    recovery = time.monotonic() - back
    print(f"\n{broker_kind} {fault}: the last of {JOBS} jobs finished {recovery:.1f} s later")

    outcomes = [client.follow(a, headers) for a in accepted]
    assert [o.status for o in outcomes] == [201] * JOBS
    assert all(len(o.document["data"]) == ENTRIES for o in outcomes)
    assert entry_count(e2e_db) == before + JOBS * ENTRIES  # each applied exactly once
    assert worker.process is not None and worker.process.poll() is None
    assert recovery <= RECOVERY_LIMIT


def test_a_worker_tries_a_lost_broker_again_every_few_seconds(
    e2e_settings: Settings, broker_kind: str, tmp_path: Path
) -> None:
    """kombu's own backoff grows to 30 s between tries: a worker would find a broker back
    after a long outage up to that late. Ours is capped at a few seconds."""
    port = free_port()  # nothing listens there: the broker is away
    url = (
        f"redis://127.0.0.1:{port}/0"
        if broker_kind == "redis"
        else (f"amqp://guest:guest@127.0.0.1:{port}//")
    )
    away = dataclasses.replace(e2e_settings, broker_url=url, queue=f"{e2e_settings.queue}-away")
    log = tmp_path / "worker.log"
    worker = WorkerProcess(away, log, "away")
    with log.open("ab") as out:
        worker.process = subprocess.Popen(
            worker.command(), env=os.environ | away.as_env(), stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        waits: list[float] = []

        def tried_four_times() -> bool:
            waits[:] = [float(m) for m in RETRY_IN.findall(log.read_text(errors="replace"))]
            return len(waits) >= 4

        eventually(tried_four_times, timeout=60, what="four tries of the missing broker")
    finally:
        worker.kill()
    # kombu alone: 2, 4, 6, 8 ... 30.
    assert waits[:4] == [2.0, 4.0, 4.0, 4.0]
