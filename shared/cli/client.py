"""The command-line client: submit a bulk file and follow its job; list and show jobs.

It speaks HTTP only (no database), so it works against any timebatch, local or remote:
submit answers 202 and a job, the job's event stream is followed until it says the job
finished (or, when the server refuses the stream or it breaks, the job is polled:
Retry-After, but at least every half second) until it answers 303, and the result it points
to is what the synchronous API would have answered.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urljoin

import click
import orjson
import requests
import sseclient
from tqdm import tqdm

from shared.store.models import JobStatus, Operation

BULK = "application/vnd.api+json; ext=bulk"
DEFAULT_URL = "http://127.0.0.1:8000"
# Where each operation is sent, as in the spec.
ROUTES = {
    Operation.CREATE: ("POST", "/api/v2/time_entries"),
    Operation.UPDATE: ("PATCH", "/api/v2/time_entries"),
    Operation.DELETE: ("DELETE", "/api/v2/time_entries"),
    Operation.APPROVE: ("PATCH", "/api/v2/time_entries/approve"),
    Operation.UNAPPROVE: ("PATCH", "/api/v2/time_entries/unapprove"),
}
PAST = {
    Operation.CREATE: "created",
    Operation.UPDATE: "updated",
    Operation.DELETE: "deleted",
    Operation.APPROVE: "approved",
    Operation.UNAPPROVE: "unapproved",
}
MAX_POLL_INTERVAL = 0.5
TIMEOUT = 60.0
EVENT_STREAM = "text/event-stream"
# The server breaks 15 s of silence with a comment: this long without a byte, it is gone.
STREAM_READ_TIMEOUT = 60.0
# A stream the server ended without `finished` (its lifetime) is followed again from its last
# event; one that ended this soon is not working, and the job is polled instead.
MIN_STREAM_LIFE = 1.0

Progress = Callable[[int, int], None]


class ClientError(click.ClickException):
    """The server could not be reached or answered something the client cannot follow."""


@dataclass(frozen=True)
class Answer:
    status: int
    headers: requests.structures.CaseInsensitiveDict[str]
    document: Any

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


@dataclass(frozen=True)
class Outcome:
    """How a followed job ended: its result, or the job itself when it was canceled."""

    answer: Answer
    canceled: bool

    @property
    def ok(self) -> bool:
        return self.answer.ok and not self.canceled


class ApiClient:
    def __init__(
        self,
        url: str,
        token: str,
        organization: str,
        *,
        http: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.url = url.rstrip("/") + "/"
        self.http = http or requests.Session()
        self.http.headers.update(
            {"X-Auth-Token": token, "X-Organization-Id": organization, "Accept": BULK}
        )
        self.sleep = sleep

    def absolute(self, location: str) -> str:
        return urljoin(self.url, location)

    def request(self, method: str, location: str, **kwargs: Any) -> Answer:
        kwargs.setdefault("timeout", TIMEOUT)
        try:
            response = self.http.request(
                method, self.absolute(location), allow_redirects=False, **kwargs
            )
        except requests.RequestException as exc:
            raise ClientError(f"cannot reach {self.url}: {exc}") from exc
        document = None
        if response.content:
            try:
                document = orjson.loads(response.content)
            except orjson.JSONDecodeError:
                raise ClientError(
                    f"{method} {location} answered {response.status_code} with a body "
                    "that is not JSON; is --url a timebatch server?"
                ) from None
        return Answer(response.status_code, response.headers, document)

    def submit(
        self, operation: Operation, path: Path, idempotency_key: str | None = None
    ) -> Answer:
        """Send the file as it is on disk: streamed, never read into memory."""
        method, location = ROUTES[operation]
        headers = {"Content-Type": BULK}
        if idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_key
        with path.open("rb") as body:
            return self.request(method, location, data=body, headers=headers)

    def follow(self, job_location: str, progress: Progress) -> Outcome:
        """Follow the job until it finishes and fetch its result, reporting its progress: from
        its event stream while there is one, then by polling, which a finished job answers
        at once with its result."""
        self.stream(job_location, progress)
        while True:
            answer = self.request("GET", job_location)
            if answer.status == 303:
                return Outcome(self.request("GET", answer.headers["Location"]), canceled=False)
            if answer.status != 200:
                return Outcome(answer, canceled=False)
            attributes = answer.document["data"]["attributes"]
            progress(attributes["processed"], attributes["total"])
            if attributes["status"] == JobStatus.CANCELED:
                return Outcome(answer, canceled=True)
            self.sleep(poll_interval(answer.headers.get("Retry-After")))

    def stream(self, job_location: str, progress: Progress) -> bool:
        """Report the job's progress from its event stream until it finishes; False when the
        stream is refused (503 when the server is full, 404 or 406 from an older one) or
        breaks, and the job must be polled."""
        last_event_id: str | None = None
        while True:
            opened = time.monotonic()
            headers = {"Accept": EVENT_STREAM}
            if last_event_id is not None:
                headers["Last-Event-ID"] = last_event_id
            try:
                with self.http.get(
                    self.absolute(f"{job_location}/events"),
                    headers=headers,
                    stream=True,
                    allow_redirects=False,
                    timeout=(TIMEOUT, STREAM_READ_TIMEOUT),
                ) as response:
                    if response.status_code == 204:
                        return True  # the end was already seen
                    media = response.headers.get("Content-Type", "")
                    if response.status_code != 200 or not media.startswith(EVENT_STREAM):
                        return False
                    # chunk_size=None: each piece as it arrives, not once 128 bytes are in.
                    source = response.iter_content(chunk_size=None)
                    for event in sseclient.SSEClient(source).events():
                        last_event_id = event.id or last_event_id
                        data = orjson.loads(event.data)
                        if event.event == "progress":
                            progress(data["processed"], data["total"])
                        elif event.event == "finished":
                            return True
            except (requests.RequestException, orjson.JSONDecodeError, KeyError, TypeError):
                return False
            if time.monotonic() - opened < MIN_STREAM_LIFE:
                return False

    def jobs(self, params: dict[str, str]) -> Answer:
        return self.request("GET", "/api/v2/jobs", params=params)

    def job(self, job_id: str) -> Answer:
        return self.request("GET", f"/api/v2/jobs/{job_id}")


def poll_interval(retry_after: str | None) -> float:
    if retry_after is not None and retry_after.strip().isdigit():
        return min(float(retry_after), MAX_POLL_INTERVAL)
    return MAX_POLL_INTERVAL


def error_lines(document: Any) -> list[str]:
    """`POINTER -> detail` for each error (or its parameter); `title: detail` for an error
    about the request as a whole."""
    lines = []
    errors = document.get("errors") if isinstance(document, dict) else None
    for error in errors or []:
        source = error.get("source") or {}
        where = source.get("pointer") or source.get("parameter")
        title = error.get("title", "error")
        detail = error.get("detail", title)
        lines.append(f"{where} -> {detail}" if where else f"{title}: {detail}")
    return lines


def _fail(answer: Answer, what: str) -> NoReturn:
    click.echo(f"{what}: HTTP {answer.status}", err=True)
    lines = error_lines(answer.document)
    for line in lines:
        click.echo(line)
    if not lines and answer.document is not None:
        click.echo(orjson.dumps(answer.document).decode())
    raise SystemExit(1)


class _ProgressBar:
    """The job's progress on stderr; a job that does not succeed says so on the bar's last
    frame, where the eye is, not only in the message after it."""

    def __init__(self, bar: tqdm[Any], operation: str) -> None:
        self.bar = bar
        self.operation = operation

    def __call__(self, processed: int, total: int) -> None:
        self.bar.total = total
        self.bar.update(processed - self.bar.n)

    def end(self, how: str) -> None:
        self.bar.set_description(f"{self.operation} {how}")


@contextmanager
def _progress_bar(operation: str, total: int) -> Iterator[_ProgressBar]:
    with tqdm(total=total, desc=operation, unit=" entries", file=sys.stderr) as bar:
        yield _ProgressBar(bar, operation)


def api_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """--url, --token and --org, shared by the commands that talk to a server."""
    command = click.option(
        "--org",
        "organization",
        envvar="TIMEBATCH_ORG",
        required=True,
        show_envvar=True,
        help="organization id, sent as X-Organization-Id",
    )(command)
    command = click.option(
        "--token",
        envvar="TIMEBATCH_TOKEN",
        required=True,
        show_envvar=True,
        help="personal API token, sent as X-Auth-Token",
    )(command)
    return click.option(
        "--url",
        envvar="TIMEBATCH_URL",
        default=DEFAULT_URL,
        show_default=True,
        show_envvar=True,
        help="the timebatch server",
    )(command)


@click.command("submit")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--op", "operation", type=click.Choice([str(op) for op in Operation]), required=True)
@click.option("--wait", is_flag=True, help="follow the job with a progress bar to its result")
@click.option("--idempotency-key", help="a retried submission with this key returns the same job")
@api_options
def submit(
    file: Path,
    operation: str,
    wait: bool,
    idempotency_key: str | None,
    url: str,
    token: str,
    organization: str,
) -> None:
    """Send FILE, a bulk document (JSON:API, ext=bulk), as one job.

    Without --wait, prints the job and exits. With it, shows the job's progress and then
    what was written, or every error as POINTER -> detail. Exit status 0 on success, 1 when
    the document is refused, the job fails or it is canceled.
    """
    client = ApiClient(url, token, organization)
    started = time.monotonic()
    accepted = client.submit(Operation(operation), file, idempotency_key)
    if accepted.status != 202:
        _fail(accepted, f"{operation} refused")
    job_id = accepted.document["data"]["id"]
    attributes = accepted.document["data"]["attributes"]
    location = accepted.headers["Location"]
    if not wait:
        click.echo(f"job {job_id} {attributes['status']}: {client.absolute(location)}")
        return
    total = attributes["total"]
    with _progress_bar(operation, total) as progress:
        outcome = client.follow(location, progress)
        if outcome.ok:
            # A succeeded job has processed everything, whatever its last poll showed.
            progress(total, total)
        else:
            progress.end("canceled" if outcome.canceled else "failed")
    elapsed = time.monotonic() - started
    if outcome.canceled:
        click.echo(f"job {job_id} was canceled; nothing was applied", err=True)
        raise SystemExit(1)
    if not outcome.ok:
        _fail(outcome.answer, f"job {job_id} failed")
    document = outcome.answer.document
    count = len(document["data"]) if document is not None else total
    entries = "entry" if count == 1 else "entries"
    done = PAST[Operation(operation)]
    click.echo(f"{done} {count} time {entries} in {elapsed:.1f} s (job {job_id})")


def _job_line(job: dict[str, Any]) -> str:
    attributes = job["attributes"]
    done = f"{attributes['processed']}/{attributes['total']}"
    return (
        f"{job['id']}  {attributes['status']:<9}  {attributes['operation']:<9}  "
        f"{done:>11}  {attributes['created_at']}"
    )


@click.command("list")
@click.option("--status", help="only these statuses, comma-separated (e.g. queued,running)")
@click.option("--operation", help="only these operations, comma-separated")
@click.option("--page", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--page-size", type=click.IntRange(1, 200), default=30, show_default=True)
@api_options
def jobs_list(
    status: str | None,
    operation: str | None,
    page: int,
    page_size: int,
    url: str,
    token: str,
    organization: str,
) -> None:
    """The organization's jobs, newest first."""
    params = {"page[number]": str(page), "page[size]": str(page_size)}
    if status:
        params["filter[status]"] = status
    if operation:
        params["filter[operation]"] = operation
    answer = ApiClient(url, token, organization).jobs(params)
    if answer.status != 200:
        _fail(answer, "cannot list jobs")
    click.echo(f"{'ID':<36}  {'STATUS':<9}  {'OPERATION':<9}  {'PROCESSED':>11}  CREATED")
    for job in answer.document["data"]:
        click.echo(_job_line(job))
    meta = answer.document["meta"]
    click.echo(
        f"page {meta['current_page']} of {max(meta['total_pages'], 1)}, "
        f"{meta['total_count']} job(s)"
    )


@click.command("show")
@click.argument("job_id")
@api_options
def jobs_show(job_id: str, url: str, token: str, organization: str) -> None:
    """One job: its progress while it runs, its result once it has finished."""
    client = ApiClient(url, token, organization)
    answer = client.job(job_id)
    if answer.status == 200:
        attributes = answer.document["data"]["attributes"]
        click.echo(f"job {job_id}")
        for name in ("status", "operation", "processed", "total", "attempts"):
            click.echo(f"  {name}: {attributes[name]}")
        for name in ("created_at", "started_at", "finished_at"):
            click.echo(f"  {name}: {attributes[name] or '-'}")
        return
    if answer.status != 303:
        _fail(answer, f"cannot show job {job_id}")
    result = client.request("GET", answer.headers["Location"])
    click.echo(f"job {job_id}")
    click.echo(f"  status: {'succeeded' if result.ok else 'failed'}")
    click.echo(f"  result: HTTP {result.status}")
    if result.ok:
        document = result.document
        if document is not None:
            click.echo(f"  entries: {len(document['data'])}")
        return
    for line in error_lines(result.document):
        click.echo(f"  {line}")
