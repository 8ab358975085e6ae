"""`timebatch` commands: those that need no server through click's runner against a database of
their own, `timebatch run` as the console script a user runs, with the whole stack behind it."""

from __future__ import annotations

import datetime as dt
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import suppress
from pathlib import Path
from typing import IO, Any

import orjson
import psutil
import pytest
import requests
from alembic.script import ScriptDirectory
from click.testing import CliRunner, Result
from sqlalchemy import Engine, func, inspect, select, text, update
from sqlalchemy.orm import Session

from shared.cli.commands import main
from shared.cli.demo import PEOPLE, load_demo
from shared.domain.tokens import Principal, find_principal
from shared.jobs.queue import create_celery, queue_depth
from shared.settings import Settings
from shared.store import migrate
from shared.store.models import ApiToken, Base, Job, Organization, TimeEntry
from tests.factories import create_resource, queue_job, reference
from tests.shared.devstack.test_embedded import alive, embedded_data_dir, server_processes

TIMEBATCH = Path(sys.executable).parent / "timebatch"
BULK = "application/vnd.api+json; ext=bulk"
MEMBER = Principal(person_id=7781, organization_id=2110, read_only=False)
DEMO_TOKEN_LINE = re.compile(
    r"^  person (?P<person>\d+) \((?P<name>[^)]+)\), organization (?P<org>\d+): (?P<token>tb_\S+)$"
)


def invoke(settings: Settings, *args: str, **env: str) -> Result:
    return CliRunner().invoke(main, list(args), env=settings.as_env() | env)


def migrated(engine: Engine, *, demo: bool = False) -> Engine:
    migrate.upgrade(engine)
    if demo:
        with Session(engine) as session:
            load_demo(session)
            session.commit()
    return engine


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout}s")
        time.sleep(0.1)


# ------------------------------------------------------------------------------------- db


def test_db_upgrade_and_downgrade(cli_settings: Settings, cli_engine: Engine) -> None:
    result = invoke(cli_settings, "db", "upgrade", "--revision", "0001")
    assert (result.exit_code, result.stdout) == (0, "database at 0001\n")
    assert current_revision(cli_engine) == "0001"

    result = invoke(cli_settings, "db", "upgrade")
    assert (result.exit_code, result.stdout) == (0, "database at head\n")
    head = ScriptDirectory.from_config(migrate.alembic_config(cli_settings.sqlalchemy_url))
    assert current_revision(cli_engine) == head.get_current_head()
    assert set(Base.metadata.tables) <= set(inspect(cli_engine).get_table_names())

    result = invoke(cli_settings, "db", "downgrade", "base")
    assert (result.exit_code, result.stdout) == (0, "database at base\n")
    assert set(inspect(cli_engine).get_table_names()) <= {"alembic_version"}
    assert current_revision(cli_engine) is None


@pytest.mark.parametrize(
    "command",
    [
        ("token", "create", "--person", "7781"),
        ("demo", "load"),
        ("jobs", "recover"),
        ("jobs", "purge"),
    ],
)
def test_a_database_without_the_schema_says_what_to_run(
    cli_settings: Settings, command: tuple[str, ...]
) -> None:
    result = invoke(cli_settings, *command)
    assert result.exit_code == 1
    assert "run `timebatch db upgrade` first" in result.output
    assert "Traceback" not in result.output


def test_a_database_that_does_not_exist_is_named_not_a_traceback(cli_settings: Settings) -> None:
    missing = cli_settings.sqlalchemy_url.rsplit("/", 1)[0] + "/timebatch_no_such_database"
    result = CliRunner().invoke(
        main,
        ["token", "create", "--person", "7781"],
        env=cli_settings.as_env() | {"DATABASE_URL": missing},
    )
    assert result.exit_code == 1
    assert (
        "cannot use the database" in result.output and "timebatch_no_such_database" in result.output
    )


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        revision: str | None = connection.scalar(
            text("SELECT max(version_num) FROM alembic_version")
        )
        return revision


def test_a_bad_setting_stops_a_command_before_it_connects(cli_settings: Settings) -> None:
    result = invoke(cli_settings, "db", "upgrade", TIMEBATCH_JOB_LEASE="2 minutes")
    assert result.exit_code == 1
    assert "Error: TIMEBATCH_JOB_LEASE must be a whole number, got '2 minutes'" in (
        result.stderr.splitlines()
    )


# ----------------------------------------------------------------------------------- demo


