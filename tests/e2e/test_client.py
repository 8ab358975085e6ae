"""`timebatch submit` and `timebatch jobs` against a live stack: an HTTP server, Redis and a
real Celery worker, run as the console script a user would run (or, where only the output
matters, through click's runner in this process, against the same server)."""

from __future__ import annotations

import dataclasses
import functools
import http.server
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest
import requests
from click.testing import CliRunner, Result
from flask import Flask
from sqlalchemy import Engine, delete, func, select
from sqlalchemy.orm import Session
from werkzeug.serving import WSGIRequestHandler, make_server

from api import create_app
from shared.cli.commands import main
from shared.domain.tokens import hash_token
from shared.settings import Settings
from shared.store.engine import make_session_factory
from shared.store.models import ApiToken, Job, TimeEntry
from tests.conftest import PublishLog
from tests.e2e.conftest import WorkerProcess

pytestmark = pytest.mark.e2e

TIMEBATCH = Path(sys.executable).parent / "timebatch"


class QuietHandler(WSGIRequestHandler):
    def log_request(self, *args: Any, **kwargs: Any) -> None:
        pass


def recording(seen: list[tuple[str, int]]) -> type[WSGIRequestHandler]:
    """A handler that notes each request's path and status, as the server's log would."""

    class Recording(QuietHandler):
        def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
            seen.append((self.path, int(code)))

    return Recording


@contextmanager
def serving(app: Flask, handler: type[WSGIRequestHandler] = QuietHandler) -> Iterator[str]:
    httpd = make_server("127.0.0.1", 0, app, threaded=True, request_handler=handler)
    thread = threading.Thread(target=httpd.serve_forever, name="e2e-http", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_port}"
    finally:
        httpd.shutdown()
        thread.join(timeout=10)
        httpd.server_close()


class GracefulWorker(WorkerProcess):
    """A worker stopped the way celery's documentation stops one: SIGTERM to its main process,
    which lets the pool processes finish and leave through os._exit (where coverage saves what
    they ran). A SIGTERM to the whole group makes them leave a second after the main process,
    and it takes them with it (PR_SET_PDEATHSIG): the task's own lines would go uncounted."""

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            super().stop()  # the whole group, then SIGKILL
        self.process = None


@pytest.fixture(scope="module")
def client_worker(e2e_settings: Settings, run_id: str) -> Iterator[GracefulWorker]:
    """The client tests' own worker, on a queue of their own."""
    settings = dataclasses.replace(e2e_settings, queue=f"{e2e_settings.queue}-client")
    process = GracefulWorker(settings, settings.data_dir / "client-worker.log", f"client-{run_id}")
    process.start()
    yield process
    process.stop()


@pytest.fixture
def server(client_worker: GracefulWorker, e2e_db: Engine) -> Iterator[str]:
    app = create_app(client_worker.settings, sessions=make_session_factory(e2e_db))
    with serving(app) as url:
        yield url


@pytest.fixture
def logged_server(
    client_worker: GracefulWorker, e2e_db: Engine, request: pytest.FixtureRequest
) -> Iterator[tuple[str, list[tuple[str, int]]]]:
    """A server (streams allowed as configured, or as many as the test's parameter says)
    whose requests are noted: yields its URL and the (path, status) of each request."""
    settings = client_worker.settings
    capacity = getattr(request, "param", None)
    if capacity is not None:
        settings = dataclasses.replace(settings, stream_capacity=capacity)
    seen: list[tuple[str, int]] = []
    app = create_app(settings, sessions=make_session_factory(e2e_db))
    with serving(app, recording(seen)) as url:
        yield url, seen


@pytest.fixture
def idle_server(e2e_settings: Settings, e2e_db: Engine) -> Iterator[tuple[str, list[str]]]:
    """A server whose jobs reach no worker: they stay queued. Yields its URL and the ids of
    the jobs it would have published."""
    unpublished = PublishLog()
    app = create_app(e2e_settings, sessions=make_session_factory(e2e_db), publish=unpublished)
    with serving(app) as url:
        yield url, unpublished


