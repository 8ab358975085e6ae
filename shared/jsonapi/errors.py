"""JSON:API documents and error objects, encoded with orjson."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

CONTENT_TYPE = "application/vnd.api+json; charset=utf-8"
MEDIA_TYPE = "application/vnd.api+json"


@dataclass(frozen=True)
class Problem:
    """One JSON:API error object."""

    status: int
    title: str
    detail: str
    pointer: str | None = None
    parameter: str | None = None
    code: str | None = None

    def to_dict(self) -> dict[str, Any]:
        error: dict[str, Any] = {"status": str(self.status), "title": self.title}
        if self.code:
            error["code"] = self.code
        error["detail"] = self.detail
        if self.pointer is not None:
            error["source"] = {"pointer": self.pointer}
        elif self.parameter is not None:
            error["source"] = {"parameter": self.parameter}
        return error


class ApiError(Exception):
    """One or more problems that end a request or a job; nothing they name was changed."""

    def __init__(
        self,
        problems: Sequence[Problem],
        status: int | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        if not problems:
            raise ValueError("an ApiError needs at least one problem")
        self.problems = list(problems)
        self.status = status if status is not None else document_status(self.problems)
        # Sent with the answer to a request (Retry-After); never stored with a job's result.
        self.headers = dict(headers or {})
        super().__init__(self.problems[0].detail)

    @classmethod
    def one(
        cls,
        status: int,
        title: str,
        detail: str,
        *,
        pointer: str | None = None,
        parameter: str | None = None,
    ) -> ApiError:
        return cls([Problem(status, title, detail, pointer=pointer, parameter=parameter)])

    def document(self) -> dict[str, Any]:
        return error_document(self.problems)

    def body(self) -> bytes:
        return encode(self.document())


def document_status(problems: Iterable[Problem]) -> int:
    """The most specific status common to all problems; 400 when they differ."""
    statuses = {p.status for p in problems}
    if len(statuses) == 1:
        return statuses.pop()
    if all(s >= 500 for s in statuses):
        return 500
    return 400


def error_document(problems: Iterable[Problem]) -> dict[str, Any]:
    return {"errors": [p.to_dict() for p in problems], "jsonapi": {"version": "1.0"}}


def encode(document: Any) -> bytes:
    return orjson.dumps(document)
