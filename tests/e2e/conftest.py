"""A real Celery worker process and a live broker for end-to-end tests.

The committed database they share (`e2e_settings`, `e2e_engine`, `e2e_db`) is made in
tests/conftest.py, where tests of code that opens its own sessions find it too.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from api import create_app
from bench.stack import control_socket
from shared.devstack.supervisor import stack_commands, stack_env
from shared.jobs.runner import Outcome
from shared.settings import Settings
from shared.store.engine import make_session_factory
from tests.checked_client import CheckedClient
from tests.conftest import TABLES as TABLES
from tests.conftest import token_for
from tests.jobclient import JobClient

# What the task logs once a delivery of a job has run (worker/app.py: "job %s %s").
OUTCOME_LINE = re.compile(r"^job (?P<job>\S+) (?P<outcome>{})$".format("|".join(Outcome)))


class WorkerProcess:
    """A real `celery worker` for the e2e queue, in its own process group."""

    def __init__(
        self,
        settings: Settings,
        log: Path,
        name: str,
        *,
        beat: bool = False,
        webhooks: bool = False,
    ) -> None:
        self.settings = settings
        self.log = log
        self.name = name
        # With beat inside (`-B`): the sweeps and purges a deployment's beat would send.
        self.beat = beat
        # The webhooks process of the Procfile instead: deliveries, on threads.
        self.webhooks = webhooks
        self.process: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        celery = str(Path(sys.executable).parent / "celery")
        if self.webhooks:
            pool = [
                "--pool",
                "threads",
                "--concurrency",
                "4",
                "--queues",
                self.settings.webhooks_queue,
            ]
        else:
            pool = [
                "--concurrency",
                "2",
                "--queues",
                f"{self.settings.queue},{self.settings.housekeeping_queue}",
            ]
        command = [
            celery, "-A", "worker.main", "worker", "--loglevel", "INFO", *pool,
            "--hostname", f"{self.name}@%h", "--without-gossip", "--without-mingle",
        ]  # fmt: skip
        if self.beat:
            command += ["--beat", "--schedule", str(self.log.with_suffix(".schedule"))]
        return command

    def start(self, timeout: float = 60) -> None:
        env = os.environ | self.settings.as_env()
        self.log.write_bytes(b"")
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                self.command(),
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if b" ready." in self.log.read_bytes():
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.2)
        raise RuntimeError(f"worker did not start:\n{self.log.read_text()[-3000:]}")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, sig)
        self.process.wait(timeout=30)
        self.process = None

    def stop(self) -> None:
        """A warm shutdown, as an operator's SIGTERM: the main process stops its pool children
        itself, so they leave cleanly (and write their coverage data); whatever is left of the
        group after that, or after a hang, is killed."""
        if self.process is None:
            return
        try:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process = None

    def events(self) -> list[dict[str, Any]]:
        """The worker's JSON log lines so far."""
        found = []
        for line in self.log.read_text(errors="replace").splitlines():
            try:
                found.append(json.loads(line) if line.startswith("{") else {})
            except ValueError:
                continue  # the line the worker is writing right now
        return found

    def outcomes(self, job_id: str) -> list[str]:
        """What each delivery of this job that ran to its end in this worker did, in order."""
        found = []
        for event in self.events():
            match = OUTCOME_LINE.match(event.get("message", ""))
            if match and match["job"] == job_id:
                found.append(match["outcome"])
        return found


@contextlib.contextmanager
def web_tier(settings: Settings) -> Iterator[str]:
    """The real web tier, gunicorn with the command of `timebatch run`, answering /healthz
    on the settings' port until the block ends; yields its URL."""
    argv = stack_commands(settings, names=("web",))["web"]
    argv = control_socket(argv, settings.data_dir / f"web-{settings.port}.ctl")
    log = settings.data_dir / f"web-{settings.port}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            argv,
            env=stack_env(settings),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{settings.port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            try:
                if requests.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                time.sleep(0.1)
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


@pytest.fixture
def worker_factory(run_id: str) -> Iterator[Callable[[Settings], WorkerProcess]]:
    """Starts a worker of its own for these settings' queue; all are stopped after the test."""
    started: list[WorkerProcess] = []

    def start(settings: Settings, *, beat: bool = False, webhooks: bool = False) -> WorkerProcess:
        name = f"worker{len(started)}-{run_id}"
        log = settings.data_dir / f"{name}.log"
        process = WorkerProcess(settings, log, name, beat=beat, webhooks=webhooks)
        started.append(process)
        process.start()
        return process

    yield start
    for process in started:
        process.stop()


@pytest.fixture(scope="session")
def worker(e2e_settings: Settings, run_id: str) -> Iterator[WorkerProcess]:
    process = WorkerProcess(e2e_settings, e2e_settings.data_dir / "worker.log", f"e2e-{run_id}")
    process.start()
    yield process
    process.stop()


@pytest.fixture
def e2e_app(e2e_settings: Settings, e2e_db: Engine) -> Flask:
    return create_app(e2e_settings, sessions=make_session_factory(e2e_db))


@pytest.fixture
def e2e_client(e2e_app: Flask) -> FlaskClient:
    e2e_app.test_client_class = CheckedClient
    return e2e_app.test_client()


@pytest.fixture
def e2e_auth(e2e_db: Engine) -> Any:
    def make(person_id: int = 7781, *, read_only: bool = False) -> dict[str, str]:
        with Session(e2e_db) as session:
            headers = token_for(session, person_id, read_only=read_only)
            session.commit()
        return headers

    return make


@pytest.fixture
def jobs(e2e_client: FlaskClient, worker: WorkerProcess) -> JobClient:
    return JobClient(e2e_client)
