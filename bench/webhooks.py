"""Webhook latency: from the commit that ends a job to its delivery at a local receiver.

On a stack of its own (web, worker and the Procfile's webhooks process), one endpoint of
organization 2110 points at a receiver in this process. JOBS one-entry creates are sent one
after the other with `Prefer: wait`; each job's `finished_at` (the database's clock at its
end, mapped onto this process's clock) is compared with the instant its delivery arrived.

The baseline, measured in the same run: the same signed body POSTed straight from this
process to the same receiver, what a delivery costs with no queue, claim or record around it.
`python -m bench.webhooks` runs it by itself.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import statistics
import sys
import tempfile
import threading
import time
import uuid
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import orjson
import requests
from sqlalchemy import text
from standardwebhooks import Webhook as Signer
from werkzeug import Request, Response
from werkzeug.serving import make_server

from bench.client import clock_offset
from bench.documents import MEMBER, ORGANIZATION, create_body
from bench.report import Ratio, print_scenario, ratio
from bench.stack import Stack, child_env, free_port, open_stack, start_child, wait_log
from shared.devstack.supervisor import stack_commands
from shared.settings import Settings
from shared.webhooks.endpoints import new_secret

JOBS = 200
BULK = "application/vnd.api+json; ext=bulk"
DELIVERY_TIMEOUT = 60.0


class Receiver:
    """A threaded HTTP server that notes when each delivery (by job id) first arrived."""

    def __init__(self) -> None:
        self.arrived: dict[str, float] = {}
        self.requests = 0
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # a line per request otherwise
        app = Request.application(self._answer)
        self.server = make_server("127.0.0.1", free_port(), app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def _answer(self, request: Request) -> Response:
        now = time.time()
        body = orjson.loads(request.get_data())
        with self._changed:
            self.requests += 1
            self.arrived.setdefault(body["data"]["id"], now)
            self._changed.notify_all()
        return Response(status=204)

    def wait_for(self, count: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self._changed:
            while len(self.arrived) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RuntimeError(f"{len(self.arrived)} of {count} deliveries arrived")
                self._changed.wait(left)

    def __enter__(self) -> Receiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()


@dataclass
class Scenario:
    latencies_ms: list[float]
    direct_ms: list[float]
    duplicates: int

    @staticmethod
    def _pct(values: list[float], q: int) -> float:
        return statistics.quantiles(values, n=100, method="inclusive")[q - 1]

    def lines(self) -> list[str]:
        got = self.latencies_ms
        direct = self.direct_ms
        return [
            f"webhooks: {len(got)} jobs, commit to delivery p50 {self._pct(got, 50):.1f} ms,"
            f" p99 {self._pct(got, 99):.1f} ms, max {max(got):.1f} ms;"
            f" {self.duplicates} duplicate deliveries",
            f"webhooks baseline: a signed POST straight to the receiver p50"
            f" {self._pct(direct, 50):.1f} ms, p99 {self._pct(direct, 99):.1f} ms",
        ]

    def ratios(self) -> list[Ratio]:
        # No target in the issue: shown so that a change that slows deliveries is seen.
        p50, direct = self._pct(self.latencies_ms, 50), self._pct(self.direct_ms, 50)
        return [
            Ratio(
                "webhook commit-to-delivery p50 / direct POST p50",
                ratio(p50, direct),
                detail=f"{p50:.1f} ms / {direct:.1f} ms",
            )
        ]


def open_webhooks_stack(base: Settings, workdir: Path, stack: ExitStack) -> Stack:
    # The receiver listens on loopback: a private target, allowed for this stack only.
    parts = open_stack(
        dataclasses.replace(base, webhook_allow_private=True),
        workdir,
        stack,
        (MEMBER,),
        naive=False,
    )
    argv = stack_commands(parts.settings, names=("webhooks",))["webhooks"]
    deliverer = start_child("webhooks", argv, child_env(parts.settings), workdir / "logs")
    stack.callback(deliverer.stop)
    wait_log(deliverer, b" ready.")
    return parts


def run(parts: Stack, receiver: Receiver) -> Scenario:
    secret = new_secret()
    with parts.engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO webhooks (organization_id, url, events, secret)"
                " VALUES (:org, :url, ARRAY['job.succeeded'], :secret)"
            ),
            {"org": ORGANIZATION, "url": receiver.url, "secret": secret},
        )
    offset = clock_offset(parts.engine)
    headers = {
        "Content-Type": BULK,
        "Accept": BULK,
        "Prefer": "wait=30",
        "X-Auth-Token": parts.tokens[MEMBER],
        "X-Organization-Id": str(ORGANIZATION),
    }
    body = create_body(1)
    job_ids: list[str] = []
    with requests.Session() as session:
        for _ in range(JOBS):
            answer = session.post(
                f"{parts.web_url}/api/v2/time_entries", data=body, headers=headers
            )
            if answer.status_code != 201:
                raise RuntimeError(f"create answered {answer.status_code}: {answer.text[:300]}")
            job_ids.append(answer.headers["Content-Location"].split("/")[-2])
    receiver.wait_for(JOBS, DELIVERY_TIMEOUT)
    with parts.engine.connect() as connection:
        finished: dict[str, dt.datetime] = dict(
            connection.execute(
                text("SELECT id::text, finished_at FROM jobs WHERE id::text = ANY(:ids)"),
                {"ids": job_ids},
            ).all()
        )
    latencies = [
        (receiver.arrived[job_id] - (finished[job_id].timestamp() - offset)) * 1000
        for job_id in job_ids
    ]
    duplicates = receiver.requests - JOBS
    return Scenario(latencies, _direct(receiver, secret), duplicates)


def _direct(receiver: Receiver, secret: str) -> list[float]:
    """The same kind of signed POST, from here, with a session per request as a delivery has."""
    signer = Signer(secret)
    took = []
    for _ in range(JOBS):
        message_id = f"msg_{uuid.uuid4().hex}"
        payload = orjson.dumps({"type": "job.succeeded", "data": {"id": str(uuid.uuid4())}})
        started = time.perf_counter()
        now = time.time()
        with requests.Session() as session:
            session.post(
                receiver.url,
                data=payload,
                headers={
                    "webhook-id": message_id,
                    "webhook-timestamp": str(int(now)),
                    "webhook-signature": signer.sign(message_id, _utc(now), payload.decode()),
                },
            )
        took.append((time.perf_counter() - started) * 1000)
    return took


def _utc(timestamp: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(timestamp, dt.UTC)


def main() -> int:
    workdir = Path(tempfile.mkdtemp(prefix="timebatch-webhooks-"))
    with ExitStack() as stack, Receiver() as receiver:
        parts = open_webhooks_stack(Settings.from_env(), workdir, stack)
        scenario = run(parts, receiver)
    return print_scenario(scenario)


if __name__ == "__main__":
    sys.exit(main())
