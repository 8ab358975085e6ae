"""The Celery app both sides share: its configuration, set once, and how jobs are published."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import orjson
from celery import Celery
from kombu.entity import Exchange, Queue

from shared.jobs.fairness import MAX_RANK, message_priority
from shared.settings import Settings, is_amqp

PROCESS_JOB = "timebatch.process_job"
SWEEP_JOBS = "timebatch.sweep_jobs"
PURGE_JOBS = "timebatch.purge_jobs"
RECOVER_AFTER_OUTAGE = "timebatch.recover_after_outage"
DELIVER_WEBHOOK = "timebatch.deliver_webhook"


# A publish to a dead broker fails at once instead of retrying for seconds inside a web
# request (the sweeper publishes the job later).
NO_PUBLISH_RETRY = {"max_retries": 0}


def _broker_config(settings: Settings) -> dict[str, Any]:
    """RabbitMQ: quorum queues, replicated and durable, as Celery recommends where messages
    must survive a node; topic exchanges, which Celery's native delayed delivery (a retry's
    countdown on quorum queues) needs. Celery then also drops global QoS, which quorum
    queues refuse. Redis: the default queues, one list per priority step."""
    if not is_amqp(settings.celery_broker_url):
        return {
            "broker_transport_options": {
                # Redis redelivers unacked messages after the visibility timeout: keep it
                # well above the hard limit so a healthy long job is not handed to a second
                # worker.
                "visibility_timeout": settings.job_time_limit * 4,
                **NO_PUBLISH_RETRY,
                # One list per level, a free worker takes from the first non-empty one
                # (shared/jobs/fairness.py); housekeeping, sent without a priority, goes first.
                "priority_steps": list(range(MAX_RANK + 1)),
                "sep": ":",
                "queue_order_strategy": "priority",
            }
        }
    return {
        "task_queues": [
            _quorum_queue(name)
            for name in (settings.queue, settings.housekeeping_queue, settings.webhooks_queue)
        ],
        "task_default_exchange_type": "topic",
        # A publish returns once RabbitMQ has taken the message: a 202 means it is queued.
        "broker_transport_options": {"confirm_publish": True, **NO_PUBLISH_RETRY},
    }


def _quorum_queue(name: str) -> Queue:
    exchange = Exchange(name, type="topic")  # type: ignore[no-untyped-call]
    return Queue(  # type: ignore[no-untyped-call]
        name, exchange, routing_key=name, queue_arguments={"x-queue-type": "quorum"}
    )


def celery_config(settings: Settings) -> dict[str, Any]:
    hard_limit = settings.job_time_limit
    return {
        "broker_url": settings.celery_broker_url,
        "task_serializer": "json",
        "accept_content": ["json"],
        "result_backend": None,
        "task_ignore_result": True,
        "task_default_queue": settings.queue,
        "task_routes": {
            PROCESS_JOB: {"queue": settings.queue},
            # Housekeeping has a queue of its own that every worker consumes too: a sweep
            # waits for a free worker process, never behind the jobs queued before it.
            SWEEP_JOBS: {"queue": settings.housekeeping_queue},
            PURGE_JOBS: {"queue": settings.housekeeping_queue},
            RECOVER_AFTER_OUTAGE: {"queue": settings.housekeeping_queue},
            # Deliveries wait on receivers: consumed by the webhooks process's threads.
            DELIVER_WEBHOOK: {"queue": settings.webhooks_queue},
        },
        # A job's effect commits with its status; acking late means a lost worker's job is
        # delivered again, and the job lock makes the second delivery harmless.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_soft_time_limit": hard_limit - 5,
        "task_time_limit": hard_limit,
        **_broker_config(settings),
        "broker_connection_retry_on_startup": True,
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        # A web request must not hang on a dead broker: the job row is stored already and the
        # sweeper publishes it later.
        "broker_pool_acquire_timeout": 5,
        "broker_connection_timeout": 5,
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "worker_hijack_root_logger": False,
        "timezone": "UTC",
    }


def create_celery(settings: Settings) -> Celery:
    app = Celery("timebatch", set_as_current=False)
    app.conf.update(celery_config(settings))
    return app


def publish_job(app: Celery, job_id: str, rank: int) -> None:
    """Send the job id (only the id) to the workers. Call after the job row is committed.

    The task id is the job id, so Flower finds a job by its id; the priority is its rank's.
    """
    priority = message_priority(rank, app.conf.broker_url)
    app.send_task(PROCESS_JOB, args=[job_id], task_id=job_id, priority=priority, retry=False)


def publish_deliveries(app: Celery, delivery_ids: Iterable[int], countdown: float = 0) -> None:
    """Send webhook delivery ids to the webhooks queue. Call after their rows are committed;
    a lost message is sent again by the sweeper."""
    # Whole seconds: RabbitMQ's native delayed delivery (quorum queues) routes by them.
    delay = math.ceil(countdown) or None
    for delivery_id in delivery_ids:
        app.send_task(DELIVER_WEBHOOK, args=[delivery_id], countdown=delay, retry=False)


def queue_depth(app: Celery, queue: str) -> int:
    """Messages waiting in the queue; those a worker has taken but not acknowledged are not."""
    with app.connection_for_read() as connection:
        connection.ensure_connection(max_retries=1, timeout=2)
        try:
            declared = connection.default_channel.queue_declare(queue=queue, passive=True)
        except connection.channel_errors:
            # Redis keeps no empty queue, and an AMQP queue exists once a worker declared it.
            return 0
        return int(declared.message_count)


def job_ids_in_broker(app: Celery, queue: str) -> set[str] | None:
    """The ids of the jobs whose messages wait in the queue; None where the broker cannot
    list them without consuming them (RabbitMQ).

    Messages a worker has taken and not acknowledged do not count: a job still queued while
    its message is taken was taken by a worker that died before it could start the job (or
    holds a retry's countdown, which a copy then overtakes, harmlessly). Redis would give
    such a message back only after its visibility timeout, an hour with the defaults.
    """
    if is_amqp(app.conf.broker_url):
        return None
    with app.connection_for_read() as connection:
        connection.ensure_connection(max_retries=1, timeout=2)
        channel = connection.default_channel
        with channel.client.pipeline(transaction=False) as pipe:
            for priority in channel.priority_steps:
                pipe.lrange(channel._q_for_pri(queue, priority), 0, -1)
            waiting = pipe.execute()
    # Celery's message protocol 2 carries the task id, which is the job id, in its headers.
    return {
        str(orjson.loads(raw).get("headers", {}).get("id")) for level in waiting for raw in level
    }