@pytest.fixture
def credentials(e2e_auth: Any) -> dict[str, str]:
    """The client reads its token and organization from the environment."""
    headers = e2e_auth(7781)
    return {"TIMEBATCH_TOKEN": headers["X-Auth-Token"], "TIMEBATCH_ORG": "2110"}


def timebatch(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TIMEBATCH_")}
    return subprocess.run(
        [str(TIMEBATCH), *args],
        env=clean | env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def cli(*args: str, env: dict[str, str]) -> Result:
    """The same commands in this process: faster, where how they are started does not matter."""
    return CliRunner().invoke(main, list(args), env=env)


def wait_until(check: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout}s"
        time.sleep(0.05)


def create_file(path: Path, n: int, bad: dict[int, dict[str, Any]] | None = None) -> Path:
    entries = []
    for i in range(n):
        entry: dict[str, Any] = {
            "type": "time_entries",
            "attributes": {"date": "2026-02-03", "time": 30 + i % 90, "note": f"cli {i}"},
            "relationships": {
                "person": {"data": {"type": "people", "id": "7781"}},
                "service": {"data": {"type": "services", "id": "1213"}},
            },
        }
        for member, values in (bad or {}).get(i, {}).items():
            entry[member] = entry[member] | values
        entries.append(entry)
    path.write_bytes(orjson.dumps({"data": entries}))
    return path


def progress_frames(stderr: str) -> list[str]:
    """What the progress bar drew, frame by frame (it redraws its line with carriage returns)."""
    return [frame.strip() for frame in re.split(r"[\r\n]+", stderr) if "|" in frame]


def count(engine: Engine, *conditions: Any) -> int:
    with Session(engine) as session:
        return session.scalar(select(func.count()).select_from(TimeEntry).where(*conditions)) or 0


def test_submit_and_wait_for_2000_entries(
    server: str, credentials: dict[str, str], tmp_path: Path, e2e_db: Engine
) -> None:
    document = create_file(tmp_path / "batch.json", 2000)
    result = timebatch(
        "submit", str(document), "--op", "create", "--wait", "--url", server, env=credentials
    )
    assert result.returncode == 0, result.stdout + result.stderr
    frames = progress_frames(result.stderr)
    assert frames, result.stderr
    assert frames[0].startswith("create:") and "/2000" in frames[0]
    assert "100%" in frames[-1] and "2000/2000" in frames[-1], frames[-1]
    summary = re.fullmatch(
        r"created 2000 time entries in (\d+\.\d) s \(job ([0-9a-f-]{36})\)\n", result.stdout
    )
    assert summary, result.stdout
    assert count(e2e_db, TimeEntry.note.like("cli %")) == 2000

    job_id = summary[2]
    shown = timebatch("jobs", "show", job_id, "--url", server, env=credentials)
    assert shown.returncode == 0, shown.stderr
    assert "status: succeeded" in shown.stdout
    assert "result: HTTP 201" in shown.stdout
    assert "entries: 2000" in shown.stdout

    # The server's URL can come from the environment, as the token and organization do.
    from_env = credentials | {"TIMEBATCH_URL": server}
    listed = timebatch("jobs", "list", "--status", "succeeded", env=from_env)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0].split() == ["ID", "STATUS", "OPERATION", "PROCESSED", "CREATED"]
    assert lines[1].split()[:4] == [job_id, "succeeded", "create", "2000/2000"]
    assert lines[-1] == "page 1 of 1, 1 job(s)"


SUMMARY = re.compile(r"created 300 time entries in \d+\.\d s \(job ([0-9a-f-]{36})\)\n")


def submit_and_wait(
    logged_server: tuple[str, list[tuple[str, int]]], credentials: dict[str, str], tmp_path: Path
) -> tuple[str, list[tuple[str, int]], Any]:
    """`timebatch submit --wait` of 300 entries, succeeded: the job's path, the requests the
    server saw, and the command's result."""
    url, seen = logged_server
    document = create_file(tmp_path / "batch.json", 300)
    result = cli("submit", str(document), "--op", "create", "--wait", "--url", url, env=credentials)
    assert result.exit_code == 0, result.output
    summary = SUMMARY.fullmatch(result.stdout)
    assert summary, result.stdout
    return f"/api/v2/jobs/{summary[1]}", seen, result


def test_submit_and_wait_follows_the_job_s_event_stream(
    logged_server: tuple[str, list[tuple[str, int]]],
    credentials: dict[str, str],
    tmp_path: Path,
) -> None:
    job, seen, result = submit_and_wait(logged_server, credentials, tmp_path)
    assert (f"{job}/events", 200) in seen
    # Once the stream said finished, one look at the job is its 303, then the result.
    assert [entry for entry in seen if entry[0].startswith(job)] == [
        (f"{job}/events", 200),
        (job, 303),
        (f"{job}/result", 201),
    ]
    assert "300/300" in progress_frames(result.stderr)[-1]


@pytest.mark.parametrize("logged_server", [0], indirect=True)
def test_submit_and_wait_polls_when_the_stream_is_refused(
    logged_server: tuple[str, list[tuple[str, int]]],
    credentials: dict[str, str],
    tmp_path: Path,
) -> None:
    job, seen, result = submit_and_wait(logged_server, credentials, tmp_path)
    asked = [entry for entry in seen if entry[0].startswith(job)]
    # The stream is refused (no capacity): the client polls the job to its 303 instead.
    assert asked[0] == (f"{job}/events", 503)
    assert (job, 303) in asked and asked[-1] == (f"{job}/result", 201)
    assert "300/300" in progress_frames(result.stderr)[-1]


def test_a_file_refused_at_submission_prints_its_pointers(
    server: str, credentials: dict[str, str], tmp_path: Path, e2e_db: Engine
) -> None:
    document = create_file(
        tmp_path / "bad.json",
        5,
        {3: {"attributes": {"date": "2026-02-30"}}, 4: {"attributes": {"time": -5}}},
    )
    result = timebatch(
        "submit", str(document), "--op", "create", "--wait", "--url", server, env=credentials
    )
    assert result.returncode == 1
    assert result.stdout.splitlines() == [
        "/data/3/attributes/date -> date must be a calendar date YYYY-MM-DD between 1900 and 2999",
        "/data/4/attributes/time -> time must be a whole number of minutes from 0 to 1440",
    ]
    assert "create refused: HTTP 422" in result.stderr
    with Session(e2e_db) as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 0


def test_a_failed_job_prints_its_pointers_and_writes_nothing(
    server: str, credentials: dict[str, str], tmp_path: Path, e2e_db: Engine
) -> None:
    before = count(e2e_db)
    foreign = {"data": {"type": "services", "id": "2213"}}  # Elsewhere Ltd's service
    document = create_file(
        tmp_path / "foreign.json", 300, {3: {"relationships": {"service": foreign}}}
    )
    result = timebatch(
        "submit", str(document), "--op", "create", "--wait", "--url", server, env=credentials
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stdout.splitlines() == [
        "/data/3/relationships/service -> service 2213 does not exist"
    ]
    failed = re.search(r"job ([0-9a-f-]{36}) failed: HTTP 404", result.stderr)
    assert failed, result.stderr
    last = progress_frames(result.stderr)[-1]
    assert last.startswith("create failed:") and "100%" not in last, last
    assert count(e2e_db) == before

    shown = cli("jobs", "show", failed[1], "--url", server, env=credentials)
    assert shown.exit_code == 0, shown.output
    assert shown.stdout.splitlines() == [
        f"job {failed[1]}",
        "  status: failed",
        "  result: HTTP 404",
        "  /data/3/relationships/service -> service 2213 does not exist",
    ]


def test_submit_without_wait_delete_and_idempotency(
    server: str, credentials: dict[str, str], tmp_path: Path, e2e_db: Engine
) -> None:
    document = tmp_path / "delete.json"
    document.write_bytes(
        orjson.dumps({"data": [{"type": "time_entries", "id": i} for i in (231, "232")]})
    )
    args = ["submit", str(document), "--op", "delete", "--url", server]
    first = timebatch(*args, "--idempotency-key", "cli-delete-1", env=credentials)
    assert first.returncode == 0, first.stderr
    accepted = re.fullmatch(
        r"job ([0-9a-f-]{36}) (queued|running|succeeded): (\S+)\n", first.stdout
    )
    assert accepted, first.stdout
    assert accepted[3] == f"{server}/api/v2/jobs/{accepted[1]}"
    assert first.stderr == ""

    again = timebatch(*args, "--idempotency-key", "cli-delete-1", "--wait", env=credentials)
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith("deleted 2 time entries in ")
    assert again.stdout.rstrip().endswith(f"(job {accepted[1]})")
    assert count(e2e_db, TimeEntry.id.in_([231, 232])) == 0


def test_client_errors_exit_1(server: str, credentials: dict[str, str], tmp_path: Path) -> None:
    document = create_file(tmp_path / "one.json", 1)
    wrong_token = credentials | {"TIMEBATCH_TOKEN": "tb_not-a-token"}
    refused = timebatch("submit", str(document), "--op", "create", "--url", server, env=wrong_token)
    assert refused.returncode == 1
    assert refused.stdout == "Unauthorized: the token in X-Auth-Token is not valid\n"

    missing = timebatch(
        "jobs", "show", "8a0d1ab0-5b1c-4b7e-9b59-2f8f35f0a2f1", "--url", server, env=credentials
    )
    assert missing.returncode == 1
    assert "job 8a0d1ab0-5b1c-4b7e-9b59-2f8f35f0a2f1 does not exist" in missing.stdout

    bad_filter = timebatch("jobs", "list", "--status", "done", "--url", server, env=credentials)
    assert bad_filter.returncode == 1
    assert bad_filter.stdout.startswith("filter[status] -> filter[status] takes ")

    no_token = timebatch("jobs", "list", "--url", server, env={"TIMEBATCH_ORG": "2110"})
    assert no_token.returncode == 2
    assert "--token" in no_token.stderr

    nowhere = timebatch(
        "submit", str(document), "--op", "create", "--url", "http://127.0.0.1:9", env=credentials
    )
    assert nowhere.returncode == 1
    assert "cannot reach http://127.0.0.1:9/" in nowhere.stderr


@contextmanager
def waiting_client(
    url: str, document: Path, unpublished: list[str], credentials: dict[str, str]
) -> Iterator[subprocess.Popen[str]]:
    """`timebatch submit --wait` running, its job stored and queued (never published)."""
    command = [str(TIMEBATCH), "submit", str(document), "--op", "create", "--wait", "--url", url]
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TIMEBATCH_")}
    with subprocess.Popen(
        command, env=clean | credentials, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as process:
        wait_until(lambda: unpublished, 30, "the client submitting")
        yield process


def test_a_job_canceled_while_waiting_exits_1(
    idle_server: tuple[str, list[str]],
    e2e_db: Engine,
    credentials: dict[str, str],
    tmp_path: Path,
) -> None:
    url, unpublished = idle_server
    document = create_file(tmp_path / "batch.json", 10)
    with waiting_client(url, document, unpublished, credentials) as process:
        headers = {"X-Auth-Token": credentials["TIMEBATCH_TOKEN"], "X-Organization-Id": "2110"}
        canceled = requests.delete(
            f"{url}/api/v2/jobs/{unpublished[0]}", headers=headers, timeout=10
        )
        assert canceled.status_code == 200
        stdout, stderr = process.communicate(timeout=30)
    assert process.returncode == 1
    assert f"job {unpublished[0]} was canceled; nothing was applied" in stderr
    assert stdout == ""
    assert count(e2e_db, TimeEntry.note.like("cli %")) == 0


def test_a_token_revoked_while_waiting_exits_1(
    idle_server: tuple[str, list[str]],
    e2e_db: Engine,
    credentials: dict[str, str],
    tmp_path: Path,
) -> None:
    """The job answers 401 from then on: the client says so and stops following it."""
    url, unpublished = idle_server
    document = create_file(tmp_path / "batch.json", 3)
    with waiting_client(url, document, unpublished, credentials) as process:
        with Session(e2e_db) as session:
            token_hash = hash_token(credentials["TIMEBATCH_TOKEN"])
            session.execute(delete(ApiToken).where(ApiToken.token_hash == token_hash))
            session.commit()
        stdout, stderr = process.communicate(timeout=30)
    assert process.returncode == 1
    assert stdout == "Unauthorized: the token in X-Auth-Token is not valid\n"
    assert f"job {unpublished[0]} failed: HTTP 401" in stderr
    with Session(e2e_db) as session:
        assert session.scalar(select(Job.status)) == "queued"


def test_jobs_show_and_list_while_jobs_wait(
    idle_server: tuple[str, list[str]], credentials: dict[str, str], tmp_path: Path
) -> None:
    url, unpublished = idle_server
    created = cli(
        "submit", str(create_file(tmp_path / "c.json", 3)), "--op", "create", "--url", url,
        env=credentials,
    )  # fmt: skip
    assert created.exit_code == 0, created.output
    deletion = tmp_path / "d.json"
    deletion.write_bytes(orjson.dumps({"data": [{"type": "time_entries", "id": "231"}]}))
    deleted = cli("submit", str(deletion), "--op", "delete", "--url", url, env=credentials)
    assert deleted.exit_code == 0, deleted.output
    create_job, delete_job = unpublished

    shown = cli("jobs", "show", create_job, "--url", url, env=credentials)
    assert shown.exit_code == 0, shown.output
    lines = shown.stdout.splitlines()
    assert lines[:6] == [
        f"job {create_job}",
        "  status: queued",
        "  operation: create",
        "  processed: 0",
        "  total: 3",
        "  attempts: 0",
    ]
    assert re.fullmatch(r"  created_at: 20\d\d-\d\d-\d\dT\S+", lines[6]), lines[6]
    assert lines[7:] == ["  started_at: -", "  finished_at: -"]

    only_deletes = cli("jobs", "list", "--operation", "delete", "--url", url, env=credentials)
    assert only_deletes.exit_code == 0, only_deletes.output
    _, line, footer = only_deletes.stdout.splitlines()
    assert line.split()[:4] == [delete_job, "queued", "delete", "0/1"]
    assert footer == "page 1 of 1, 1 job(s)"

    # Newest first: the second page of one is the older job.
    second = cli("jobs", "list", "--page-size", "1", "--page", "2", "--url", url, env=credentials)
    assert second.exit_code == 0, second.output
    _, line, footer = second.stdout.splitlines()
    assert line.split()[:4] == [create_job, "queued", "create", "0/3"]
    assert footer == "page 2 of 2, 2 job(s)"


def test_a_url_that_is_not_timebatch_is_named(credentials: dict[str, str], tmp_path: Path) -> None:
    """A plain web server answers with an HTML page: the client says what it got."""
    handler = functools.partial(QuietFiles, directory=str(tmp_path))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{httpd.server_port}"
        result = cli("jobs", "list", "--url", url, env=credentials)
    finally:
        httpd.shutdown()
        thread.join(timeout=10)
        httpd.server_close()
    assert result.exit_code == 1
    assert (
        "Error: GET /api/v2/jobs answered 404 with a body that is not JSON;"
        " is --url a timebatch server?"
    ) in result.stderr.splitlines()
    assert result.stdout == ""


class QuietFiles(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass
