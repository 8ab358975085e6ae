"""The stack a benchmark run measures: its own database, a real web app and a real worker.

Servers: the configured PostgreSQL and broker (DATABASE_URL / BROKER_URL), or embedded ones
started in a fresh temporary data dir and stopped at the end. On that server the run makes
its own database (migrated, demo data loaded) and drops it at the end. Web and worker are
started with the commands of ``timebatch run`` (shared.devstack.supervisor), each in its own process
group, and stopped, whole groups, whatever happens.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import subprocess
import time
from contextlib import ExitStack, suppress
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import requests
from sqlalchemy import Engine, create_engine, make_url, select, text
from sqlalchemy.orm import Session

from bench.memory import TreeMemory
from shared.cli.demo import load_demo
from shared.devstack.embedded import embedded_settings
from shared.devstack.supervisor import executable, stack_commands, stack_env
from shared.domain.tokens import create_token
from shared.settings import Settings
from shared.store import migrate
from shared.store.engine import make_engine
from shared.store.models import Person

REPO = Path(__file__).resolve().parent.parent
DATABASE = "timebatch_bench"
# The largest batch the run sends, and room for its body (about 250 bytes an entry).
MAX_BATCH = 100_000
MAX_BODY = 512 * 1024 * 1024
START_TIMEOUT = 90.0
STOP_TIMEOUT = 20.0


class BenchError(RuntimeError):
    """The stack could not be started, or an operation did not give the expected answer."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def bench_settings(base: Settings, workdir: Path, worker_concurrency: int = 1) -> Settings:
    """The settings of the measured stack: the batch limit raised by configuration."""
    return dataclasses.replace(
        base,
        data_dir=workdir / "data",
        port=free_port(),
        demo=False,
        web_concurrency=2,
        worker_concurrency=worker_concurrency,
        # Our own queue: with a shared broker no other worker takes our jobs.
        queue=f"timebatch-bench-{os.getpid()}",
        max_batch_size=max(base.max_batch_size, MAX_BATCH),
        max_body_bytes=max(base.max_body_bytes, MAX_BODY),
    )


def _admin_engine(url: str) -> Engine:
    return create_engine(make_url(url).set(database="postgres"), isolation_level="AUTOCOMMIT")


def create_database(server_url: str) -> str:
    """A fresh, empty bench database on the server of server_url; returns its URL."""
    admin = _admin_engine(server_url)
    try:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)'))
            connection.execute(text(f'CREATE DATABASE "{DATABASE}"'))
    finally:
        admin.dispose()
    return make_url(server_url).set(database=DATABASE).render_as_string(hide_password=False)


def drop_database(url: str) -> None:
    admin = _admin_engine(url)
    try:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)'))
    finally:
        admin.dispose()


def prepare_database(engine: Engine, people: tuple[int, ...]) -> dict[int, str]:
    """Migrate, load the demo data, and make a token for each person."""
    migrate.upgrade(engine)
    with Session(engine) as session:
        load_demo(session)
        tokens = {}
        for person in session.scalars(select(Person).where(Person.id.in_(people))):
            tokens[person.id] = create_token(session, person)
        session.commit()
    return tokens


@dataclass
class Child:
    """One process of the stack, in its own process group, its output in a log file."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def memory(self) -> TreeMemory:
        return TreeMemory(self.popen.pid)

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no output)"

    def check_alive(self) -> None:
        if self.popen.poll() is not None:
            raise BenchError(
                f"{self.name} exited ({self.popen.returncode}); last output:\n{self.tail()}"
            )

    def stop(self) -> None:
        if self.popen.poll() is None:
            with suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                with suppress(ProcessLookupError):
                    os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(timeout=STOP_TIMEOUT)
        # Whatever is left of the group (a pool child that outlived its parent).
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)


def control_socket(argv: list[str], path: Path) -> list[str]:
    """gunicorn 27 opens a control socket at one fixed path in the home directory by default;
    each of ours gets its own, so that they do not take over another gunicorn's."""
    if int(version("gunicorn").split(".")[0]) < 27:
        return argv
    return [*argv[:-1], "--control-socket", str(path), argv[-1]]


def start_child(name: str, argv: list[str], env: dict[str, str], logs: Path) -> Child:
    log = logs / f"{name}.log"
    with log.open("wb") as out:
        popen = subprocess.Popen(
            argv,
            env=env,
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            process_group=0,  # its own group: stopping it stops gunicorn's and celery's children
        )
    return Child(name, popen, log)


def wait_http(child: Child, url: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        child.check_alive()
        with suppress(requests.RequestException):
            if requests.get(url, timeout=5).status_code == 200:
                return
        time.sleep(0.2)
    raise BenchError(f"{child.name} did not answer 200 on {url}; last output:\n{child.tail()}")


def wait_log(child: Child, marker: bytes) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        child.check_alive()
        if marker in child.log.read_bytes():
            return
        time.sleep(0.2)
    raise BenchError(f"{child.name} did not report ready; last output:\n{child.tail()}")


@dataclass
class Stack:
    settings: Settings
    engine: Engine
    tokens: dict[int, str]
    web: Child
    worker: Child
    naive: Child | None
    web_url: str
    naive_url: str
    embedded: bool


def child_env(settings: Settings) -> dict[str, str]:
    """The children's environment: ours, with the stack's settings on top."""
    return stack_env(settings) | {"PYTHONUNBUFFERED": "1"}


def open_stack(
    base: Settings,
    workdir: Path,
    stack: ExitStack,
    people: tuple[int, ...],
    *,
    worker_concurrency: int = 1,
    naive: bool = True,
) -> Stack:
    """Start everything; every part is registered on ``stack`` to be stopped in reverse order."""
    settings = bench_settings(base, workdir, worker_concurrency)
    logs = workdir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    settings = stack.enter_context(embedded_settings(settings))
    settings = settings.with_urls(
        create_database(settings.sqlalchemy_url), settings.celery_broker_url
    )
    stack.callback(drop_database, settings.sqlalchemy_url)
    engine = make_engine(settings)
    stack.callback(engine.dispose)
    tokens = prepare_database(engine, people)

    env = child_env(settings)
    commands = stack_commands(settings, names=("web", "worker"))
    worker_argv = [*commands["worker"], "--hostname", f"bench-{os.getpid()}@%h"]
    web_argv = control_socket(commands["web"], workdir / "web.ctl")
    web = start_child("web", web_argv, env, logs)
    stack.callback(web.stop)
    worker = start_child("worker", worker_argv, env, logs)
    stack.callback(worker.stop)
    web_url = f"http://127.0.0.1:{settings.port}"
    naive_port = free_port()
    naive_url = f"http://127.0.0.1:{naive_port}"
    peer = start_naive(env, logs, workdir, naive_port, stack) if naive else None
    wait_http(web, f"{web_url}/healthz")
    wait_log(worker, b" ready.")
    if peer is not None:
        wait_http(peer, f"{naive_url}/healthz")
    return Stack(
        settings=settings,
        engine=engine,
        tokens=tokens,
        web=web,
        worker=worker,
        naive=peer,
        web_url=web_url,
        naive_url=naive_url,
        embedded=base.embedded,
    )


def start_naive(
    env: dict[str, str], logs: Path, workdir: Path, port: int, stack: ExitStack
) -> Child:
    naive_argv = [
        executable("gunicorn"),
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        "1",
        "--worker-class",
        "sync",
        "--timeout",
        "900",
        "bench.naive:create_app()",
    ]
    naive_argv = control_socket(naive_argv, workdir / "naive.ctl")
    naive = start_child("naive", naive_argv, env, logs)
    stack.callback(naive.stop)
    return naive
