"""The soak's clients: each sends one job at a time, as a careful integration does.

Every submission carries an Idempotency-Key; on a connection error, a 429 or a 5xx the client
sends the same request again with the same key (after Retry-After when given) and must be
told of the same job. It follows the job to its result and only then applies the job's
effect to its part of the model (tests/soak/model.py). Every answer is checked as it comes:
a 5xx other than a 503 with Retry-After, a second job for a key, a valid batch that failed
or an invalid one that succeeded are violations, each kept with the job and request ids
that the stack's logs repeat.
"""

from __future__ import annotations

import math
import random
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import requests

from tests.soak.model import Owned, Persona, Plan, ResultMismatch

BULK = "application/vnd.api+json; ext=bulk"
SUCCESS = frozenset({200, 201, 204})
CONNECT_TIMEOUT = 5.0
READ_TIMEOUT = 30.0
# A careful client waits as long as Retry-After says, up to a bound of its own.
MAX_RETRY_AFTER = 5.0
# What the app's catch-all answers (api/errors.py), as opposed to a job's stored 500 result.
UNHANDLED_TITLE = "Internal server error"


@dataclass
class Violation:
    kind: str
    detail: str
    client: str
    job_id: str | None = None
    request_id: str | None = None
    at: float = field(default_factory=time.time)

    def line(self) -> str:
        ids = ", ".join(
            part
            for part in (
                f"job {self.job_id}" if self.job_id else "",
                f"request {self.request_id}" if self.request_id else "",
            )
            if part
        )
        return f"{self.kind}: {self.client}: {self.detail}" + (f" ({ids})" if ids else "")


@dataclass
class JobRecord:
    """One submission and what became of it, as the client saw it."""

    client: str
    serial: int
    operation: str
    key: str
    valid: bool
    size: int
    why_invalid: str
    job_id: str | None = None
    # The final answer: the job's result, or the status that refused the submission.
    result_status: int | None = None
    refused: bool = False
    applied: bool = False
    error: str | None = None
    accepted_at: float | None = None
    finished_at: float | None = None

    @property
    def tag(self) -> str:
        return f"soak:{self.client}:j{self.serial}"

    @property
    def succeeded(self) -> bool:
        return self.result_status in SUCCESS and not self.refused

    @property
    def failed(self) -> bool:
        return self.result_status is not None and not self.succeeded and not self.refused


@dataclass
class Counters:
    requests: int = 0
    retries: int = 0
    connection_errors: int = 0
    statuses: Counter[int] = field(default_factory=Counter)

    def add(self, other: Counters) -> None:
        self.requests += other.requests
        self.retries += other.retries
        self.connection_errors += other.connection_errors
        self.statuses.update(other.statuses)


class Deadline:
    """When clients must give up: never during the run, a while after it once it ends."""

    def __init__(self) -> None:
        self._at = math.inf

    def set(self, seconds_from_now: float) -> None:
        self._at = time.monotonic() + seconds_from_now

    def expired(self) -> bool:
        return time.monotonic() > self._at


class GaveUp(Exception):
    """The drain deadline passed while the client was still waiting for an answer."""


def _document(response: requests.Response) -> Any:
    if not response.content:
        return None
    try:
        return orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return None


def _first_error(document: Any) -> str:
    try:
        error = document["errors"][0]
    except (KeyError, IndexError, TypeError):
        return "(no JSON:API error)"
    pointer = (error.get("source") or {}).get("pointer")
    where = f" at {pointer}" if pointer else ""
    return f"{error.get('status')} {error.get('title')}: {error.get('detail')}{where}"


def _stored_failure(response: requests.Response) -> bool:
    """A job's stored 500 result (a JSON:API error document the worker wrote), as opposed to
    a request that failed: the app's catch-all, or gunicorn's HTML page."""
    document = _document(response)
    return (
        response.status_code == 500
        and isinstance(document, dict)
        and bool(document.get("errors"))
        and not _first_error(document).startswith(f"500 {UNHANDLED_TITLE}:")
    )


