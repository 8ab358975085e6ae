"""Collections: the query parameters of a list (filter, sort, page, include) and its document.

A parameter that a collection does not support is a 400 naming it in `source.parameter`,
never silently ignored: a misspelled filter must not return everything.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from flask import Response
from werkzeug.datastructures import MultiDict

from shared.domain.limits import calendar_date, parse_id
from shared.jsonapi.errors import CONTENT_TYPE, ApiError, encode
from shared.store.queries import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, Page, PageRequest, SortKey

# Parses one parameter's value; gets the value and the parameter's name for its errors.
Parser = Callable[[str, str], Any]

FAMILY = re.compile(r"^(filter|page)\[([^\[\]]*)\]$")
# Keeps the offset far inside a bigint.
MAX_PAGE_NUMBER = 1_000_000_000
SHOWN = 40


def invalid(parameter: str, detail: str, title: str = "Invalid parameter") -> ApiError:
    return ApiError.one(400, title, detail, parameter=parameter)


def _shown(value: str) -> str:
    return repr(value if len(value) <= SHOWN else value[:SHOWN] + "...")


def _values(value: str, parameter: str) -> list[str]:
    # Taken as written, spaces included: the OpenAPI document's patterns allow none.
    parts = value.split(",")
    if any(not part for part in parts):
        raise invalid(parameter, f"{parameter} needs a value, or several separated by commas")
    return parts


def ids(value: str, parameter: str) -> frozenset[int]:
    """A comma-separated list of ids; matches any of them."""
    found = set()
    for part in _values(value, parameter):
        parsed = parse_id(part)
        if parsed is None:
            raise invalid(
                parameter, f"{parameter} takes ids separated by commas, not {_shown(part)}"
            )
        found.add(parsed)
    return frozenset(found)


def date(value: str, parameter: str) -> dt.date:
    found = calendar_date(value)
    if found is not None:
        return found
    raise invalid(parameter, f"{parameter} must be a calendar date YYYY-MM-DD, not {_shown(value)}")


def one_of(choices: Collection[str]) -> Parser:
    """A comma-separated list of some of these words; matches any of them."""

    def parse(value: str, parameter: str) -> frozenset[str]:
        found = _values(value, parameter)
        for word in found:
            if word not in choices:
                raise invalid(
                    parameter,
                    f"{parameter} takes {', '.join(sorted(choices))}, not {_shown(word)}",
                )
        return frozenset(found)

    return parse


@dataclass(frozen=True)
class Query:
    filters: dict[str, Any]
    sorts: tuple[SortKey, ...]
    page: PageRequest
    include: frozenset[str]


def _number(value: str, parameter: str, largest: int) -> int:
    if value.isascii() and value.isdigit() and 0 < int(value) <= largest:
        return int(value)
    raise invalid(parameter, f"{parameter} must be a whole number from 1 to {largest}")


def _sorts(value: str, sorts: Collection[str]) -> tuple[SortKey, ...]:
    keys = []
    for part in _values(value, "sort"):
        name = part.removeprefix("-")
        if name not in sorts:
            raise invalid(
                "sort",
                f"cannot sort by {_shown(name)}; sort by {', '.join(sorts)} "
                "(a leading - sorts descending)",
                "Unsupported sort",
            )
        keys.append((name, part.startswith("-")))
    return tuple(keys)


def _include(value: str, includes: Collection[str]) -> frozenset[str]:
    names = _values(value, "include")
    for name in names:
        if name not in includes:
            supported = (
                f"include {', '.join(includes)}" if includes else "nothing can be included here"
            )
            raise invalid(
                "include", f"cannot include {_shown(name)}; {supported}", "Unsupported include"
            )
    return frozenset(names)


def _unsupported(name: str, filters: Collection[str]) -> ApiError:
    if name.startswith("filter["):
        supported = (
            f"filter by {', '.join(filters)}" if filters else "this collection has no filters"
        )
        return invalid(name, f"{name} is not supported; {supported}", "Unsupported filter")
    return invalid(name, f"{name} is not a supported query parameter", "Unsupported parameter")


def _single(args: MultiDict[str, str], name: str) -> str:
    values = args.getlist(name)
    if len(values) > 1:
        raise invalid(name, f"{name} is given {len(values)} times; give it once")
    return values[0]


def list_query(
    args: MultiDict[str, str],
    *,
    filters: Mapping[str, Parser],
    sorts: Sequence[str],
    default_sort: str,
    includes: Sequence[str] = (),
) -> Query:
    """Parse a collection's query parameters, or raise a 400 naming the first bad one."""
    found: dict[str, Any] = {}
    sort = _sorts(default_sort, sorts)
    number, size = 1, DEFAULT_PAGE_SIZE
    include: frozenset[str] = frozenset()
    for name in args:
        value = _single(args, name)
        family = FAMILY.match(name)
        if name == "sort":
            sort = _sorts(value, sorts)
        elif name == "include":
            include = _include(value, includes)
        elif name == "page[number]":
            number = _number(value, name, MAX_PAGE_NUMBER)
        elif name == "page[size]":
            size = _number(value, name, MAX_PAGE_SIZE)
        elif family is not None and family[1] == "filter" and family[2] in filters:
            found[family[2]] = filters[family[2]](value, name)
        else:
            raise _unsupported(name, filters)
    return Query(found, sort, PageRequest(number, size), include)


def no_query(args: MultiDict[str, str]) -> None:
    """An endpoint that takes no query parameters: any is a 400."""
    for name in args:
        raise _unsupported(name, ())


def include_query(
    args: MultiDict[str, str], *, includes: Sequence[str] = (), allowed: Collection[str] = ()
) -> frozenset[str]:
    """A single resource or a bulk submission: it takes `include` (some of `includes`) and
    the `allowed` parameters, no other; returns the names to include."""
    include: frozenset[str] = frozenset()
    for name in args:
        if name == "include":
            include = _include(_single(args, name), includes)
        elif name not in allowed:
            raise _unsupported(name, ())
    return include


def _link(path: str, args: MultiDict[str, str], number: int) -> str:
    pairs = [(k, v) for k, v in args.items(multi=True) if k != "page[number]"]
    pairs.append(("page[number]", str(number)))
    return f"{path}?{urlencode(pairs, safe='[],')}"


def page_response(
    page: Page[Any],
    data: list[dict[str, Any]],
    *,
    path: str,
    args: MultiDict[str, str],
    included: list[dict[str, Any]] | None = None,
) -> Response:
    """The page as a JSON:API document: `meta` with the counts, `links` to its neighbours."""
    number = page.request.number
    total_pages = page.total_pages
    last = max(total_pages, 1)
    document: dict[str, Any] = {"data": data}
    if included is not None:
        document["included"] = included
    document["meta"] = {
        "current_page": number,
        "total_pages": total_pages,
        "total_count": page.total_count,
        "page_size": page.request.size,
        "max_page_size": MAX_PAGE_SIZE,
    }
    document["links"] = {
        "self": _link(path, args, number),
        "first": _link(path, args, 1),
        "prev": _link(path, args, min(number - 1, last)) if number > 1 else None,
        "next": _link(path, args, number + 1) if number < total_pages else None,
        "last": _link(path, args, last),
    }
    return Response(encode(document), status=200, content_type=CONTENT_TYPE)
