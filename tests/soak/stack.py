"""The soak's stack: servers of its own it may take down, and the processes it may kill.

Servers (tests/servers.py): a private PostgreSQL, and a private redis-server or a RabbitMQ
virtual host of its own; never the machine's shared ones. Processes: the commands of
`timebatch run` (shared.devstack.supervisor.stack_commands): gunicorn with two workers, two
`celery worker` main processes of one pool process each, and beat. A supervisor thread
restarts whatever died, as a process manager would, and notes whether chaos killed it.
"""

from __future__ import annotations

import dataclasses
import os
import re
import secrets
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import psutil
from sqlalchemy import Connection, Engine, insert, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from bench.stack import (
    Child,
    bench_settings,
    child_env,
    control_socket,
    prepare_database,
    start_child,
    wait_http,
    wait_log,
)
from shared.devstack.supervisor import stack_commands
from shared.domain.tokens import create_token
from shared.settings import Settings
from shared.store.engine import make_engine
from shared.store.models import ExchangeRate, Organization, Person, Service, Task
from tests.servers import (
    PrivatePostgres,
    PrivateRedis,
    PrivateVhost,
    amqp_reachable,
    amqp_url,
    rabbitmqctl,
)

BROKERS = ("redis", "amqp")
WORKERS = 2
# Our own connections carry this name, so that the backend-terminating fault spares them.
SOAK_APPLICATION = "timebatch-soak"
SUPERVISE_EVERY = 0.2
# Celery's lines about a job's task (JSON log lines of worker/app.py's logging): the last one
# of a worker says whether its one pool process is busy with a job right now.
TASK_EVENT = re.compile(
    rb'"message":"Task timebatch\.process_job\[[0-9a-f-]+\] (received|succeeded|retry|raised)'
)
LOG_TAIL = 16384

# The demo data has three organizations, but in the third (2112) nobody may approve: the
# soak's third organization is its own, with the approval workflow and two required
# approvers per entry (the person's manager and the service's approver).
SOAK_ORGANIZATION = 2120
SOAK_MANAGER = 9902
SOAK_PERSON = 9901
SOAK_SERVICE = 2221
SOAK_TASK = 2231
DEMO_PEOPLE = (7782, 7783, 7793)

T = TypeVar("T")


class SoakSetupError(RuntimeError):
    """A server the soak needs is missing or unreachable: the run cannot start."""


def short_settings(base: Settings, workdir: Path) -> Settings:
    """bench_settings with short sweeper timings, so that a lost message or a killed worker's
    job is re-published within seconds rather than minutes."""
    return dataclasses.replace(
        bench_settings(base, workdir, worker_concurrency=1),
        queue="timebatch-soak",
        job_time_limit=60,
        job_lease=3,
        queued_grace=3,
        sweep_interval=2,
        # Flower is not started, but its command is rendered with the others and needs one.
        flower_basic_auth=f"soak:{secrets.token_urlsafe(12)}",
    )


# ----------------------------------------------------------------------------- servers


class Servers:
    """The private PostgreSQL and broker, with the faults that take them down."""

    def __init__(self, broker: str, workdir: Path, stack: ExitStack) -> None:
        if broker not in BROKERS:
            raise ValueError(f"broker must be one of {BROKERS}, got {broker!r}")
        self.broker = broker
        self.redis: PrivateRedis | None = None
        self.vhost: PrivateVhost | None = None
        if broker == "amqp":
            base = amqp_url()
            _require_reachable(base)
            self.vhost = stack.enter_context(PrivateVhost(base))
        else:
            self.redis = stack.enter_context(PrivateRedis(workdir / "redis"))
        self.postgres = stack.enter_context(PrivatePostgres(workdir / "postgres"))

    @property
    def broker_url(self) -> str:
        if self.vhost is not None:
            return self.vhost.url
        assert self.redis is not None
        return self.redis.url

    @property
    def database_url(self) -> str:
        return self.postgres.url

    def restart_broker(self, down_for: float) -> str:
        if self.vhost is not None:
            closed = self.vhost.close_connections()
            return f"closed {closed} connections of vhost {self.vhost.name}"
        assert self.redis is not None
        self.redis.restart(down_for)
        return f"redis-server down {down_for:.1f} s, messages lost"

    def restart_postgres(self, down_for: float) -> str:
        started = time.monotonic()
        self.postgres.stop()
        time.sleep(down_for)  # how long the database stays away is the fault itself
        self.postgres.start()
        return f"PostgreSQL down {time.monotonic() - started:.1f} s"


def _require_reachable(url: str) -> None:
    if not amqp_reachable(url):
        where = url.rsplit("@", 1)[-1]  # without the credentials
        raise SoakSetupError(
            f"RabbitMQ is not reachable at {where}; start it or point TEST_AMQP_URL at one"
        )
    if rabbitmqctl() is None:
        raise SoakSetupError("rabbitmqctl is not installed: the soak cannot make its vhost")


# ---------------------------------------------------------------------------- database


