"""Every setting timebatch reads, from environment variables only.

This is the one module that looks at the environment. Each key is converted
explicitly; a bad value fails at startup with a message naming the key.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

PLACEHOLDERS = frozenset({"changeme", "change-me", "placeholder", "xxx", "todo", "secret"})


class SettingsError(ValueError):
    """A setting is missing, malformed or still a placeholder."""


def _text(env: Mapping[str, str], key: str) -> str | None:
    value = env.get(key)
    if value is None or value.strip() == "":
        return None
    value = value.strip()
    if value.lower() in PLACEHOLDERS or (value.startswith("<") and value.endswith(">")):
        raise SettingsError(f"{key} is still a placeholder ({value!r}); set a real value")
    return value


def _int(env: Mapping[str, str], key: str, default: int, *, minimum: int, maximum: int) -> int:
    raw = _text(env, key)
    if raw is None:
        return default
    try:
        value = int(raw, 10)
    except ValueError:
        raise SettingsError(f"{key} must be a whole number, got {raw!r}") from None
    if not minimum <= value <= maximum:
        raise SettingsError(f"{key} must be between {minimum} and {maximum}, got {value}")
    return value


def _bool(env: Mapping[str, str], key: str, default: bool) -> bool:
    raw = _text(env, key)
    if raw is None:
        return default
    lowered = raw.lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise SettingsError(f"{key} must be a boolean (1/0, true/false), got {raw!r}")


def _database_url(env: Mapping[str, str], key: str) -> str | None:
    raw = _text(env, key)
    if raw is None:
        return None
    if raw.startswith("postgres://"):
        raw = "postgresql+psycopg://" + raw.removeprefix("postgres://")
    elif raw.startswith("postgresql://"):
        raw = "postgresql+psycopg://" + raw.removeprefix("postgresql://")
    if not raw.startswith("postgresql+psycopg://"):
        raise SettingsError(f"{key} must be a postgresql+psycopg:// URL, got scheme of {raw!r}")
    return raw


AMQP_SCHEMES = ("amqp://", "amqps://", "pyamqp://")


def is_amqp(broker_url: str) -> bool:
    """RabbitMQ, as against Redis: the two brokers differ in queues and priorities."""
    return broker_url.startswith(AMQP_SCHEMES)


def _broker_url(env: Mapping[str, str], key: str) -> str | None:
    raw = _text(env, key)
    if raw is None:
        return None
    if not raw.startswith(("redis://", "rediss://", "redis+socket://", *AMQP_SCHEMES)):
        raise SettingsError(f"{key} must be a redis://, redis+socket:// or amqp:// URL")
    return raw


# The Standard Webhooks specification's example: 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 14 h,
# 20 h, 24 h between attempts, so ten attempts over three days and a bit.
WEBHOOK_RETRY_SCHEDULE = (5, 300, 1800, 7200, 18000, 36000, 50400, 72000, 86400)


def _schedule(env: Mapping[str, str], key: str, default: tuple[float, ...]) -> tuple[float, ...]:
    raw = _text(env, key)
    if raw is None:
        return default
    try:
        delays = tuple(float(part) for part in raw.split(","))
    except ValueError:
        raise SettingsError(f"{key} must be comma-separated seconds, got {raw!r}") from None
    if not all(0 <= delay <= 7 * 86400 for delay in delays):
        raise SettingsError(f"{key} must hold seconds between 0 and a week, got {raw!r}")
    return delays


def _path(env: Mapping[str, str], key: str) -> Path | None:
    raw = _text(env, key)
    return None if raw is None else Path(raw).absolute()


def _basic_auth(env: Mapping[str, str], key: str) -> str | None:
    raw = _text(env, key)
    if raw is None:
        return None
    for pair in raw.split(","):
        user, sep, password = pair.partition(":")
        if not sep or not user or not password:
            raise SettingsError(f"{key} must be user:password (comma-separated for several)")
    return raw


@dataclass(frozen=True)
class Settings:
    database_url: str | None
    broker_url: str | None
    data_dir: Path
    port: int = 8000
    flower_port: int = 5555
    flower_basic_auth: str | None = None
    # The address web and Flower listen on; unset, the Procfile's (every interface).
    bind: str | None = None
    demo: bool = True
    max_batch_size: int = 10_000
    max_body_bytes: int = 64 * 1024 * 1024
    queue: str = "timebatch"
    web_concurrency: int = 2
    worker_concurrency: int = 2
    # Threads of the webhooks process, each waiting on one receiver at a time.
    webhook_concurrency: int = 8
    job_time_limit: int = 900
    # Runs in a row that may meet the same internal error before the job fails for it, and
    # runs in all (most of them cut short by a lost worker) before it is given up.
    job_max_attempts: int = 5
    job_max_runs: int = 50
    job_lease: int = 120
    queued_grace: int = 20
    sweep_interval: int = 10
    retry_after: int = 1
    retention_days: int = 7
    purge_interval: int = 3600
    # Per organization: unfinished (queued or running) jobs, and entries in them.
    org_max_unfinished: int = 100
    org_max_unfinished_entries: int = 1_000_000
    # Requests one web process lets wait on `Prefer: wait` at once; the others answer at once.
    wait_capacity: int = 4
    # Event streams one web process holds open at once; past it, a stream is refused with 503.
    stream_capacity: int = 128
    # Seconds between a webhook delivery's attempts, one attempt more than delays; the timeout
    # of one attempt; whether loopback and private targets (and plain http) are allowed.
    webhook_retry_schedule: tuple[float, ...] = WEBHOOK_RETRY_SCHEDULE
    webhook_timeout: int = 15
    webhook_allow_private: bool = False
    # Shared by the processes of one machine for prometheus_client's multiprocess mode;
    # `timebatch run` defaults it to <data_dir>/metrics.
    metrics_dir: Path | None = None

    @property
    def embedded(self) -> bool:
        """True when neither URL is configured: timebatch runs its own servers."""
        return self.database_url is None and self.broker_url is None

    @property
    def housekeeping_queue(self) -> str:
        """Sweep and purge: a queue of their own, so that they never wait behind jobs."""
        return f"{self.queue}.housekeeping"

    @property
    def webhooks_queue(self) -> str:
        """Webhook deliveries: a queue of their own, so job workers never wait on receivers."""
        return f"{self.queue}.webhooks"

    @property
    def web_threads(self) -> int:
        """Threads per web process: the streams and the waiters it allows, and as many again
        as a full stream capacity leaves for every other request."""
        return self.stream_capacity + self.wait_capacity + 8

    @property
    def sqlalchemy_url(self) -> str:
        if self.database_url is None:
            raise SettingsError("DATABASE_URL is not set and no embedded server was started")
        return self.database_url

    @property
    def celery_broker_url(self) -> str:
        if self.broker_url is None:
            raise SettingsError("BROKER_URL is not set and no embedded server was started")
        return self.broker_url

    def with_urls(self, database_url: str, broker_url: str) -> Settings:
        return dataclasses.replace(self, database_url=database_url, broker_url=broker_url)

    def child_env(self) -> dict[str, str]:
        """A child process's environment: this process's, with these settings on top, and
        this interpreter's programs first on PATH, so that a command started through another
        (`env -u ... celery`) finds them without an activated virtualenv."""
        env = dict(os.environ) | self.as_env()
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        return env

    def as_env(self) -> dict[str, str]:
        """The environment that reproduces these settings in a child process."""
        env = {
            "DATABASE_URL": self.sqlalchemy_url,
            "BROKER_URL": self.celery_broker_url,
            "TIMEBATCH_DATA_DIR": str(self.data_dir),
            "TIMEBATCH_PORT": str(self.port),
            "FLOWER_PORT": str(self.flower_port),
            **({"TIMEBATCH_BIND": self.bind} if self.bind is not None else {}),
            "TIMEBATCH_DEMO": "1" if self.demo else "0",
            "TIMEBATCH_MAX_BATCH_SIZE": str(self.max_batch_size),
            "TIMEBATCH_MAX_BODY_BYTES": str(self.max_body_bytes),
            "TIMEBATCH_QUEUE": self.queue,
            "WEB_CONCURRENCY": str(self.web_concurrency),
            "WORKER_CONCURRENCY": str(self.worker_concurrency),
            "WEBHOOK_CONCURRENCY": str(self.webhook_concurrency),
            "TIMEBATCH_JOB_TIME_LIMIT": str(self.job_time_limit),
            "TIMEBATCH_JOB_MAX_ATTEMPTS": str(self.job_max_attempts),
            "TIMEBATCH_JOB_MAX_RUNS": str(self.job_max_runs),
            "TIMEBATCH_JOB_LEASE": str(self.job_lease),
            "TIMEBATCH_QUEUED_GRACE": str(self.queued_grace),
            "TIMEBATCH_SWEEP_INTERVAL": str(self.sweep_interval),
            "TIMEBATCH_RETENTION_DAYS": str(self.retention_days),
            "TIMEBATCH_PURGE_INTERVAL": str(self.purge_interval),
            "TIMEBATCH_ORG_MAX_UNFINISHED": str(self.org_max_unfinished),
            "TIMEBATCH_ORG_MAX_UNFINISHED_ENTRIES": str(self.org_max_unfinished_entries),
            "TIMEBATCH_WAIT_CAPACITY": str(self.wait_capacity),
            "TIMEBATCH_STREAM_CAPACITY": str(self.stream_capacity),
            "TIMEBATCH_WEBHOOK_RETRY_SCHEDULE": ",".join(
                f"{delay:g}" for delay in self.webhook_retry_schedule
            ),
            "TIMEBATCH_WEBHOOK_TIMEOUT": str(self.webhook_timeout),
            "TIMEBATCH_WEBHOOK_ALLOW_PRIVATE": "1" if self.webhook_allow_private else "0",
        }
        if self.flower_basic_auth:
            env["FLOWER_BASIC_AUTH"] = self.flower_basic_auth
        if self.metrics_dir is not None:
            env["PROMETHEUS_MULTIPROC_DIR"] = str(self.metrics_dir)
        return env

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        database_url = _database_url(env, "DATABASE_URL")
        broker_url = _broker_url(env, "BROKER_URL")
        if (database_url is None) != (broker_url is None):
            missing = "BROKER_URL" if broker_url is None else "DATABASE_URL"
            raise SettingsError(
                f"{missing} is missing: set both DATABASE_URL and BROKER_URL, "
                "or neither to use the embedded servers"
            )
        queue = _text(env, "TIMEBATCH_QUEUE") or "timebatch"
        if not queue.replace("-", "").replace("_", "").replace(".", "").isalnum():
            raise SettingsError(f"TIMEBATCH_QUEUE must be a simple name, got {queue!r}")
        return cls(
            database_url=database_url,
            broker_url=broker_url,
            data_dir=Path(_text(env, "TIMEBATCH_DATA_DIR") or ".timebatch").absolute(),
            port=_int(env, "TIMEBATCH_PORT", 8000, minimum=1, maximum=65535),
            flower_port=_int(env, "FLOWER_PORT", 5555, minimum=1, maximum=65535),
            flower_basic_auth=_basic_auth(env, "FLOWER_BASIC_AUTH"),
            bind=_text(env, "TIMEBATCH_BIND"),
            demo=_bool(env, "TIMEBATCH_DEMO", True),
            max_batch_size=_int(env, "TIMEBATCH_MAX_BATCH_SIZE", 10_000, minimum=1, maximum=10**7),
            max_body_bytes=_int(
                env, "TIMEBATCH_MAX_BODY_BYTES", 64 * 1024 * 1024, minimum=1024, maximum=2**34
            ),
            queue=queue,
            web_concurrency=_int(env, "WEB_CONCURRENCY", 2, minimum=1, maximum=256),
            worker_concurrency=_int(env, "WORKER_CONCURRENCY", 2, minimum=1, maximum=256),
            webhook_concurrency=_int(env, "WEBHOOK_CONCURRENCY", 8, minimum=1, maximum=1024),
            job_time_limit=_int(env, "TIMEBATCH_JOB_TIME_LIMIT", 900, minimum=10, maximum=86400),
            job_max_attempts=_int(env, "TIMEBATCH_JOB_MAX_ATTEMPTS", 5, minimum=1, maximum=100),
            job_max_runs=_int(env, "TIMEBATCH_JOB_MAX_RUNS", 50, minimum=1, maximum=10_000),
            job_lease=_int(env, "TIMEBATCH_JOB_LEASE", 120, minimum=1, maximum=86400),
            queued_grace=_int(env, "TIMEBATCH_QUEUED_GRACE", 20, minimum=1, maximum=86400),
            sweep_interval=_int(env, "TIMEBATCH_SWEEP_INTERVAL", 10, minimum=1, maximum=3600),
            # At least a day, so that a replayed Idempotency-Key (kept 24 hours) finds its result.
            retention_days=_int(env, "TIMEBATCH_RETENTION_DAYS", 7, minimum=1, maximum=36500),
            purge_interval=_int(env, "TIMEBATCH_PURGE_INTERVAL", 3600, minimum=60, maximum=86400),
            org_max_unfinished=_int(
                env, "TIMEBATCH_ORG_MAX_UNFINISHED", 100, minimum=1, maximum=10**6
            ),
            org_max_unfinished_entries=_int(
                env, "TIMEBATCH_ORG_MAX_UNFINISHED_ENTRIES", 1_000_000, minimum=1, maximum=10**10
            ),
            wait_capacity=_int(env, "TIMEBATCH_WAIT_CAPACITY", 4, minimum=0, maximum=10_000),
            stream_capacity=_int(env, "TIMEBATCH_STREAM_CAPACITY", 128, minimum=0, maximum=10_000),
            webhook_retry_schedule=_schedule(
                env, "TIMEBATCH_WEBHOOK_RETRY_SCHEDULE", WEBHOOK_RETRY_SCHEDULE
            ),
            webhook_timeout=_int(env, "TIMEBATCH_WEBHOOK_TIMEOUT", 15, minimum=1, maximum=300),
            webhook_allow_private=_bool(env, "TIMEBATCH_WEBHOOK_ALLOW_PRIVATE", False),
            metrics_dir=_path(env, "PROMETHEUS_MULTIPROC_DIR"),
        )
