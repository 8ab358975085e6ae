"""Submit a bulk document and follow its job to the final answer, as a client would."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

BULK = "application/vnd.api+json; ext=bulk"


def eventually(check: Callable[[], bool], timeout: float = 20, what: str = "the condition") -> None:
    """Wait for something another process does (a worker's commit, log line or metric) by
    polling it until a deadline; the test fails when it does not happen in time."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what} did not happen within {timeout}s")
        time.sleep(0.05)


@dataclass
class Outcome:
    accepted: TestResponse
    result: TestResponse
    polls: int

    @property
    def status(self) -> int:
        return self.result.status_code

    @property
    def document(self) -> Any:
        return orjson.loads(self.result.data) if self.result.data else None

    @property
    def job_url(self) -> str:
        return str(self.accepted.headers["Location"])


class JobClient:
    def __init__(self, client: FlaskClient) -> None:
        self.client = client

    def submit(
        self,
        method: str,
        path: str,
        document: Any,
        headers: dict[str, str],
        extra_headers: dict[str, str] | None = None,
    ) -> TestResponse:
        body = document if isinstance(document, bytes) else orjson.dumps(document)
        return self.client.open(
            path,
            method=method,
            data=body,
            headers={"Content-Type": BULK, "Accept": BULK, **headers, **(extra_headers or {})},
        )

    def follow(
        self, accepted: TestResponse, headers: dict[str, str], timeout: float = 120
    ) -> Outcome:
        assert accepted.status_code == 202, accepted.data
        location = accepted.headers["Location"]
        deadline = time.monotonic() + timeout
        polls = 0
        while time.monotonic() < deadline:
            polls += 1
            response = self.client.get(location, headers=headers)
            if response.status_code == 303:
                result = self.client.get(response.headers["Location"], headers=headers)
                return Outcome(accepted, result, polls)
            assert response.status_code == 200, response.data
            assert "Retry-After" in response.headers
            time.sleep(0.05)
        raise AssertionError(f"job {location} did not finish in {timeout}s")

    def run(
        self, method: str, path: str, document: Any, headers: dict[str, str], **kwargs: Any
    ) -> Outcome:
        return self.follow(self.submit(method, path, document, headers, **kwargs), headers)
