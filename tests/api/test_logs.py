"""Structured logs of the web app: one JSON line per event, the request's ids on each, and
never a token or a body. The worker's lines are checked in tests/e2e/test_operations.py."""

from __future__ import annotations

import io
import json
import logging
import re
import sys
from typing import Any

import orjson
import pytest
from flask.testing import FlaskClient

from shared.ops import logs
from tests.conftest import BULK


def formatted(records: list[logging.LogRecord]) -> list[dict[str, Any]]:
    """The records as the app's handler writes them: each must be one JSON line."""
    formatter = logs.JsonLineFormatter()
    lines = []
    for record in records:
        line = formatter.format(record)
        assert "\n" not in line
        lines.append(json.loads(line))
    return lines


def request_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return formatted([r for r in caplog.records if r.name == "timebatch.request"])


def test_a_request_id_is_made_when_absent_and_echoed_when_given(
    client: FlaskClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    made = client.get("/healthz").headers["X-Request-Id"]
    assert re.fullmatch(r"[0-9a-f]{32}", made)
    assert (
        client.get("/healthz", headers={"X-Request-Id": "lb-7.abc:1"}).headers["X-Request-Id"]
        == "lb-7.abc:1"
    )
    # Anything odd is replaced, not copied into headers and logs.
    odd = client.get("/healthz", headers={"X-Request-Id": "x" * 200}).headers["X-Request-Id"]
    assert re.fullmatch(r"[0-9a-f]{32}", odd)
    assert [line["request_id"] for line in request_lines(caplog)] == [made, "lb-7.abc:1", odd]


def test_errors_carry_the_request_id_too(client: FlaskClient) -> None:
    response = client.get("/api/v2/jobs")
    assert response.status_code == 401
    assert response.headers["X-Request-Id"]


def test_a_submission_logs_its_ids_and_neither_token_nor_body(
    client: FlaskClient, auth: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    headers = auth()
    token = headers["X-Auth-Token"]
    secret_note = "my very private note 7c1e"
    body = {
        "data": [
            {
                "type": "time_entries",
                "attributes": {"date": "2026-01-02", "time": 60, "note": secret_note},
                "relationships": {
                    "person": {"data": {"type": "people", "id": "7781"}},
                    "service": {"data": {"type": "services", "id": "1213"}},
                },
            }
        ]
    }
    response = client.post(
        "/api/v2/time_entries",
        data=orjson.dumps(body),
        headers=headers | {"Content-Type": BULK, "X-Request-Id": "req-42"},
    )
    assert response.status_code == 202
    job_id = response.json["data"]["id"]  # type: ignore[index]
    polled = client.get(f"/api/v2/jobs/{job_id}", headers=headers)
    assert polled.status_code == 200

    submitted, poll = request_lines(caplog)
    assert submitted["request_id"] == "req-42"
    assert submitted["organization_id"] == "2110"
    assert submitted["job_id"] == job_id
    assert (submitted["method"], submitted["route"], submitted["status"]) == (
        "POST",
        "/api/v2/time_entries",
        202,
    )
    assert submitted["level"] == "INFO" and submitted["logger"] == "timebatch.request"
    assert poll["job_id"] == job_id and poll["request_id"] == polled.headers["X-Request-Id"]
    everything = caplog.text + json.dumps(formatted(caplog.records))
    assert token not in everything
    assert token.removeprefix("tb_") not in everything
    assert secret_note not in everything
    # Nothing is left bound once the request is over.
    assert all(logs.current(name) is None for name in logs.CONTEXT_FIELDS)


def test_records_of_other_loggers_during_a_request_carry_its_ids(
    client: FlaskClient, auth: Any, caplog: pytest.LogCaptureFixture, app: Any
) -> None:
    caplog.set_level(logging.WARNING)
    app.extensions["timebatch"].publish = _failing_publish
    body = {"data": [{"type": "time_entries", "id": "223"}]}
    response = client.delete(
        "/api/v2/time_entries", data=orjson.dumps(body), headers=auth() | {"Content-Type": BULK}
    )
    assert response.status_code == 202
    (warning,) = [r for r in caplog.records if r.name == "test.publish"]
    assert warning.request_id == response.headers["X-Request-Id"]  # type: ignore[attr-defined]
    assert warning.organization_id == "2110"  # type: ignore[attr-defined]


def _failing_publish(job_id: str, rank: int) -> None:
    logging.getLogger("test.publish").warning("could not publish %s", job_id)


def test_the_handler_writes_one_json_line_per_event_and_blanks_tokens() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonLineFormatter())
    logger = logging.getLogger("test.json")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        with logs.bound(job_id="j-1", task_id="t-1", organization_id=2110):
            try:
                raise ValueError("two\nlines")
            except ValueError:
                logger.exception("failed with tb_%s", "A" * 43)
        logger.warning("after", extra={"rows": 3})
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert list(first)[:4] == ["time", "level", "logger", "message"]
    assert first["message"] == "failed with tb_[redacted]"
    assert (first["job_id"], first["task_id"], first["organization_id"]) == ("j-1", "t-1", "2110")
    assert "ValueError: two\nlines" in first["exc_info"]
    assert second["rows"] == 3 and "job_id" not in second


def test_configure_logging_keeps_other_handlers_and_replaces_its_own() -> None:
    root = logging.getLogger()
    before = [h for h in root.handlers if not isinstance(h, logs.JsonLineHandler)]
    logs.configure_logging()
    logs.configure_logging()
    ours = [h for h in root.handlers if isinstance(h, logs.JsonLineHandler)]
    assert len(ours) == 1
    assert [h for h in root.handlers if not isinstance(h, logs.JsonLineHandler)] == before


def test_the_handler_writes_to_the_stderr_of_the_moment(monkeypatch: pytest.MonkeyPatch) -> None:
    handler = logs.JsonLineHandler()
    handler.setFormatter(logs.JsonLineFormatter())
    record = logging.makeLogRecord({"name": "test", "levelno": logging.WARNING, "msg": "hi"})
    first, second = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stderr", first)
    handler.handle(record)
    first.close()  # as pytest closes a test's capture
    monkeypatch.setattr(sys, "stderr", second)
    monkeypatch.setattr(logging, "raiseExceptions", True)
    handler.handle(record)
    assert json.loads(second.getvalue())["message"] == "hi"


def test_the_web_app_logs_its_own_info_and_only_warnings_of_libraries(app: Any) -> None:
    assert logging.getLogger("timebatch.request").getEffectiveLevel() == logging.INFO
    assert logging.getLogger("shared.ops.metrics").getEffectiveLevel() == logging.INFO
    assert logging.getLogger("alembic.runtime").getEffectiveLevel() == logging.WARNING