def soak_engine(settings: Settings) -> Engine:
    return make_engine(
        settings,
        pool_size=3,
        max_overflow=2,
        connect_args={"application_name": SOAK_APPLICATION, "connect_timeout": 5},
    )


def add_soak_organization(session: Session) -> None:
    """The third organization: workflow on; entries of SOAK_PERSON need his manager's
    approval and his own (as the service's approver), or his approve-all."""
    session.execute(
        insert(Organization),
        [
            {
                "id": SOAK_ORGANIZATION,
                "name": "Soak Collective",
                "approval_workflow": True,
                "default_currency": "USD",
                "reporting_currency": "EUR",
                "time_zone": "Europe/Berlin",
            }
        ],
    )
    session.execute(
        insert(ExchangeRate),
        [{"organization_id": SOAK_ORGANIZATION, "currency": "EUR", "rate": Decimal("1.25")}],
    )
    person = {
        "organization_id": SOAK_ORGANIZATION,
        "cost_rate": 3000,
        "cost_rate_currency": "EUR",
        "can_approve": True,
    }
    session.execute(
        insert(Person),
        [person | {"id": SOAK_MANAGER, "first_name": "Pia", "last_name": "Principal"}],
    )
    session.execute(
        insert(Person),
        [
            person
            | {
                "id": SOAK_PERSON,
                "first_name": "Sol",
                "last_name": "Soak",
                "manager_id": SOAK_MANAGER,
                "can_approve_all": True,
            }
        ],
    )
    session.execute(
        insert(Service),
        [
            {
                "id": SOAK_SERVICE,
                "organization_id": SOAK_ORGANIZATION,
                "name": "Soaking",
                "billable": True,
                "approver_id": SOAK_PERSON,
            }
        ],
    )
    session.execute(
        insert(Task),
        [
            {
                "id": SOAK_TASK,
                "organization_id": SOAK_ORGANIZATION,
                "service_id": SOAK_SERVICE,
                "title": "Drip",
            }
        ],
    )


def prepare(engine: Engine) -> dict[int, str]:
    """Migrate, load the demo data, add the soak's organization; a token per client person."""
    tokens = prepare_database(engine, DEMO_PEOPLE)
    with Session(engine) as session:
        add_soak_organization(session)
        person = session.scalars(select(Person).where(Person.id == SOAK_PERSON)).one()
        tokens[SOAK_PERSON] = create_token(session, person)
        session.commit()
    return tokens


def terminate_backends(engine: Engine) -> int:
    """pg_terminate_backend of every connection of the stack to its database."""
    with engine.connect() as connection:
        killed = connection.execute(
            text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                " AND application_name <> :ours"
            ),
            {"ours": SOAK_APPLICATION},
        ).scalar_one()
        connection.commit()
    return int(killed)


def retrying(engine: Engine, work: Callable[[Connection], T], timeout: float = 60) -> T:
    """Run work(connection), retrying while the database is away (a fault of the soak's)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with engine.connect() as connection:
                return work(connection)
        except DBAPIError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


# --------------------------------------------------------------------------- processes


@dataclass
class Exit:
    """A process of the stack that ended, and whether the soak's chaos had killed it."""

    name: str
    returncode: int | None
    by_chaos: bool
    at: float


@dataclass
class Slot:
    """One place in the stack: its current process, and how many it has had."""

    role: str
    index: int
    argv: list[str]
    child: Child | None = None
    starts: int = 0
    killed: bool = False

    @property
    def alive(self) -> bool:
        return self.child is not None and self.child.popen.poll() is None


