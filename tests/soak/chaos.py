"""The chaos thread, and how long the stack takes to recover from each fault.

At random intervals the thread takes the next fault from a deck holding each kind once,
shuffled by the seed (so a short run sees every kind): SIGKILL a worker's pool process or a
whole worker, SIGKILL a gunicorn worker, restart the broker, terminate the stack's
PostgreSQL backends, or restart PostgreSQL. Faults never overlap. Once a fault is over
(the server back), the recovery watch notes which jobs are unfinished at that moment and
how long it takes until every one of them is finished.
"""

from __future__ import annotations

import math
import random
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import DBAPIError

from tests.soak.stack import SoakStack, retrying, terminate_backends

KINDS = ("pool-child", "worker", "web-worker", "broker", "pg-terminate", "pg-restart")
SERVER_FAULTS = ("broker", "pg-terminate", "pg-restart")
INTERVAL = (1.5, 6.0)
BROKER_DOWN = (0.5, 4.0)
DATABASE_DOWN = (0.0, 3.0)
WATCH_EVERY = 0.25
# A worker kill waits this long at most for a worker to be in the middle of a job.
AIM_FOR = 3.0
UNFINISHED = "SELECT id FROM jobs WHERE status IN ('queued', 'running') ORDER BY created_at"


@dataclass
class Fault:
    kind: str
    started: float  # wall clock, as the database's timestamps
    ended: float
    detail: str
    skipped: bool = False
    pending: list[str] = field(default_factory=list)
    recovered_at: float | None = None
    # The job that finished last of those pending: the one that set the recovery time.
    slowest: str | None = None

    @property
    def recovery(self) -> float | None:
        if self.recovered_at is None:
            return None
        return max(0.0, self.recovered_at - self.ended)


def p95(values: list[float]) -> float:
    """Nearest-rank 95th percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


class RecoveryWatch(threading.Thread):
    def __init__(self, engine: Engine, stop: threading.Event) -> None:
        super().__init__(name="soak-recovery", daemon=True)
        self.engine = engine
        self.stop = stop
        self.lock = threading.Lock()
        self.watching: list[Fault] = []
        self.crash: str | None = None

    def track(self, fault: Fault) -> None:
        """Called once the fault is over: the jobs unfinished now are the ones to wait for."""

        def unfinished(connection: Connection) -> list[str]:
            return [str(job_id) for job_id in connection.execute(text(UNFINISHED)).scalars()]

        fault.pending = retrying(self.engine, unfinished)
        if not fault.pending:
            fault.recovered_at = fault.ended
            return
        with self.lock:
            self.watching.append(fault)

    def run(self) -> None:
        try:
            while not self.stop.wait(WATCH_EVERY):
                self.poll()
            self.poll()
        except Exception:
            self.crash = traceback.format_exc()

    def poll(self) -> None:
        with self.lock:
            open_faults = [f for f in self.watching if f.recovered_at is None]
        if not open_faults:
            return
        ids = sorted({job_id for fault in open_faults for job_id in fault.pending})
        try:
            with self.engine.connect() as connection:
                rows = connection.execute(
                    text(
                        "SELECT id, finished_at FROM jobs WHERE id = ANY(CAST(:ids AS uuid[]))"
                        " AND status NOT IN ('queued', 'running')"
                    ),
                    {"ids": ids},
                ).all()
        except DBAPIError:
            return  # the database is away (a fault of ours): look again next time
        finished = {str(job_id): at.timestamp() for job_id, at in rows if at is not None}
        for fault in open_faults:
            if all(job_id in finished for job_id in fault.pending):
                fault.slowest = max(fault.pending, key=finished.__getitem__)
                fault.recovered_at = finished[fault.slowest]


class Chaos(threading.Thread):
    def __init__(
        self,
        stack: SoakStack,
        seed: int,
        stop: threading.Event,
        watch: RecoveryWatch,
        say: Callable[[str], None],
    ) -> None:
        super().__init__(name="soak-chaos", daemon=True)
        self.stack = stack
        self.rng = random.Random(f"{seed}:chaos")
        self.stop = stop
        self.watch = watch
        self.say = say
        self.faults: list[Fault] = []
        self.crash: str | None = None

    def run(self) -> None:
        deck: list[str] = []
        try:
            while not self.stop.wait(self.rng.uniform(*INTERVAL)):
                if not deck:
                    deck = list(KINDS)
                    self.rng.shuffle(deck)
                self.faults.append(self.inject(deck.pop()))
        except Exception:
            self.crash = traceback.format_exc()

    def inject(self, kind: str) -> Fault:
        processes, servers = self.stack.processes, self.stack.servers
        pick = self.rng.choice
        if kind in ("pool-child", "worker"):
            self._until_busy()
        started = time.time()
        detail: str | None
        if kind == "pool-child":
            detail = processes.kill_pool_child(pick)
        elif kind == "worker":
            detail = processes.kill_worker(pick)
        elif kind == "web-worker":
            detail = processes.kill_web_worker(pick)
        elif kind == "broker":
            detail = servers.restart_broker(self.rng.uniform(*BROKER_DOWN))
        elif kind == "pg-terminate":
            detail = f"terminated {terminate_backends(self.stack.engine)} backends"
        elif kind == "pg-restart":
            detail = servers.restart_postgres(self.rng.uniform(*DATABASE_DOWN))
        else:
            raise ValueError(f"unknown fault {kind!r}")
        fault = Fault(kind, started, time.time(), detail or "nothing to hit", detail is None)
        if not fault.skipped:
            self.watch.track(fault)
        self.say(f"fault {kind}: {fault.detail}; {len(fault.pending)} jobs unfinished after it")
        return fault

    def _until_busy(self) -> None:
        deadline = time.monotonic() + AIM_FOR
        while not self.stack.processes.busy_workers() and time.monotonic() < deadline:
            time.sleep(0.02)
