"""The shared-service scenario: one organization floods the queue, another sends one entry.

On a stack of its own with two worker processes (the default of `timebatch run`):

- *alone*: one 5,000-entry create of organization 2110, with `Prefer: wait`, on idle workers;
- *flood N* (N = 12, 48): organization 2110 queues N such jobs, then organization 2112 sends
  1-entry creates with `Prefer: wait`, one after the other while the flood is still queued
  (up to five); their median latency is what a small tenant sees behind a flood, and the
  flood's entries per second over its whole run is the throughput;
- *waiters*: 64 clients hold `Prefer: wait=30` on a job queued behind a flood, re-asking as
  Retry-After says when answered early, while 10 `/healthz` calls are timed.

Ratios against the alone job, from the same run, go into the bench's table of ratios.
`python -m bench.fairness` runs the scenario by itself.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import orjson
import requests
from sqlalchemy import text

from bench.documents import MEMBER, ORGANIZATION, create_body
from bench.report import Ratio, print_scenario, ratio
from bench.stack import Stack, open_stack
from shared.settings import Settings

SMALL_ORGANIZATION = 2112
SMALL_MEMBER = 8881  # Elsewhere Ltd's member, on its service 2213
FLOOD_JOB = 5_000
FLOODS = (12, 48)
# Small jobs sent one after the other behind each flood; their median is reported, since
# one alone mostly measures how far the running jobs happened to be.
SMALL_JOBS = 5
WAITERS = 64
HEALTH_CALLS = 10
BULK = "application/vnd.api+json; ext=bulk"
FIRST_FREE_ENTRY_ID = 1000


def small_body() -> bytes:
    resource = {
        "type": "time_entries",
        "attributes": {"date": "2026-02-03", "time": 30},
        "relationships": {
            "person": {"data": {"type": "people", "id": str(SMALL_MEMBER)}},
            "service": {"data": {"type": "services", "id": "2213"}},
        },
    }
    return orjson.dumps({"data": [resource]})


@dataclass
class Scenario:
    alone_s: float
    flood_small_s: dict[int, float]
    flood_rate: dict[int, float]
    alone_rate: float
    health_ms: list[float]
    waiter_answers: dict[int, int]
    small_jobs: dict[int, int]

    def lines(self) -> list[str]:
        found = [
            f"fairness: one {FLOOD_JOB:,}-entry job alone {self.alone_s * 1000:,.0f} ms"
            f" ({self.alone_rate:,.0f} entries/s)"
        ]
        for n in FLOODS:
            found.append(
                f"fairness: behind {n} jobs of {FLOOD_JOB:,}, a 1-entry job of another"
                f" organization took {self.flood_small_s[n] * 1000:,.0f} ms (median of"
                f" {self.small_jobs[n]}); the flood ran at"
                f" {self.flood_rate[n]:,.0f} entries/s"
            )
        every = ", ".join(f"{value:.0f}" for value in self.health_ms)
        found.append(
            f"fairness: /healthz with {WAITERS} waiting clients, slowest of {HEALTH_CALLS}:"
            f" {max(self.health_ms):,.0f} ms (all: {every});"
            f" waiters' answers by status {dict(sorted(self.waiter_answers.items()))}"
        )
        return found

    def ratios(self) -> list[Ratio]:
        worst, most = self.flood_small_s[FLOODS[-1]], FLOODS[-1]
        growth = ratio(worst, self.flood_small_s[FLOODS[0]])
        slowest = max(self.health_ms)
        rate = ratio(min(self.flood_rate.values()), self.alone_rate)
        return [
            Ratio(
                f"small job behind {most} / one {FLOOD_JOB:,} job alone",
                ratio(worst, self.alone_s),
                "<= 2x",
                worst <= 2 * self.alone_s,
            ),
            Ratio(
                f"small job behind {most} / behind {FLOODS[0]}",
                growth,
                "<= 1.5x",
                growth is not None and growth <= 1.5,
            ),
            Ratio(
                "flood throughput / one job alone",
                rate,
                ">= 1x",
                rate is not None and rate >= 1,
            ),
            Ratio(
                f"slowest /healthz with {WAITERS} waiters / 250 ms",
                slowest / 250,
                "<= 1x",
                slowest <= 250,
                f"slowest {slowest:,.0f} ms",
            ),
        ]


class Runner:
    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.url = stack.web_url
        self.big = create_body(FLOOD_JOB)
        self.small = small_body()
        self.flooder = self._headers(MEMBER, ORGANIZATION)
        self.tenant = self._headers(SMALL_MEMBER, SMALL_ORGANIZATION)
        self.measured: dict[int, int] = {}

    def _headers(self, person: int, organization: int) -> dict[str, str]:
        return {
            "X-Auth-Token": self.stack.tokens[person],
            "X-Organization-Id": str(organization),
            "Content-Type": BULK,
            "Accept": BULK,
        }

    def submit(self, body: bytes, headers: dict[str, str], wait: int = 0) -> requests.Response:
        extra = {"Prefer": f"wait={wait}"} if wait else {}
        response = requests.post(
            f"{self.url}/api/v2/time_entries", data=body, headers=headers | extra, timeout=120
        )
        expected = {201} if wait else {202}
        if response.status_code not in expected | {202}:
            raise RuntimeError(f"submission answered {response.status_code}: {response.text}")
        return response

    def unfinished(self) -> int:
        with self.stack.engine.connect() as connection:
            return int(
                connection.execute(
                    text("SELECT count(*) FROM jobs WHERE status IN ('queued', 'running')")
                ).scalar_one()
            )

    def drain(self, timeout: float = 600) -> float:
        """Wait until no job is unfinished; returns when that was seen."""
        deadline = time.monotonic() + timeout
        while self.unfinished():
            if time.monotonic() > deadline:
                raise RuntimeError("the queue did not drain")
            time.sleep(0.05)
        return time.perf_counter()

    def reset(self) -> None:
        self.drain()
        with self.stack.engine.begin() as connection:
            connection.execute(
                text("DELETE FROM time_entries WHERE id >= :first"), {"first": FIRST_FREE_ENTRY_ID}
            )
            connection.execute(text("DELETE FROM jobs"))

    def alone(self) -> float:
        self.reset()
        started = time.perf_counter()
        response = self.submit(self.big, self.flooder, wait=60)
        if response.status_code != 201:
            raise RuntimeError(f"the job alone answered {response.status_code}")
        return time.perf_counter() - started

    def flood(self, n: int) -> tuple[float, float]:
        """(latency of the small job, the flood's entries per second)."""
        self.reset()
        started = time.perf_counter()
        for _ in range(n):
            self.submit(self.big, self.flooder)
        latencies = []
        for _ in range(SMALL_JOBS):
            small_started = time.perf_counter()
            response = self.submit(self.small, self.tenant, wait=60)
            latencies.append(time.perf_counter() - small_started)
            if response.status_code != 201:
                raise RuntimeError(f"a small job answered {response.status_code} behind the flood")
            # Only small jobs sent into a flood count: once it has drained (first-come,
            # first-served gets there with the first one), the next would measure an idle queue.
            if self.unfinished() <= self.stack.settings.worker_concurrency:
                break
        self.measured[n] = len(latencies)
        finished = self.drain()
        return statistics.median(latencies), n * FLOOD_JOB / (finished - started)

    def waiters(self) -> tuple[list[float], dict[int, int]]:
        self.reset()
        for _ in range(12):
            self.submit(self.big, self.flooder)
        job = self.submit(self.big, self.flooder).json()["data"]["links"]["self"]
        stop = threading.Event()
        answers: dict[int, int] = {}
        lock = threading.Lock()

        def hold() -> None:
            with requests.Session() as http:
                while not stop.is_set():
                    response = http.get(
                        f"{self.url}{job}",
                        headers=self.flooder | {"Prefer": "wait=30"},
                        allow_redirects=False,
                        timeout=60,
                    )
                    with lock:
                        answers[response.status_code] = answers.get(response.status_code, 0) + 1
                    if response.status_code != 200:
                        return
                    stop.wait(float(response.headers.get("Retry-After", "1")))

        timings: list[float] = []
        with ThreadPoolExecutor(WAITERS) as pool:
            holders = [pool.submit(hold) for _ in range(WAITERS)]
            time.sleep(1.0)  # let every waiter's first request reach the server
            with requests.Session() as http:
                for _ in range(HEALTH_CALLS):
                    started = time.perf_counter()
                    http.get(f"{self.url}/healthz", timeout=60).raise_for_status()
                    timings.append((time.perf_counter() - started) * 1000)
                    time.sleep(0.1)
            stop.set()
            for holder in holders:
                holder.result()
        return timings, answers


def run(stack: Stack, say: Callable[[str], None]) -> Scenario:
    runner = Runner(stack)
    say(f"fairness: one {FLOOD_JOB:,}-entry job alone ...")
    runner.alone()  # warm both worker processes and the web's connections
    alone = runner.alone()
    small: dict[int, float] = {}
    rates: dict[int, float] = {}
    for n in FLOODS:
        say(f"fairness: a flood of {n} jobs and one small job ...")
        small[n], rates[n] = runner.flood(n)
    say(f"fairness: {WAITERS} waiting clients and /healthz ...")
    health, answers = runner.waiters()
    runner.reset()
    return Scenario(alone, small, rates, FLOOD_JOB / alone, health, answers, runner.measured)


def open_fairness_stack(base: Settings, workdir: Path, stack: ExitStack) -> Stack:
    return open_stack(
        base, workdir, stack, (MEMBER, SMALL_MEMBER), worker_concurrency=2, naive=False
    )


def main() -> int:
    def say(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    workdir = Path(tempfile.mkdtemp(prefix="timebatch-fairness-"))
    with ExitStack() as stack:
        parts = open_fairness_stack(Settings.from_env(), workdir, stack)
        scenario = run(parts, say)
    return print_scenario(scenario)


if __name__ == "__main__":
    sys.exit(main())
