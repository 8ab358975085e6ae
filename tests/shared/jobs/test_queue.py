"""The broker side of the shared Celery configuration, against real brokers: quorum queues
and publisher confirms on RabbitMQ, and the job ids waiting in a Redis broker."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterator

import orjson
import pytest
from amqp.exceptions import MessageNacked
from kombu.exceptions import OperationalError

from shared.jobs.queue import create_celery, job_ids_in_broker, publish_job
from shared.settings import Settings
from tests.conftest import purge
from tests.servers import PrivateVhost, amqp_reachable, amqp_url, rabbitmqctl


@pytest.fixture
def vhost() -> Iterator[PrivateVhost]:
    if not amqp_reachable(amqp_url()) or rabbitmqctl() is None:
        pytest.skip(f"needs RabbitMQ at {amqp_url()} and rabbitmqctl")
    with PrivateVhost(amqp_url()) as private:
        yield private


def on(vhost: PrivateVhost, settings: Settings) -> Settings:
    return dataclasses.replace(settings, broker_url=vhost.url, queue="jobs")


def test_rabbitmq_queues_are_quorum_queues(vhost: PrivateVhost, settings: Settings) -> None:
    amqp = on(vhost, settings)
    publish_job(create_celery(amqp), str(uuid.uuid4()), 0)
    listed = vhost.ctl("list_queues", "-p", vhost.name, "--no-table-headers", "name", "type")
    types = dict(line.split() for line in listed.splitlines() if line.strip())
    assert types["jobs"] == "quorum"


def test_a_message_rabbitmq_refuses_fails_the_publish(
    vhost: PrivateVhost, settings: Settings
) -> None:
    # A full queue that refuses new messages: without confirms the publish would "succeed"
    # and the message be dropped; with them the caller knows, and leaves it to the sweeper.
    amqp = on(vhost, settings)
    app = create_celery(amqp)
    publish_job(app, str(uuid.uuid4()), 0)  # declares the queue
    limit = '{"max-length": 0, "overflow": "reject-publish"}'
    vhost.ctl("set_policy", "-p", vhost.name, "--apply-to", "queues", "full", "^jobs$", limit)
    with pytest.raises(OperationalError) as refused:
        publish_job(create_celery(amqp), str(uuid.uuid4()), 0)
    assert isinstance(refused.value.__cause__, MessageNacked)


def test_redis_lists_the_jobs_waiting_and_not_those_taken(settings: Settings) -> None:
    if not settings.celery_broker_url.startswith("redis"):
        pytest.skip("the session's broker is not Redis")
    own = dataclasses.replace(settings, queue=f"{settings.queue}-listed-{uuid.uuid4().hex[:6]}")
    app = create_celery(own)
    waiting = [str(uuid.uuid4()) for _ in range(3)]
    try:
        for rank, job_id in enumerate(waiting):
            publish_job(app, job_id, rank)  # one list per priority level
        assert job_ids_in_broker(app, own.queue) == set(waiting)
        with app.connection_for_write() as connection:
            channel = connection.default_channel
            # As a worker takes one, unacknowledged until the job is done: if that worker
            # dies first, the queued job must look lost, not wait out the visibility timeout.
            taken = channel.basic_get(own.queue)
            assert taken is not None
            (job_id,), _, _ = orjson.loads(taken.body)  # the task's arguments: the job id
            assert job_ids_in_broker(app, own.queue) == set(waiting) - {job_id}
            channel.basic_reject(taken.delivery_tag, requeue=True)
    finally:
        purge(own, own.queue)