def _excerpt(response: requests.Response) -> str:
    return response.content[:300].decode(errors="replace").replace("\n", " ")


class Client(threading.Thread):
    def __init__(
        self,
        index: int,
        persona: Persona,
        token: str,
        url: str,
        seed: int,
        stop: threading.Event,
        deadline: Deadline,
        say: Callable[[str], None],
    ) -> None:
        super().__init__(name=f"soak-client-c{index}", daemon=True)
        self.client = f"c{index}"
        self.persona = persona
        self.url = url
        self.seed = seed
        self.stop = stop
        self.deadline = deadline
        self.say = say
        # Plans come from the seed alone; retry timing comes from another generator, so that
        # how many retries a fault caused does not change the jobs that follow.
        self.rng = random.Random(f"{seed}:{self.client}")
        self.jitter = random.Random()
        self.owned = Owned(persona, self.client, self.rng)
        self.records: list[JobRecord] = []
        self.violations: list[Violation] = []
        self.counters = Counters()
        self.crash: str | None = None
        self.headers = {
            "X-Auth-Token": token,
            "X-Organization-Id": str(persona.organization_id),
            "Accept": BULK,
        }
        self.http = requests.Session()
        self.sleep: Callable[[float], None] = time.sleep

    # ---------------------------------------------------------------------- the loop

    def run(self) -> None:
        serial = 0
        try:
            while not self.stop.is_set():
                serial += 1
                self.execute(self.owned.next_plan(serial))
        except GaveUp:
            pass
        except Exception:
            # A bug of the soak, not of the app: reported as such, never as a violation.
            self.crash = traceback.format_exc()
        finally:
            self.http.close()

    def execute(self, plan: Plan) -> None:
        record = JobRecord(
            client=self.client,
            serial=plan.serial,
            operation=plan.operation,
            key=f"soak-{self.seed}-{self.client}-{plan.serial}",
            valid=plan.valid,
            size=plan.size,
            why_invalid=plan.why_invalid,
        )
        self.records.append(record)
        wait_on_submit = self.rng.random() < 0.25
        wait_on_poll = self.rng.choice((0, 2, 10, 10))
        try:
            final = self.submit(plan, record, wait_on_submit)
            if final is None and record.job_id is not None:
                final = self.follow(record, wait_on_poll)
        except GaveUp:
            record.error = "no final answer before the drain deadline"
            stage = "accepted, never finished" if record.job_id else "never accepted"
            self.violation(
                "unfinished",
                f"{plan.operation} job {plan.serial}: {stage} by the drain deadline",
                record.job_id,
            )
            raise
        record.finished_at = time.monotonic()
        if final is not None:
            self.conclude(plan, record, final)

    # ------------------------------------------------------------------------- HTTP

    def violation(
        self, kind: str, detail: str, job_id: str | None = None, request_id: str | None = None
    ) -> None:
        found = Violation(kind, detail, self.client, job_id, request_id)
        self.violations.append(found)
        self.say(f"VIOLATION {found.line()}")

    def send(
        self,
        method: str,
        path: str,
        request_id: str,
        headers: dict[str, str],
        *,
        data: bytes | None = None,
        timeout: float = READ_TIMEOUT,
        job_id: str | None = None,
        stored_result: bool = False,
    ) -> requests.Response | None:
        """One request; None on a connection error. Notes every 5xx that is not a proper 503,
        but for a job's stored result, which the caller judges."""
        self.counters.requests += 1
        try:
            response = self.http.request(
                method,
                f"{self.url}{path}",
                data=data,
                headers=self.headers | headers | {"X-Request-Id": request_id},
                timeout=(CONNECT_TIMEOUT, timeout),
                allow_redirects=False,
            )
        except requests.RequestException:
            self.counters.connection_errors += 1
            return None
        self.note(response, method, path, request_id, stored_result, job_id)
        return response

    def note(
        self,
        response: requests.Response,
        method: str,
        path: str,
        request_id: str,
        stored_result: bool = False,
        job_id: str | None = None,
    ) -> None:
        self.counters.statuses[response.status_code] += 1
        if not stored_result:
            self.judge(response, method, path, request_id, job_id)

    def judge(
        self,
        response: requests.Response,
        method: str,
        path: str,
        request_id: str,
        job_id: str | None = None,
    ) -> None:
        """A 5xx other than a 503 with Retry-After is a violation."""
        status = response.status_code
        proper = status == 503 and "Retry-After" in response.headers
        if status >= 500 and not proper:
            self.violation(
                "5xx",
                f"{method} {path} answered {status}: {_excerpt(response)}",
                job_id,
                request_id,
            )

    def pause(self, response: requests.Response | None, attempt: int, retry: bool = True) -> None:
        """Before a retry or the next poll: Retry-After when the server gave one, else a
        jittered backoff."""
        self.counters.retries += retry
        if self.deadline.expired():
            raise GaveUp
        value = response.headers.get("Retry-After", "") if response is not None else ""
        if value.isdigit():
            delay = min(float(value), MAX_RETRY_AFTER)
        else:
            delay = min(0.1 * 2 ** min(attempt, 5), 2.0) * self.jitter.uniform(0.5, 1.0)
        self.sleep(delay)

    def same_job(self, record: JobRecord, job_id: str, request_id: str) -> None:
        if record.job_id is None:
            record.job_id = job_id
            record.accepted_at = time.monotonic()
        elif record.job_id != job_id:
            self.violation(
                "second job",
                f"a retry with Idempotency-Key {record.key} answered job {job_id},"
                f" not {record.job_id}",
                job_id,
                request_id,
            )

    def submit(self, plan: Plan, record: JobRecord, wait: bool) -> requests.Response | None:
        """Send until the job is accepted; returns the final answer when it came at once."""
        headers = {"Content-Type": BULK, "Idempotency-Key": record.key}
        if wait:
            headers["Prefer"] = "wait=5"
        attempt = 0
        while True:
            attempt += 1
            request_id = f"{record.key}-s{attempt}"
            response = self.send(
                plan.method,
                plan.path,
                request_id,
                headers,
                data=plan.body,
                timeout=READ_TIMEOUT + (5 if wait else 0),
                job_id=record.job_id,
                # With a wait, a 500 may be the job's own stored result: judged below.
                stored_result=wait,
            )
            if response is None:
                self.pause(response, attempt)
                continue
            status = response.status_code
            if "Preference-Applied" in response.headers and (
                status < 500 or _stored_failure(response)
            ):
                # The job finished within the wait: this is its result.
                location = response.headers.get("Content-Location", "")
                self.same_job(record, location.split("/")[-2], request_id)
                return response
            if status == 429 or status >= 500:
                if wait:
                    self.judge(response, plan.method, plan.path, request_id, record.job_id)
                self.pause(response, attempt)
                continue
            document = _document(response)
            if status == 202:
                self.same_job(record, str(document["data"]["id"]), request_id)
                return None
            record.refused = True
            record.result_status = status
            record.error = _first_error(document)
            self.violation(
                "refused",
                f"{plan.operation} job {plan.serial} refused at submission: {record.error}",
                record.job_id,
                request_id,
            )
            return None

    def follow(self, record: JobRecord, wait: int) -> requests.Response | None:
        """Poll the job until it redirects to its result; returns the result."""
        assert record.job_id is not None
        path = f"/api/v2/jobs/{record.job_id}"
        headers = {"Prefer": f"wait={wait}"} if wait else {}
        attempt = 0
        while True:
            attempt += 1
            request_id = f"{record.key}-p{attempt}"
            asked = time.monotonic()
            response = self.send(
                "GET", path, request_id, headers, timeout=READ_TIMEOUT + wait, job_id=record.job_id
            )
            status = None if response is None else response.status_code
            if response is None or status == 429 or (status is not None and status >= 500):
                self.pause(response, attempt)
                continue
            if status == 303:
                return self.result(record, response.headers["Location"])
            if status == 200:
                state = _document(response)["data"]["attributes"]["status"]
                if state not in ("queued", "running"):
                    self.violation("job state", f"job is {state} and has no result", record.job_id)
                    return None
                if self.deadline.expired():
                    raise GaveUp
                # Answered before the wait was over (the server's wait capacity is used up),
                # or no wait asked: come back when Retry-After says.
                if time.monotonic() - asked < wait * 0.9 or not wait:
                    self.pause(response, attempt, retry=False)
                continue
            self.violation(
                "poll",
                f"GET {path} answered {status}: {_first_error(_document(response))}",
                record.job_id,
                request_id,
            )
            return None

    def result(self, record: JobRecord, location: str) -> requests.Response | None:
        attempt = 0
        while True:
            attempt += 1
            request_id = f"{record.key}-r{attempt}"
            response = self.send(
                "GET", location, request_id, {}, job_id=record.job_id, stored_result=True
            )
            if response is None:
                self.pause(response, attempt)
                continue
            status = response.status_code
            if status == 429 or (status >= 500 and not _stored_failure(response)):
                # The request failed, not the job: its stored result is still to be read.
                self.judge(response, "GET", location, request_id, record.job_id)
                self.pause(response, attempt)
                continue
            return response

    # ----------------------------------------------------------------------- outcome

    def conclude(self, plan: Plan, record: JobRecord, response: requests.Response) -> None:
        status = response.status_code
        record.result_status = status
        document = _document(response)
        if status in SUCCESS:
            if not plan.valid:
                self.violation(
                    "invalid job succeeded",
                    f"{plan.operation} job {plan.serial} succeeded although {plan.why_invalid}",
                    record.job_id,
                )
                return
            try:
                plan.apply(document)
            except (ResultMismatch, KeyError, TypeError, ValueError) as exc:
                self.violation(
                    "result",
                    f"{plan.operation} job {plan.serial}: the result does not match: {exc}",
                    record.job_id,
                )
                return
            record.applied = True
            return
        record.error = _first_error(document)
        if status >= 500:
            self.violation(
                "job failed",
                f"{plan.operation} job {plan.serial} ({plan.size} entries) ended {record.error}",
                record.job_id,
            )
        elif plan.valid:
            self.violation(
                "valid job failed",
                f"{plan.operation} job {plan.serial} ({plan.size} entries) ended {record.error}",
                record.job_id,
            )


