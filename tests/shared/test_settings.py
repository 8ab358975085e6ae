from __future__ import annotations

from pathlib import Path

import pytest

from shared.settings import Settings, SettingsError

URLS = {
    "DATABASE_URL": "postgresql+psycopg://u@db/timebatch",
    "BROKER_URL": "redis://redis:6379/0",
}


def test_defaults_mean_embedded() -> None:
    settings = Settings.from_env({})
    assert settings.embedded
    assert settings.port == 8000
    assert settings.flower_port == 5555
    assert settings.max_batch_size == 10_000
    assert settings.data_dir == Path(".timebatch").absolute()


def test_urls_and_numbers_are_converted() -> None:
    settings = Settings.from_env(
        URLS | {"TIMEBATCH_PORT": "9000", "TIMEBATCH_DEMO": "0", "TIMEBATCH_MAX_BATCH_SIZE": "5"}
    )
    assert not settings.embedded
    assert settings.port == 9000
    assert settings.demo is False
    assert settings.max_batch_size == 5


def test_plain_postgresql_scheme_gets_the_psycopg_driver() -> None:
    settings = Settings.from_env(URLS | {"DATABASE_URL": "postgresql://u@db/x"})
    assert settings.database_url == "postgresql+psycopg://u@db/x"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"DATABASE_URL": URLS["DATABASE_URL"]}, "BROKER_URL is missing"),
        ({"BROKER_URL": URLS["BROKER_URL"]}, "DATABASE_URL is missing"),
        (URLS | {"DATABASE_URL": "mysql://x/y"}, "DATABASE_URL must be"),
        (URLS | {"BROKER_URL": "kafka://x"}, "BROKER_URL must be"),
        (URLS | {"TIMEBATCH_PORT": "eighty"}, "TIMEBATCH_PORT must be a whole number"),
        (URLS | {"TIMEBATCH_PORT": "70000"}, "TIMEBATCH_PORT must be between"),
        (URLS | {"TIMEBATCH_DEMO": "maybe"}, "TIMEBATCH_DEMO must be a boolean"),
        (URLS | {"FLOWER_BASIC_AUTH": "admin"}, "FLOWER_BASIC_AUTH must be user:password"),
        (URLS | {"FLOWER_BASIC_AUTH": "changeme"}, "placeholder"),
        (URLS | {"DATABASE_URL": "<your database url>"}, "placeholder"),
        (URLS | {"TIMEBATCH_QUEUE": "a b"}, "TIMEBATCH_QUEUE"),
        (URLS | {"TIMEBATCH_WEBHOOK_RETRY_SCHEDULE": "5,soon"}, "comma-separated seconds"),
        (URLS | {"TIMEBATCH_WEBHOOK_RETRY_SCHEDULE": "5,-1"}, "between 0 and a week"),
        (URLS | {"TIMEBATCH_WEBHOOK_ALLOW_PRIVATE": "perhaps"}, "must be a boolean"),
    ],
)
def test_bad_values_fail_clearly(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        Settings.from_env(env)


def test_as_env_round_trips() -> None:
    settings = Settings.from_env(URLS | {"WORKER_CONCURRENCY": "7", "FLOWER_BASIC_AUTH": "a:b"})
    assert Settings.from_env(settings.as_env()) == settings


def test_webhook_and_stream_settings() -> None:
    defaults = Settings.from_env(URLS)
    assert defaults.webhook_retry_schedule == (
        5,
        300,
        1800,
        7200,
        18000,
        36000,
        50400,
        72000,
        86400,
    )
    assert (defaults.webhook_timeout, defaults.webhook_allow_private) == (15, False)
    assert defaults.webhooks_queue == "timebatch.webhooks"
    # gunicorn's threads: every stream and waiter of a full process, and some to spare.
    assert defaults.web_threads == defaults.stream_capacity + defaults.wait_capacity + 8
    tuned = Settings.from_env(
        URLS
        | {"TIMEBATCH_WEBHOOK_RETRY_SCHEDULE": " 0.5,2 ", "TIMEBATCH_WEBHOOK_ALLOW_PRIVATE": "1"}
    )
    assert (tuned.webhook_retry_schedule, tuned.webhook_allow_private) == ((0.5, 2.0), True)
    assert Settings.from_env(tuned.as_env()) == tuned
