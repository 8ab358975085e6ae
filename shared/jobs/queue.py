"""The Celery app both sides share: its configuration, set once, and how jobs are published."""

from __future__ import annotations

from typing import Any

from celery import Celery

from shared.jobs.fairness import MAX_RANK, message_priority
from shared.settings import Settings

PROCESS_JOB = "timebatch.process_job"
SWEEP_JOBS = "timebatch.sweep_jobs"
PURGE_JOBS = "timebatch.purge_jobs"


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
        },
        # A job's effect commits with its status; acking late means a lost worker's job is
        # delivered again, and the job lock makes the second delivery harmless.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_soft_time_limit": hard_limit - 5,
        "task_time_limit": hard_limit,
        # Redis redelivers unacked messages after the visibility timeout: keep it well above
        # the hard limit so a healthy long job is not handed to a second worker.
        # max_retries 0: a publish to a dead broker fails at once instead of retrying for
        # seconds inside a web request (the sweeper publishes the job later).
        "broker_transport_options": {
            "visibility_timeout": hard_limit * 4,
            "max_retries": 0,
            # Redis: one list per level, a free worker takes from the first non-empty one
            # (shared/jobs/fairness.py); housekeeping, sent without a priority, goes first.
            "priority_steps": list(range(MAX_RANK + 1)),
            "sep": ":",
            "queue_order_strategy": "priority",
        },
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