def test_demo_load_prints_one_working_token_per_person_once(
    cli_settings: Settings, cli_engine: Engine
) -> None:
    migrated(cli_engine)
    result = invoke(cli_settings, "demo", "load")
    assert result.exit_code == 0, result.output
    first, *lines = result.stdout.splitlines()
    assert first == "demo data loaded; one token per person (shown once):"
    matches = [DEMO_TOKEN_LINE.match(line) for line in lines]
    assert all(matches), lines
    tokens = {int(m["person"]): (int(m["org"]), m["name"], m["token"]) for m in matches if m}
    assert sorted(tokens) == sorted(p["id"] for p in PEOPLE)
    assert tokens[7781][:2] == (2110, "Max Member")
    assert tokens[8881][:2] == (2112, "Eli Elsewhere")
    with Session(cli_engine) as session:
        for person_id, (org, _, token) in tokens.items():
            assert find_principal(session, token) == Principal(person_id, org, read_only=False)
        stored = session.scalar(select(func.count()).select_from(ApiToken))
    assert stored == len(PEOPLE)

    again = invoke(cli_settings, "demo", "load")
    assert again.exit_code == 0, again.output
    assert again.stdout == (
        "demo data already loaded (use `timebatch token create` for a new token)\n"
    )
    with Session(cli_engine) as session:
        assert session.scalar(select(func.count()).select_from(ApiToken)) == stored
        assert session.scalar(select(func.count()).select_from(Organization)) == 3
        assert session.scalar(select(func.count()).select_from(TimeEntry)) == 10


# ---------------------------------------------------------------------------------- token


def test_token_create(cli_settings: Settings, cli_engine: Engine) -> None:
    migrated(cli_engine, demo=True)
    plain = invoke(cli_settings, "token", "create", "--person", "7781")
    assert plain.exit_code == 0, plain.output
    assert re.fullmatch(r"tb_[A-Za-z0-9_-]{43}\n", plain.stdout)

    as_json = invoke(cli_settings, "token", "create", "--person", "7792", "--read-only", "--json")
    assert as_json.exit_code == 0, as_json.output
    line = orjson.loads(as_json.stdout)
    assert set(line) == {"token", "person_id", "organization_id"}
    assert (line["person_id"], line["organization_id"]) == ("7792", "2111")

    with Session(cli_engine) as session:
        assert find_principal(session, plain.stdout.strip()) == MEMBER
        assert find_principal(session, line["token"]) == Principal(7792, 2111, read_only=True)


def test_token_create_for_nobody_stores_nothing(cli_settings: Settings, cli_engine: Engine) -> None:
    migrated(cli_engine, demo=True)
    result = invoke(cli_settings, "token", "create", "--person", "999999")
    assert result.exit_code == 1
    assert "Error: person 999999 does not exist" in result.stderr.splitlines()
    with Session(cli_engine) as session:
        assert session.scalar(select(func.count()).select_from(ApiToken)) == 0


# ----------------------------------------------------------------------------------- jobs


def test_jobs_recover_republishes_a_job_left_queued_once(
    cli_settings: Settings, cli_engine: Engine
) -> None:
    migrated(cli_engine, demo=True)
    with Session(cli_engine) as session:
        job = queue_job(
            session, MEMBER, "delete", [reference(224)], queued_for=dt.timedelta(hours=1)
        )
        session.commit()
        job_id = str(job.id)
    celery = create_celery(cli_settings)
    try:
        result = invoke(cli_settings, "jobs", "recover")
        assert (result.exit_code, result.stdout) == (0, "re-published 1 job(s)\n")
        # Published a moment ago: the next sweep leaves it alone.
        again = invoke(cli_settings, "jobs", "recover")
        assert (again.exit_code, again.stdout) == (0, "re-published 0 job(s)\n")
        assert queue_depth(celery, cli_settings.queue) == 1
        with celery.connection_for_read() as connection:
            waiting = connection.SimpleQueue(cli_settings.queue)
            message = waiting.get(timeout=5)
            message.ack()
            waiting.close()
        assert message.headers["argsrepr"] == repr([job_id])
        assert queue_depth(celery, cli_settings.queue) == 0
    finally:
        with celery.connection_for_write() as connection:
            connection.default_channel.queue_delete(cli_settings.queue)
    with Session(cli_engine) as session:
        stored = session.get_one(Job, job.id)
        assert stored.published_at is not None and stored.status == "queued"


def test_jobs_purge_follows_the_retention_setting(
    cli_settings: Settings, cli_engine: Engine
) -> None:
    migrated(cli_engine, demo=True)
    five_days_ago = dt.datetime.now(dt.UTC) - dt.timedelta(days=5)
    with Session(cli_engine) as session:
        job_id = queue_job(session, MEMBER, "delete", [reference(224)]).id
        session.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(status="succeeded", result_status=204, finished_at=five_days_ago)
        )
        session.commit()

    kept = invoke(cli_settings, "jobs", "purge")
    assert (kept.exit_code, kept.stdout) == (0, "purged 0 job(s) finished more than 7 days ago\n")
    with Session(cli_engine) as session:
        assert session.get_one(Job, job_id).batch is not None

    purged = invoke(cli_settings, "jobs", "purge", TIMEBATCH_RETENTION_DAYS="3")
    assert (purged.exit_code, purged.stdout) == (
        0,
        "purged 1 job(s) finished more than 3 days ago\n",
    )
    with Session(cli_engine) as session:
        job = session.get_one(Job, job_id)
        assert job.batch is None and job.purged_at is not None and job.status == "succeeded"


