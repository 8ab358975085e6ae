"""What a batch may hold: the bounds every check of a bulk document and of an id applies."""

from __future__ import annotations

import datetime as dt

# Ids are PostgreSQL bigints.
MAX_ID = 2**63 - 1
MAX_MINUTES = 24 * 60
MAX_NOTE = 10_000
MIN_DATE = dt.date(1900, 1, 1)
MAX_DATE = dt.date(2999, 12, 31)


def parse_id(value: object) -> int | None:
    """An id as clients send it, a number or a string of digits; None when it is not one."""
    if type(value) is str and value.isascii() and value.isdigit() and len(value) < 20:
        value = int(value)
    if type(value) is int and 0 < value <= MAX_ID:
        return value
    return None
