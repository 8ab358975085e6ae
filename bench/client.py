"""One measured operation through the HTTP API, on one timeline.

Client instants come from ``time.perf_counter``; the job's ``created_at``, ``started_at`` and
``finished_at`` come from the database's clock and are mapped onto the client's timeline with
an offset measured at start (zero on one machine, but a remote database's clock may differ).

Phases of the polling variant, which add up to end-to-end but for the polling slack:

* submit: POST sent until its 202 is read;
* queue: 202 read until the worker marked the job running (``started_at``); zero when the
  worker was first (the raw, negative figure is kept as ``queue_raw_ms``);
* apply: ``started_at`` until ``finished_at``; when the stored ``finished_at`` is not after
  ``started_at`` (a transaction-start clock), until the poll that saw the 303 instead, and
  the measurement says so (``apply_source``);
* fetch: GET of the result until its body is read;
* end-to-end: POST sent until the result body is read.
"""

from __future__ import annotations

import datetime as dt
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import requests
from sqlalchemy import Engine, text

from bench.stack import BenchError

BULK = "application/vnd.api+json; ext=bulk"
FIRST_POLL_DELAY = 0.010
# After the first second, poll every 2% of the time waited so far (at most every 100 ms), so
# a long job is not slowed by a poller competing for the same CPUs.
POLL_SHARE = 0.02
MAX_POLL_DELAY = 0.100


def clock_offset(engine: Engine, samples: int = 7) -> float:
    """The database clock minus this process's wall clock, in seconds."""
    offsets: list[float] = []
    with engine.connect() as connection:
        for _ in range(samples):
            before = time.time()
            server = connection.execute(text("SELECT clock_timestamp()")).scalar_one()
            after = time.time()
            offsets.append(server.timestamp() - (before + after) / 2)
    return float(statistics.median(offsets))


@dataclass
class Outcome:
    """What one request or job run measured; times in seconds, None where not applicable."""

    status: int
    body: bytes
    e2e: float
    submit: float | None = None
    queue: float | None = None
    apply: float | None = None
    fetch: float | None = None
    queue_db: float | None = None
    queue_raw: float | None = None
    job_times: dict[str, str | None] = field(default_factory=dict)
    wire_bytes: int | None = None
    apply_source: str | None = None
    polls: int = 0
    variant: str = "poll"
    job_id: str | None = None
    notes: list[str] = field(default_factory=list)

    def metrics(self) -> dict[str, Any]:
        def ms(value: float | None) -> float | None:
            return None if value is None else round(value * 1000, 2)

        return {
            "submit_ms": ms(self.submit),
            "queue_ms": ms(self.queue),
            "apply_ms": ms(self.apply),
            "fetch_ms": ms(self.fetch),
            "e2e_ms": ms(self.e2e),
            "queue_db_ms": ms(self.queue_db),
            "queue_raw_ms": ms(self.queue_raw),
            "job_times": self.job_times,
            "wire_bytes": self.wire_bytes,
            "apply_source": self.apply_source,
            "polls": self.polls,
            "variant": self.variant,
            "status": self.status,
            "response_bytes": len(self.body),
            "job_id": self.job_id,
            "notes": self.notes,
        }


def _wire_bytes(response: requests.Response) -> int | None:
    """The body's size as sent (compressed, when the server compressed it)."""
    length = response.headers.get("Content-Length")
    return int(length) if length is not None and length.isdigit() else None