class HealthProbe(threading.Thread):
    """What a load balancer does: GET /healthz every half second, its answers checked like
    the clients' (200, or 503 with Retry-After while a server is away)."""

    EVERY = 0.5

    def __init__(self, url: str, stop: threading.Event, say: Callable[[str], None]) -> None:
        super().__init__(name="soak-health", daemon=True)
        self.url = url
        self.stop = stop
        self.say = say
        self.counters = Counters()
        self.violations: list[Violation] = []
        self.crash: str | None = None

    def run(self) -> None:
        try:
            with requests.Session() as http:
                probe = 0
                while not self.stop.wait(self.EVERY):
                    probe += 1
                    self.check(http, f"soak-health-{probe}")
        except Exception:
            self.crash = traceback.format_exc()

    def check(self, http: requests.Session, request_id: str) -> None:
        self.counters.requests += 1
        try:
            response = http.get(
                f"{self.url}/healthz",
                headers={"X-Request-Id": request_id},
                timeout=(CONNECT_TIMEOUT, READ_TIMEOUT),
            )
        except requests.RequestException:
            self.counters.connection_errors += 1
            return
        status = response.status_code
        self.counters.statuses[status] += 1
        if status >= 500 and not (status == 503 and "Retry-After" in response.headers):
            found = Violation(
                "5xx",
                f"GET /healthz answered {status}: {_excerpt(response)}",
                "health",
                request_id=request_id,
            )
            self.violations.append(found)
            self.say(f"VIOLATION {found.line()}")