# ------------------------------------------------------------------------------------ run


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def read_lines(stream: IO[str], into: queue.Queue[str]) -> None:
    for line in stream:
        into.put(line.rstrip("\n"))


class Output:
    """The lines a process printed so far, read on a thread so that its pipe never fills."""

    def __init__(self, stream: IO[str]) -> None:
        self._queue: queue.Queue[str] = queue.Queue()
        self.lines: list[str] = []
        threading.Thread(target=read_lines, args=(stream, self._queue), daemon=True).start()

    def drain(self) -> list[str]:
        with suppress(queue.Empty):
            while True:
                self.lines.append(self._queue.get_nowait())
        return self.lines

    def find(self, pattern: str) -> re.Match[str] | None:
        for line in self.drain():
            if match := re.search(pattern, line):
                return match
        return None


def answers(url: str, **kwargs: Any) -> bool:
    try:
        return requests.get(url, timeout=2, **kwargs).ok
    except requests.ConnectionError:
        return False


@pytest.fixture
def stack_dir() -> Iterator[Path]:
    with embedded_data_dir() as path:
        yield path


def test_timebatch_run_serves_the_embedded_stack_until_interrupted(stack_dir: Path) -> None:
    """`make run`: no URLs, so embedded servers; migrated, demo data, web, worker, beat, Flower."""
    port, flower_port = free_port(), free_port()
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("TIMEBATCH_", "FLOWER_"))}
    for key in ("DATABASE_URL", "BROKER_URL", "PROMETHEUS_MULTIPROC_DIR"):
        keep.pop(key, None)
    env = keep | {
        "TIMEBATCH_DATA_DIR": str(stack_dir),
        "TIMEBATCH_PORT": str(port),
        "FLOWER_PORT": str(flower_port),
        "WEB_CONCURRENCY": "1",
        "WORKER_CONCURRENCY": "1",
    }
    runner = subprocess.Popen(
        [str(TIMEBATCH), "run"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # a Ctrl-C of pytest does not reach it
    )
    assert runner.stdout is not None
    output = Output(runner.stdout)
    stack: list[Any] = []
    try:
        web = f"http://127.0.0.1:{port}"
        wait_until(lambda: answers(f"{web}/healthz"), 60, "the web answering")
        stack = psutil.Process(runner.pid).children(recursive=True)
        lines = output.drain()
        assert f"embedded PostgreSQL and Redis under {stack_dir}" in lines, lines
        assert f"web on {web} , Flower on http://127.0.0.1:{flower_port}" in lines, lines
        login = output.find(
            r"^Flower login \(made up for this run\): user (admin), password (\S+)$"
        )
        assert login, lines
        tokens = [m for line in lines if (m := DEMO_TOKEN_LINE.match(line))]
        assert len(tokens) == len(PEOPLE), lines
        (member,) = [m["token"] for m in tokens if m["person"] == "7781"]

        headers = {"X-Auth-Token": member, "X-Organization-Id": "2110", "Accept": BULK}
        accepted = requests.post(
            f"{web}/api/v2/time_entries",
            data=orjson.dumps({"data": [create_resource(note="through the stack")]}),
            headers=headers | {"Content-Type": BULK},
            timeout=10,
        )
        assert accepted.status_code == 202, accepted.text
        job_url = web + accepted.headers["Location"]

        def finished() -> bool:
            polled = requests.get(job_url, headers=headers, allow_redirects=False, timeout=5)
            return polled.status_code == 303

        wait_until(finished, 30, "the worker finishing the job")
        result = requests.get(job_url, headers=headers, timeout=5)
        assert result.status_code == 201, result.text
        (entry,) = result.json()["data"]
        assert entry["attributes"]["note"] == "through the stack"

        flower = f"http://127.0.0.1:{flower_port}"
        wait_until(lambda: answers(flower, auth=login.groups()), 60, "Flower answering")
        assert requests.get(flower, timeout=5).status_code == 401

        runner.send_signal(signal.SIGINT)  # what Ctrl-C in its terminal sends
        assert runner.wait(timeout=60) == 0, "\n".join(output.drain())
    finally:
        if runner.poll() is None:
            runner.kill()
            runner.wait()
        for proc in stack:  # never leak the stack, even when the test fails
            with suppress(psutil.Error):
                proc.kill()
        runner.stdout.close()
    lines = output.drain()
    assert any(re.match(r"^system\s+\| stop requested$", line) for line in lines), lines
    for name in ("web", "worker", "beat", "flower"):
        assert any(re.match(rf"^system\s+\| {name} stopped \(", line) for line in lines), name
    assert [proc for proc in stack if alive(proc)] == []
    # It started the embedded servers, so it stopped them.
    assert server_processes(stack_dir.resolve()) == []