class Client:
    def __init__(self, base_url: str, engine: Engine, offset: float) -> None:
        self.base_url = base_url
        self.engine = engine
        self.http = requests.Session()
        # Anchor the monotonic clock to the wall clock once.
        self._wall0 = time.time()
        self._perf0 = time.perf_counter()
        self._offset = offset

    def close(self) -> None:
        self.http.close()

    def _at(self, server_time: dt.datetime) -> float:
        """A database timestamp as a perf_counter instant."""
        return server_time.timestamp() - self._offset - self._wall0 + self._perf0

    @staticmethod
    def headers(token: str, organization_id: int) -> dict[str, str]:
        return {
            "X-Auth-Token": token,
            "X-Organization-Id": str(organization_id),
            "Content-Type": BULK,
            "Accept": BULK,
        }

    def _job_times(
        self, outcome: Outcome
    ) -> tuple[dt.datetime, dt.datetime | None, dt.datetime | None]:
        with self.engine.connect() as connection:
            row = connection.execute(
                text("SELECT created_at, started_at, finished_at FROM jobs WHERE id = :id"),
                {"id": outcome.job_id},
            ).one()
        outcome.job_times = {
            name: None if value is None else value.isoformat()
            for name, value in row._mapping.items()
        }
        return row.created_at, row.started_at, row.finished_at

    def run(
        self,
        method: str,
        path: str,
        body: bytes,
        headers: dict[str, str],
        *,
        expect: int,
        prefer_wait: int | None = None,
    ) -> Outcome:
        """Submit, wait for the job (polling, or with ``Prefer: wait``), read the result."""
        send = dict(headers)
        if prefer_wait is not None:
            send["Prefer"] = f"wait={prefer_wait}"
        url = self.base_url + path
        t0 = time.perf_counter()
        response = self.http.request(method, url, data=body, headers=send, allow_redirects=False)
        t_submitted = time.perf_counter()

        if prefer_wait is not None and response.status_code != 202:
            # The final answer came with the submission.
            job_id = response.headers.get("Content-Location", "").split("/")[-2]
            outcome = Outcome(
                status=response.status_code,
                body=response.content,
                e2e=t_submitted - t0,
                variant="prefer",
                job_id=job_id,
                wire_bytes=_wire_bytes(response),
            )
            self._check(outcome, expect, method, path)
            self._server_phases(outcome)
            return outcome

        if response.status_code != 202:
            raise BenchError(
                f"{method} {path} answered {response.status_code}, not 202: {response.text[:500]}"
            )
        job_url = self.base_url + response.headers["Location"]
        job_id = job_url.rstrip("/").split("/")[-1]
        polls = 0
        accept = {"X-Auth-Token": headers["X-Auth-Token"], "Accept": BULK}
        accept["X-Organization-Id"] = headers["X-Organization-Id"]
        while True:
            polled = self.http.get(job_url, headers=accept, allow_redirects=False)
            polls += 1
            if polled.status_code == 303:
                t_done = time.perf_counter()
                break
            if polled.status_code != 200:
                raise BenchError(
                    f"GET {job_url} answered {polled.status_code}: {polled.text[:500]}"
                )
            waited = time.perf_counter() - t_submitted
            delay = FIRST_POLL_DELAY if waited < 1 else min(waited * POLL_SHARE, MAX_POLL_DELAY)
            time.sleep(delay)
        t_fetch = time.perf_counter()
        result = self.http.get(self.base_url + polled.headers["Location"], headers=accept)
        t_end = time.perf_counter()

        outcome = Outcome(
            status=result.status_code,
            body=result.content,
            e2e=t_end - t0,
            submit=t_submitted - t0,
            fetch=t_end - t_fetch,
            polls=polls,
            variant="poll" if prefer_wait is None else "prefer, timed out: polled",
            job_id=job_id,
        )
        self._check(outcome, expect, method, path)
        outcome.wire_bytes = _wire_bytes(result)
        created_at, started_at, finished_at = self._job_times(outcome)
        assert started_at is not None
        # Below zero when the worker started before the 202 reached us: no wait at all.
        outcome.queue_raw = self._at(started_at) - t_submitted
        outcome.queue = max(outcome.queue_raw, 0.0)
        outcome.queue_db = (started_at - created_at).total_seconds()
        if finished_at is not None and finished_at > started_at:
            outcome.apply = (finished_at - started_at).total_seconds()
            outcome.apply_source = "job"
        else:
            outcome.apply = t_done - self._at(started_at)
            outcome.apply_source = "poll"
        return outcome

    def _server_phases(self, outcome: Outcome) -> None:
        assert outcome.job_id is not None
        created_at, started_at, finished_at = self._job_times(outcome)
        if started_at is None:
            return
        outcome.queue_db = (started_at - created_at).total_seconds()
        if finished_at is not None and finished_at > started_at:
            outcome.apply = (finished_at - started_at).total_seconds()
            outcome.apply_source = "job"

    @staticmethod
    def _check(outcome: Outcome, expect: int, method: str, path: str) -> None:
        if outcome.status != expect:
            raise BenchError(
                f"{method} {path}: the job's result is {outcome.status}, not {expect}: "
                f"{outcome.body[:1000]!r}"
            )

    def post_sync(self, url: str, body: bytes, headers: dict[str, str], expect: int) -> Outcome:
        """A synchronous request (the naive peer): end-to-end only."""
        t0 = time.perf_counter()
        response = self.http.post(url, data=body, headers=headers)
        t_end = time.perf_counter()
        outcome = Outcome(
            status=response.status_code,
            body=response.content,
            e2e=t_end - t0,
            variant="sync",
            wire_bytes=_wire_bytes(response),
        )
        self._check(outcome, expect, "POST", url)
        return outcome
