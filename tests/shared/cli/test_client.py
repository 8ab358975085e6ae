"""The command-line client's pure parts: how often it polls and how it prints errors."""

from __future__ import annotations

import pytest

from shared.cli.client import MAX_POLL_INTERVAL, error_lines, poll_interval


@pytest.mark.parametrize(
    ("retry_after", "seconds"),
    [("0", 0.0), ("1", MAX_POLL_INTERVAL), ("30", MAX_POLL_INTERVAL), (None, MAX_POLL_INTERVAL),
     ("soon", MAX_POLL_INTERVAL), ("Wed, 21 Oct 2015 07:28:00 GMT", MAX_POLL_INTERVAL)],
)  # fmt: skip
def test_polls_at_least_every_half_second(retry_after: str | None, seconds: float) -> None:
    assert poll_interval(retry_after) == seconds
    assert MAX_POLL_INTERVAL == 0.5


def test_error_lines_name_pointer_parameter_or_title() -> None:
    document = {
        "errors": [
            {"status": "422", "title": "Invalid attribute", "detail": "bad date",
             "source": {"pointer": "/data/3/attributes/date"}},
            {"status": "400", "title": "Invalid parameter", "detail": "too big",
             "source": {"parameter": "page[size]"}},
            {"status": "401", "title": "Unauthorized", "detail": "send a token"},
            {"status": "400", "title": "Malformed document", "detail": "not JSON",
             "source": {"pointer": ""}},
        ]
    }  # fmt: skip
    assert error_lines(document) == [
        "/data/3/attributes/date -> bad date",
        "page[size] -> too big",
        "Unauthorized: send a token",
        "Malformed document: not JSON",  # the pointer "" is the whole document
    ]
    assert error_lines({"data": []}) == []
    assert error_lines(None) == []
