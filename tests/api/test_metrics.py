"""GET /metrics: Prometheus text; request metrics, jobs by status and queue depth move with
what happens. The worker-side metrics are shown moving in tests/e2e/test_operations.py."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from flask.testing import FlaskClient
from sqlalchemy.orm import Session, sessionmaker

from api import create_app
from shared.domain.tokens import Principal
from shared.jobs.queue import create_celery, publish_job
from shared.ops.metrics import TOP_ORGANIZATIONS
from shared.settings import Settings
from tests.checked_client import CheckedClient
from tests.conftest import BULK, PublishLog, purge
from tests.factories import Factories, create_resource, queue_job, reference
from tests.scraping import scrape, value

MEMBER = Principal(person_id=7781, organization_id=2110, read_only=False)


def test_metrics_need_no_token_and_report_what_answered(client: FlaskClient) -> None:
    samples = scrape(client)
    assert value(samples, "timebatch_up", component="database") == 1
    assert value(samples, "timebatch_up", component="broker") == 1
    # Every operation and status is there, zeros included, for dashboards.
    assert ("timebatch_jobs", frozenset({("operation", "unapprove"), ("status", "canceled")})) in (
        samples
    )


def test_requests_are_counted_by_route_and_status(client: FlaskClient, auth: Any) -> None:
    headers = auth()
    before = scrape(client)
    for _ in range(3):
        assert client.get(f"/api/v2/jobs/{uuid.uuid4()}", headers=headers).status_code == 404
    assert client.get(f"/api/v2/jobs/{uuid.uuid4()}").status_code == 401
    assert client.get("/no/such/route").status_code == 404
    after = scrape(client)

    route = "/api/v2/jobs/<job_id>"
    name = "timebatch_http_requests_total"
    assert (
        value(after, name, method="GET", route=route, status="404")
        - value(before, name, method="GET", route=route, status="404")
        == 3
    )
    assert (
        value(after, name, method="GET", route=route, status="401")
        - value(before, name, method="GET", route=route, status="401")
        == 1
    )
    # Unknown paths share one label value: a scanner cannot blow up the series count.
    assert (
        value(after, name, method="GET", route="unmatched", status="404")
        - value(before, name, method="GET", route="unmatched", status="404")
        == 1
    )
    histogram = "timebatch_http_request_duration_seconds_count"
    assert (
        value(after, histogram, method="GET", route=route)
        - value(before, histogram, method="GET", route=route)
        == 4
    )
    assert value(after, "timebatch_http_requests_in_progress", method="GET") == value(
        before, "timebatch_http_requests_in_progress", method="GET"
    )


def test_jobs_are_gauged_by_operation_and_status(client: FlaskClient, auth: Any) -> None:
    before = scrape(client)
    document = {"data": [create_resource()]}
    for _ in range(2):
        response = client.post(
            "/api/v2/time_entries",
            data=orjson.dumps(document),
            headers=auth() | {"Content-Type": BULK},
        )
        assert response.status_code == 202
    job_id = response.json["data"]["id"]  # type: ignore[index]
    assert client.delete(f"/api/v2/jobs/{job_id}", headers=auth()).status_code == 200
    after = scrape(client)

    def moved(status: str) -> float:
        return value(after, "timebatch_jobs", operation="create", status=status) - value(
            before, "timebatch_jobs", operation="create", status=status
        )

    assert (moved("queued"), moved("canceled")) == (1, 1)


def test_unfinished_work_is_gauged_per_organization_with_the_rest_as_other(
    settings: Settings, sessions: sessionmaker[Session], session: Session, auth: Any
) -> None:
    for _ in range(3):
        queue_job(session, MEMBER, "create", [create_resource(), create_resource()])
    for _ in range(TOP_ORGANIZATIONS + 2):
        made = Factories(session).organization()
        person = Factories(session).person(made.id)
        queue_job(session, Principal(person.id, made.id, False), "delete", [reference(1)])
    limited = dataclasses.replace(settings, org_max_unfinished=3)
    app = create_app(limited, sessions=sessions, publish=PublishLog())
    app.test_client_class = CheckedClient
    client = app.test_client()
    before = scrape(client)
    refused = client.post(
        "/api/v2/time_entries",
        data=orjson.dumps({"data": [create_resource()]}),
        headers=auth() | {"Content-Type": BULK},
    )
    assert refused.status_code == 429
    after = scrape(client)
    jobs = "timebatch_organization_unfinished_jobs"
    entries = "timebatch_organization_unfinished_entries"
    assert value(after, jobs, organization="2110") >= 3
    assert value(after, entries, organization="2110") >= 6
    series = {labels for name, labels in after if name == jobs}
    # The most loaded organizations by name, every other one summed: bounded whatever comes.
    assert len(series) == TOP_ORGANIZATIONS + 1
    assert value(after, jobs, organization="other") >= 2
    name = "timebatch_submissions_refused_total"
    assert (
        value(after, name, limit="org_max_unfinished")
        - value(before, name, limit="org_max_unfinished")
        == 1
    )


@pytest.fixture
def own_queue(settings: Settings) -> Iterator[Settings]:
    queued = dataclasses.replace(settings, queue=f"{settings.queue}-depth-{uuid.uuid4().hex[:6]}")
    yield queued
    purge(queued, queued.queue)


def test_queue_depth_is_read_from_the_broker(
    own_queue: Settings, sessions: sessionmaker[Session]
) -> None:
    app = create_app(own_queue, sessions=sessions)
    app.test_client_class = CheckedClient
    client = app.test_client()
    assert value(scrape(client), "timebatch_queue_depth", queue=own_queue.queue) == 0
    celery = create_celery(own_queue)
    # At three priorities: the depth counts every level.
    for rank in (0, 4, 9):
        publish_job(celery, str(uuid.uuid4()), rank)
    assert value(scrape(client), "timebatch_queue_depth", queue=own_queue.queue) == 3


def test_a_dead_broker_is_reported_not_a_failed_scrape(
    settings: Settings, sessions: sessionmaker[Session]
) -> None:
    down = dataclasses.replace(settings, broker_url="redis://127.0.0.1:9/0")
    app = create_app(down, sessions=sessions)
    app.test_client_class = CheckedClient
    samples = scrape(app.test_client())
    assert value(samples, "timebatch_up", component="broker") == 0
    assert value(samples, "timebatch_up", component="database") == 1
    assert not any(name == "timebatch_queue_depth" for name, _ in samples)


def test_files_of_other_processes_are_merged_and_foreign_metrics_left_out(
    settings: Settings, sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    """What another process (a worker, Flower) wrote in the multiprocess directory."""
    from prometheus_client.mmap_dict import MmapedDict, mmap_key

    directory = tmp_path / "metrics"
    directory.mkdir()
    other = MmapedDict(str(directory / "counter_4242.db"))
    ours = "timebatch_sweeper_republished_jobs"
    other.write_value(
        mmap_key(ours, f"{ours}_total", ("queue",), ("elsewhere",), "Stuck jobs"), 5.0, 0.0
    )
    other.write_value(
        mmap_key("flower_events", "flower_events_total", (), (), "Flower's"), 9.0, 0.0
    )
    other.close()
    app = create_app(dataclasses.replace(settings, metrics_dir=directory), sessions=sessions)
    app.test_client_class = CheckedClient
    samples = scrape(app.test_client())
    assert value(samples, f"{ours}_total", queue="elsewhere") == 5
    assert not any(name.startswith("flower_") for name, _ in samples)


def test_gunicorn_drops_the_live_gauges_of_a_worker_that_exited(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from api import gunicorn_config

    for name in ("gauge_livesum_4242.db", "counter_4242.db", "gauge_livesum_4343.db"):
        (tmp_path / name).write_bytes(b"")
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    gunicorn_config.child_exit(None, SimpleNamespace(pid=4242))
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "counter_4242.db",  # what it counted still counts
        "gauge_livesum_4343.db",
    ]


RACE = """
import sys, threading
from shared.ops import metrics
sys.setswitchinterval(1e-6)  # threads switch as often as they can: the race shows at once
start = threading.Barrier(8)
failed = []
def first_request():
    start.wait()
    try:
        metrics.metrics()
    except Exception as exc:
        failed.append(exc)
threads = [threading.Thread(target=first_request) for _ in range(8)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
print(len(failed))
"""


def test_concurrent_first_requests_build_the_metrics_once() -> None:
    # A gthread web worker's first requests arrive together; each fresh process races anew.
    for _ in range(6):
        done = subprocess.run(
            [sys.executable, "-c", RACE], capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "0"
