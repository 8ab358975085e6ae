"""The Procfile as a platform runs it: real honcho, a `.env` holding only what the Procfile
says a platform must set, and honcho's own PORT. The web answers on that port and a job
completes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import requests
from sqlalchemy.orm import Session

from tests.conftest import BULK, _drop, _recreate_database, _settings, demo_engine, token_for
from tests.e2e.test_pipeline import create_doc
from tests.jobclient import eventually
from tests.servers import PrivateRedis, free_port

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
# What the test process has that a platform's environment would not.
OURS = ("DATABASE_URL", "BROKER_URL", "FLOWER_", "TIMEBATCH_", "WEB_CONCURRENCY",
        "WORKER_CONCURRENCY", "PORT", "PROMETHEUS_MULTIPROC_DIR")  # fmt: skip


@pytest.fixture
def platform(
    servers: tuple[str, str], run_id: str, tmp_path: Path
) -> Iterator[tuple[Path, dict[str, str]]]:
    """An app directory with its .env, and the environment honcho starts from."""
    database_url = _recreate_database(servers[0], f"timebatch_honcho_{run_id}")
    with PrivateRedis(tmp_path / "redis") as broker:
        (tmp_path / ".env").write_text(
            f"DATABASE_URL={database_url}\nBROKER_URL={broker.url}\nFLOWER_BASIC_AUTH=ops:s3cret\n"
        )
        env = {key: value for key, value in os.environ.items() if not key.startswith(OURS)}
        # As in an activated virtualenv, where honcho and the Procfile's programs are found.
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        yield tmp_path, env
        _drop(_settings(database_url, broker.url, tmp_path, "unused"))


def honcho(app: Path, *args: str) -> list[str]:
    return ["honcho", "--env", str(app / ".env"), "--procfile", str(ROOT / "Procfile"),
            "--app-root", str(app), *args]  # fmt: skip


def test_honcho_runs_the_procfile_with_only_the_platforms_variables(
    platform: tuple[Path, dict[str, str]],
) -> None:
    app, env = platform
    migrated = subprocess.run(
        honcho(app, "run", "timebatch", "db", "upgrade"),
        env=env, cwd=app, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert migrated.returncode == 0, migrated.stdout + migrated.stderr
    database_url = dict(line.split("=", 1) for line in (app / ".env").read_text().splitlines())[
        "DATABASE_URL"
    ]
    engine = demo_engine(_settings(database_url, "redis://unused", app, "unused"))
    with Session(engine) as session:
        headers = token_for(session, 7781)
        session.commit()
    engine.dispose()

    port = free_port()
    log = (app / "honcho.log").open("wb")
    process = subprocess.Popen(
        honcho(app, "start", "--port", str(port), "web", "worker", "beat"),
        env=env, cwd=app, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        try:
            return requests.get(f"{base}/healthz", timeout=2).status_code == 200
        except requests.ConnectionError:
            return False

    try:
        eventually(healthy, timeout=60, what="the web healthy on honcho's PORT")
        submitted = requests.post(
            f"{base}/api/v2/time_entries",
            json=create_doc(3),
            headers=headers | {"Content-Type": BULK, "Accept": BULK},
            timeout=10,
        )
        assert submitted.status_code == 202, submitted.text
        location = submitted.headers["Location"]
        polling = headers | {"Accept": BULK, "Prefer": "wait=20"}
        outcome = requests.get(f"{base}{location}", headers=polling, timeout=30)
        # The job's end leads to its result: the created entries, as the spec answers.
        assert outcome.status_code == 201, outcome.text
        assert len(outcome.json()["data"]) == 3
        # Beat wrote its schedule under the default data directory, in the app's directory.
        assert any((app / ".timebatch").glob("celerybeat-schedule*"))
    finally:
        process.send_signal(signal.SIGINT)  # Ctrl-C, as a user stops honcho
        try:
            stopped = process.wait(timeout=30)
        finally:
            log.close()
            left = group_members(process.pid)
            for proc in left:
                proc.kill()
    assert stopped in (0, -signal.SIGINT, 128 + signal.SIGINT), stopped
    assert not left, (app / "honcho.log").read_text()[-3000:]


def group_members(pgid: int) -> list[psutil.Process]:
    """Live processes of a process group: what honcho left behind."""
    found = []
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) == pgid and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (OSError, psutil.Error):
            continue
    return found
