"""The bounds of ids and dates, and the patterns the OpenAPI document declares for them."""

from __future__ import annotations

import datetime as dt
import re

from hypothesis import example, given
from hypothesis import strategies as st

from shared.domain.limits import (
    DATE_PATTERN,
    ID_PATTERN,
    MAX_DATE,
    MAX_ID,
    MIN_DATE,
    calendar_date,
    parse_id,
)

ID = re.compile(ID_PATTERN)
DIGITS = st.text(alphabet="0123456789", min_size=1, max_size=24)
NEAR_THE_LARGEST = st.integers(MAX_ID - 10**6, MAX_ID + 10**6).map(str)
ZEROS = st.text(alphabet="0", max_size=3)


@given(zeros=ZEROS, digits=DIGITS | NEAR_THE_LARGEST)
@example(zeros="", digits=str(MAX_ID))
@example(zeros="", digits=str(MAX_ID + 1))
@example(zeros="", digits="9" * 19)
@example(zeros="00", digits="0")
def test_the_id_pattern_takes_exactly_the_ids_parse_id_takes(zeros: str, digits: str) -> None:
    value = zeros + digits
    assert (ID.fullmatch(value) is not None) == (parse_id(value) is not None), value


def test_ids_are_bigints_given_as_numbers_or_digits() -> None:
    assert [parse_id(v) for v in ("7781", "007781", 7781, 7781.0, str(MAX_ID))] == [
        7781,
        7781,
        7781,
        7781,
        MAX_ID,
    ]
    for bad in ("", "0", "-1", " 1", "1 ", "\uff17", "1e3", 0, -1, 1.5, MAX_ID + 1, 2.0**63, True):
        assert parse_id(bad) is None, bad


@given(st.dates(dt.date(1, 1, 1), dt.date(9999, 12, 31)))
@example(MIN_DATE)
@example(MAX_DATE)
@example(MIN_DATE - dt.timedelta(days=1))
@example(MAX_DATE + dt.timedelta(days=1))
def test_the_date_pattern_declares_the_range(date: dt.date) -> None:
    declared = re.fullmatch(DATE_PATTERN, date.isoformat()) is not None
    assert declared == (MIN_DATE <= date <= MAX_DATE)


def test_a_calendar_date_is_yyyy_mm_dd_exactly() -> None:
    assert calendar_date("2024-08-28") == dt.date(2024, 8, 28)
    for bad in ("20240828", "2024-W35-3", "2024-08-28T00:00", "2024-02-30", "2024-8-28", 20240828):
        assert calendar_date(bad) is None, bad
