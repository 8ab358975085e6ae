"""What a batch may hold: the bounds every check of a bulk document and of an id applies."""

from __future__ import annotations

import datetime as dt

# Ids are PostgreSQL bigints.
MAX_ID = 2**63 - 1
MAX_MINUTES = 24 * 60
MAX_NOTE = 10_000
MIN_DATE = dt.date(1900, 1, 1)
MAX_DATE = dt.date(2999, 12, 31)
# The years MIN_DATE to MAX_DATE, then a month and a day, for the OpenAPI document; the
# calendar itself is the `date` format's to check.
DATE_PATTERN = r"^(?:19[0-9]{2}|2[0-9]{3})-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12][0-9]|3[01])$"


def _at_most(limit: str) -> str:
    """A regular expression for the strings of len(limit) digits that are at most limit."""
    first, rest = limit[0], limit[1:]
    if not rest:
        return f"[0-{first}]"
    same = first + _at_most(rest)
    if first == "0":
        return same
    return f"(?:[0-{int(first) - 1}][0-9]{{{len(rest)}}}|{same})"


def _numbers_to(limit: int) -> str:
    """A regular expression for the decimal numbers from 1 to limit, without leading zeros."""
    digits = str(limit)
    shorter = f"[1-9][0-9]{{0,{len(digits) - 2}}}"
    as_long = digits[0] + _at_most(digits[1:])
    if digits[0] != "1":
        as_long = f"[1-{int(digits[0]) - 1}][0-9]{{{len(digits) - 1}}}|{as_long}"
    return f"(?:{shorter}|{as_long})"


# An id as a string, as parse_id takes it (leading zeros allowed); unanchored.
ID_PATTERN = f"0*{_numbers_to(MAX_ID)}"


def calendar_date(value: object) -> dt.date | None:
    """A date as YYYY-MM-DD exactly (fromisoformat alone also takes "20240828", "2024-W35-3")."""
    if type(value) is not str:
        return None
    try:
        found = dt.date.fromisoformat(value)
    except ValueError:
        return None
    return found if found.isoformat() == value else None


def whole(value: object) -> int | None:
    """A JSON number that is a whole number, as an int; None for anything else. JSON has one
    kind of number, and JSON Schema calls 7.0 an integer too."""
    if type(value) is int:
        return value
    if type(value) is float and value.is_integer():
        return int(value)
    return None


def parse_id(value: object) -> int | None:
    """An id as clients send it, a number or a string of digits; None when it is not one."""
    if type(value) is str:
        digits = value.lstrip("0")
        if not (digits.isascii() and digits.isdigit() and len(digits) <= len(str(MAX_ID))):
            return None
        value = int(digits)
    found = whole(value)
    if found is not None and 0 < found <= MAX_ID:
        return found
    return None
