"""A job's event stream end to end: gunicorn (the command of `timebatch run`) -> Redis or
RabbitMQ -> a real Celery worker, whose progress reaches the stream through PostgreSQL's
notifications."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest
import requests
import sseclient

from bench.stack import free_port
from shared.settings import Settings
from tests.e2e.conftest import WorkerProcess, web_tier
from tests.e2e.test_pipeline import create_doc

pytestmark = pytest.mark.e2e

BULK = "application/vnd.api+json; ext=bulk"


@pytest.fixture
def own_settings(e2e_settings: Settings) -> Settings:
    """A queue no worker consumes until the test starts one, and a port of its own."""
    return dataclasses.replace(e2e_settings, queue=f"{e2e_settings.queue}-events", port=free_port())


@pytest.fixture
def web(own_settings: Settings, e2e_db: Any) -> Iterator[str]:
    with web_tier(own_settings) as url:
        yield url


def test_the_stream_of_a_10000_entry_job_shows_it_move_and_ends_with_its_result(
    web: str,
    own_settings: Settings,
    e2e_auth: Any,
    worker_factory: Callable[[Settings], WorkerProcess],
) -> None:
    headers = e2e_auth(7781)
    accepted = requests.post(
        f"{web}/api/v2/time_entries",
        data=orjson.dumps(create_doc(10_000)),
        headers=headers | {"Content-Type": BULK, "Accept": BULK},
        timeout=60,
    )
    assert accepted.status_code == 202, accepted.text
    job = accepted.headers["Location"]
    with requests.get(
        f"{web}{job}/events",
        headers=headers | {"Accept": "text/event-stream"},
        stream=True,
        timeout=(10, 60),
    ) as response:
        assert response.status_code == 200
        assert response.headers["Content-Type"] == "text/event-stream"
        events = sseclient.SSEClient(response.iter_content(chunk_size=None)).events()
        first = next(events)
        # Queued, and no worker yet: the stream is open before the job can move.
        assert (first.event, first.id) == ("progress", "queued:0")
        worker_factory(own_settings)
        seen = [(first.event, first.id, orjson.loads(first.data))]
        seen += [(e.event, e.id, orjson.loads(e.data)) for e in events]

    *progress, (name, event_id, end) = seen
    assert (name, event_id) == ("finished", "finished")
    assert end == {
        "status": "succeeded",
        "result_status": 201,
        "links": {"result": f"{job}/result"},
    }
    assert {name for name, _, _ in progress} == {"progress"}
    assert all(data["total"] == 10_000 for _, _, data in progress)
    assert [data["status"] for _, _, data in progress][:2] == ["queued", "running"]
    processed = [data["processed"] for _, _, data in progress]
    assert processed == sorted(processed)
    assert len(set(processed)) >= 3, processed  # 0, then at least two counts on the way
    assert [event_id for _, event_id, _ in progress] == [
        f"{data['status']}:{data['processed']}" for _, _, data in progress
    ]

    result = requests.get(f"{web}{end['links']['result']}", headers=headers, timeout=60)
    assert result.status_code == 201
    assert len(result.json()["data"]) == 10_000
