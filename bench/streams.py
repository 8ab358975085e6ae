"""Event streams and the rest of the web tier: `/healthz` while 256 streams are held open.

On a stack of its own (bench.stack: gunicorn with 2 web processes, each allowing
`TIMEBATCH_STREAM_CAPACITY` streams, 128 by default; one worker):

- *baseline*: 10 `/healthz` calls with no stream open;
- *held*: a 100,000-entry job running and 7 small ones queued behind it; 256 SSE streams
  (`GET /api/v2/jobs/{id}/events`) opened on them, spread over the web processes (a 503, from
  a process already full, is retried until every stream is open), each holding its
  connection after its first event; then the same 10 calls while they are all held.

Target: the slowest call with the streams held at most 250 ms. `python -m bench.streams`
runs the scenario by itself.
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
from dataclasses import dataclass, field
from pathlib import Path

import requests
from sqlalchemy import text

from bench.documents import MEMBER, ORGANIZATION, create_body
from bench.report import Ratio, print_scenario
from bench.stack import BenchError, Stack, open_stack
from shared.settings import Settings

STREAMS = 256
HEALTH_CALLS = 10
TARGET_MS = 250.0
LONG_JOB = 100_000
QUEUED_JOBS = 7
QUEUED_JOB = 1_000
OPEN_TIMEOUT = 60.0
BULK = "application/vnd.api+json; ext=bulk"


@dataclass
class Scenario:
    baseline_ms: list[float]
    held_ms: list[float]
    streams: int
    refused: int
    open_s: float
    capacity: int
    processes: int
    # Seconds each stream took from its first request to its first event, 503s included.
    first_event_s: list[float]
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        def every(values: list[float]) -> str:
            return ", ".join(f"{value:.0f}" for value in values)

        return [
            f"streams: /healthz with no stream open, slowest of {HEALTH_CALLS}:"
            f" {max(self.baseline_ms):,.0f} ms (all: {every(self.baseline_ms)})",
            f"streams: /healthz with {self.streams} event streams held"
            f" ({self.processes} web processes x {self.capacity} allowed; opened in"
            f" {self.open_s:.1f} s, {self.refused} refusals retried; first event after"
            f" {statistics.median(self.first_event_s) * 1000:,.0f} ms median,"
            f" {max(self.first_event_s) * 1000:,.0f} ms at most), slowest of"
            f" {HEALTH_CALLS}: {max(self.held_ms):,.0f} ms (all: {every(self.held_ms)})",
            *(f"streams: {note}" for note in self.notes),
        ]

    def ratios(self) -> list[Ratio]:
        slowest = max(self.held_ms)
        return [
            Ratio(
                f"slowest /healthz with {self.streams} streams / {TARGET_MS:.0f} ms",
                slowest / TARGET_MS,
                "<= 1x",
                slowest <= TARGET_MS and self.streams == STREAMS,
                f"slowest {slowest:,.0f} ms; baseline {max(self.baseline_ms):,.0f} ms",
            )
        ]


class Runner:
    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.url = stack.web_url
        self.headers = {
            "X-Auth-Token": stack.tokens[MEMBER],
            "X-Organization-Id": str(ORGANIZATION),
        }

    def submit(self, size: int) -> str:
        response = requests.post(
            f"{self.url}/api/v2/time_entries",
            data=create_body(size),
            headers=self.headers | {"Content-Type": BULK, "Accept": BULK},
            timeout=300,
        )
        if response.status_code != 202:
            raise BenchError(f"submission answered {response.status_code}: {response.text[:300]}")
        location: str = response.headers["Location"]
        return location

    def health(self) -> list[float]:
        timings = []
        with requests.Session() as http:
            for _ in range(HEALTH_CALLS):
                started = time.perf_counter()
                http.get(f"{self.url}/healthz", timeout=60).raise_for_status()
                timings.append((time.perf_counter() - started) * 1000)
                time.sleep(0.1)  # spaced as a load balancer's checks are, not back to back
        return timings

    def open_stream(self, job: str, deadline: float) -> tuple[requests.Response, int]:
        """A stream that has sent its first event, and how many 503s it took to get it."""
        refused = 0
        while True:
            response = requests.get(
                f"{self.url}{job}/events",
                headers=self.headers | {"Accept": "text/event-stream"},
                stream=True,
                timeout=(10, 60),
            )
            if response.status_code == 200:
                for line in response.iter_lines(chunk_size=1):
                    if line.startswith(b"id:"):
                        return response, refused
                raise BenchError(f"the stream of {job} ended before its first event")
            response.close()
            if response.status_code != 503 or time.monotonic() > deadline:
                raise BenchError(f"a stream of {job} answered {response.status_code}")
            refused += 1
            time.sleep(0.05)

    def unfinished(self) -> int:
        """Jobs not ended: the server holds every stream of theirs open."""
        with self.stack.engine.connect() as connection:
            return int(
                connection.execute(
                    text("SELECT count(*) FROM jobs WHERE status IN ('queued', 'running')")
                ).scalar_one()
            )

    def run(self, say: Callable[[str], None]) -> Scenario:
        say("streams: /healthz with no stream open ...")
        self.health()  # warm both processes' connections
        baseline = self.health()
        say(f"streams: one {LONG_JOB:,}-entry job and {QUEUED_JOBS} queued behind it ...")
        jobs = [self.submit(LONG_JOB)] + [self.submit(QUEUED_JOB) for _ in range(QUEUED_JOBS)]
        say(f"streams: opening {STREAMS} event streams ...")
        started = time.monotonic()
        deadline = started + OPEN_TIMEOUT
        opened: list[requests.Response] = []
        refusals = 0
        waited: list[float] = []
        lock = threading.Lock()

        def hold(n: int) -> None:
            nonlocal refusals
            asked = time.monotonic()
            response, refused = self.open_stream(jobs[n % len(jobs)], deadline)
            with lock:
                opened.append(response)
                refusals += refused
                waited.append(time.monotonic() - asked)

        with ThreadPoolExecutor(STREAMS) as pool:
            for future in [pool.submit(hold, n) for n in range(STREAMS)]:
                future.result()
        open_s = time.monotonic() - started
        notes = []
        try:
            if self.unfinished() != len(jobs):
                raise BenchError("a job ended before the streams were all open: make it longer")
            say(f"streams: {len(opened)} open; /healthz while they are held ...")
            held = self.health()
            if self.unfinished() != len(jobs):
                notes.append("the long job ended during the calls: its streams closed early")
        finally:
            for response in opened:
                response.close()
        settings = self.stack.settings
        return Scenario(
            baseline,
            held,
            len(opened),
            refusals,
            open_s,
            settings.stream_capacity,
            settings.web_concurrency,
            waited,
            notes=notes,
        )


def run(stack: Stack, say: Callable[[str], None]) -> Scenario:
    return Runner(stack).run(say)


def open_streams_stack(base: Settings, workdir: Path, stack: ExitStack) -> Stack:
    return open_stack(base, workdir, stack, (MEMBER,), naive=False)


def main() -> int:
    def say(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    workdir = Path(tempfile.mkdtemp(prefix="timebatch-streams-"))
    with ExitStack() as stack:
        parts = open_streams_stack(Settings.from_env(), workdir, stack)
        scenario = run(parts, say)
    return print_scenario(scenario)


if __name__ == "__main__":
    sys.exit(main())