@dataclass
class Processes:
    settings: Settings
    workdir: Path
    env: dict[str, str]
    slots: dict[str, Slot] = field(default_factory=dict)
    exits: list[Exit] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    @property
    def logs(self) -> Path:
        return self.workdir / "logs"

    @property
    def web_url(self) -> str:
        return f"http://127.0.0.1:{self.settings.port}"

    @property
    def workers(self) -> list[Slot]:
        return [slot for slot in self.slots.values() if slot.role == "worker"]

    def start(self) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        self.settings.data_dir.mkdir(parents=True, exist_ok=True)  # beat's schedule goes there
        commands = stack_commands(self.settings)
        web = control_socket(commands["web"], self.workdir / "web.ctl")
        self.slots["web"] = Slot("web", 0, web)
        for index in range(1, WORKERS + 1):
            argv = [*commands["worker"], "--hostname", f"soak{index}@%h"]
            self.slots[f"worker{index}"] = Slot("worker", index, argv)
        beat = commands["beat"]
        if "--schedule" not in beat:
            # Its schedule file in the stack's own data dir, not in the working directory
            # that other stacks of this checkout share.
            beat = [*beat, "--schedule", str(self.settings.data_dir / "celerybeat-schedule")]
        self.slots["beat"] = Slot("beat", 0, beat)
        for name, slot in self.slots.items():
            self._spawn(name, slot)
        for slot in self.slots.values():
            assert slot.child is not None
            if slot.role == "web":
                wait_http(slot.child, f"{self.web_url}/healthz")
            elif slot.role == "worker":
                wait_log(slot.child, b" ready.")
            else:
                wait_log(slot.child, b"beat: Starting")
        self._thread = threading.Thread(target=self._supervise, name="soak-supervisor")
        self._thread.start()

    def _spawn(self, name: str, slot: Slot) -> None:
        log_name = name if slot.starts == 0 else f"{name}.{slot.starts}"
        slot.child = start_child(log_name, slot.argv, self.env, self.logs)
        slot.starts += 1
        slot.killed = False

    def _supervise(self) -> None:
        while not self._stop.wait(SUPERVISE_EVERY):
            with self.lock:
                for name, slot in self.slots.items():
                    if slot.child is None or slot.alive:
                        continue
                    self.exits.append(
                        Exit(slot.child.name, slot.child.popen.returncode, slot.killed, time.time())
                    )
                    # What is left of its group (a pool child outliving its main process).
                    with suppress(ProcessLookupError, PermissionError):
                        os.killpg(slot.child.popen.pid, signal.SIGKILL)
                    self._spawn(name, slot)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        for slot in self.slots.values():
            if slot.child is not None:
                slot.child.stop()

    def log_files(self) -> list[Path]:
        return sorted(self.logs.glob("*.log"))

    # ------------------------------------------------------------------------- chaos

    def busy_workers(self) -> list[Slot]:
        """Workers whose pool process has a job in hand, by their log's last task line."""
        busy = []
        for slot in self.workers:
            if slot.child is None or not slot.alive:
                continue
            events = TASK_EVENT.findall(_tail(slot.child.log))
            if events and events[-1] == b"received":
                busy.append(slot)
        return busy

    def _target(self, pick: Callable[[list[Any]], Any]) -> tuple[Slot | None, str]:
        """A busy worker if there is one (a kill between jobs tests little), else any."""
        alive = [slot for slot in self.workers if slot.alive]
        busy = [slot for slot in self.busy_workers() if slot in alive]
        if not alive:
            return None, ""
        return pick(busy or alive), "mid-job" if busy else "idle"

    def kill_pool_child(self, pick: Callable[[list[Any]], Any]) -> str | None:
        """SIGKILL the pool process of one worker: its main process starts another."""
        with self.lock:
            slot, state = self._target(pick)
            if slot is None:
                return None
            assert slot.child is not None
            pid = _kill_a_child(slot.child.popen.pid, pick)
            return None if pid is None else f"pool process {pid} of {slot.child.name} ({state})"

    def kill_worker(self, pick: Callable[[list[Any]], Any]) -> str | None:
        """SIGKILL a whole worker, main and pool: the supervisor starts a new one."""
        with self.lock:
            slot, state = self._target(pick)
            if slot is None or slot.child is None:
                return None
            slot.killed = True
            with suppress(ProcessLookupError):
                os.killpg(slot.child.popen.pid, signal.SIGKILL)
            return f"{slot.child.name} (pid {slot.child.popen.pid}) and its pool ({state})"

    def kill_web_worker(self, pick: Callable[[list[Any]], Any]) -> str | None:
        """SIGKILL one gunicorn worker: the master forks another."""
        with self.lock:
            slot = self.slots["web"]
            if not slot.alive:
                return None
            assert slot.child is not None
            pid = _kill_a_child(slot.child.popen.pid, pick)
            return None if pid is None else f"gunicorn worker {pid}"


def _kill_a_child(parent: int, pick: Callable[[list[Any]], Any]) -> int | None:
    """SIGKILL one child of the process, as `pick` chooses; its pid, or None if it has none."""
    children = _children(parent)
    if not children:
        return None
    child = pick(children)
    with suppress(psutil.Error):
        child.kill()
    return int(child.pid)


def _tail(path: Path) -> bytes:
    try:
        with path.open("rb") as log:
            log.seek(max(0, log.seek(0, os.SEEK_END) - LOG_TAIL))
            return log.read()
    except OSError:
        return b""


def _children(pid: int) -> list[Any]:
    try:
        return sorted(psutil.Process(pid).children(), key=lambda proc: proc.pid)
    except psutil.Error:
        return []


# ---------------------------------------------------------------------------- together


@dataclass
class SoakStack:
    servers: Servers
    settings: Settings
    engine: Engine
    tokens: dict[int, str]
    processes: Processes

    @property
    def web_url(self) -> str:
        return self.processes.web_url


@contextmanager
def open_soak_stack(broker: str, workdir: Path) -> Iterator[SoakStack]:
    """Servers, database and processes; all stopped at the end, processes first."""
    with ExitStack() as stack:
        servers = Servers(broker, workdir, stack)
        base = Settings.from_env({})
        settings = short_settings(base, workdir).with_urls(servers.database_url, servers.broker_url)
        engine = soak_engine(settings)
        stack.callback(engine.dispose)
        tokens = prepare(engine)
        processes = Processes(settings, workdir, child_env(settings))
        stack.callback(processes.stop)
        processes.start()
        yield SoakStack(servers, settings, engine, tokens, processes)
