"""`timebatch submit` and `timebatch jobs` against a live stack: an HTTP server, Redis and a
real Celery worker, run as the console script a user would run."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest
import requests
from flask import Flask
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session
from werkzeug.serving import WSGIRequestHandler, make_server

from api import create_app
from shared.settings import Settings
from shared.store.engine import make_session_factory
from shared.store.models import Job, TimeEntry
from tests.e2e.conftest import WorkerProcess

pytestmark = pytest.mark.e2e

TIMEBATCH = Path(sys.executable).parent / "timebatch"


class QuietHandler(WSGIRequestHandler):
    def log_request(self, *args: Any, **kwargs: Any) -> None:
        pass


@contextmanager
def serving(app: Flask) -> Iterator[str]:
    httpd = make_server("127.0.0.1", 0, app, threaded=True, request_handler=QuietHandler)
    thread = threading.Thread(target=httpd.serve_forever, name="e2e-http", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_port}"
    finally:
        httpd.shutdown()
        thread.join(timeout=10)
        httpd.server_close()


@pytest.fixture
def server(e2e_app: Flask, worker: WorkerProcess) -> Iterator[str]:
    with serving(e2e_app) as url:
        yield url


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

    listed = timebatch("jobs", "list", "--status", "succeeded", "--url", server, env=credentials)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0].split() == ["ID", "STATUS", "OPERATION", "PROCESSED", "CREATED"]
    assert lines[1].split()[:4] == [job_id, "succeeded", "create", "2000/2000"]
    assert lines[-1] == "page 1 of 1, 1 job(s)"


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
    assert re.search(r"job [0-9a-f-]{36} failed: HTTP 404", result.stderr)
    assert "100%" not in progress_frames(result.stderr)[-1]
    assert count(e2e_db) == before


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
    assert refused.stdout == "Unauthorized -> the token in X-Auth-Token is not valid\n"

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


def test_a_job_canceled_while_waiting_exits_1(
    e2e_settings: Settings, e2e_db: Engine, credentials: dict[str, str], tmp_path: Path
) -> None:
    unpublished: list[str] = []
    # No message reaches a worker, so the job stays queued until it is canceled.
    app = create_app(
        e2e_settings, sessions=make_session_factory(e2e_db), publish=unpublished.append
    )
    document = create_file(tmp_path / "batch.json", 10)
    with serving(app) as url:
        command = [
            str(TIMEBATCH),
            "submit",
            str(document),
            "--op",
            "create",
            "--wait",
            "--url",
            url,
        ]
        clean = {k: v for k, v in os.environ.items() if not k.startswith("TIMEBATCH_")}
        with subprocess.Popen(
            command,
            env=clean | credentials,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        ) as process:
            deadline = time.monotonic() + 30
            while not unpublished and time.monotonic() < deadline:
                time.sleep(0.05)
            assert unpublished, "the client did not submit"
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
