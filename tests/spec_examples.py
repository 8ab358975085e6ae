"""The request and response examples of the spec, read from its text as shipped in fixtures."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SPEC = Path(__file__).parent / "fixtures" / "time_entries_bulk_api.txt"
REQUEST_LINE = re.compile(r"^(POST|PATCH|DELETE)\u00a0\u00a0(/api/v2/\S+)$")
RESPONSE_LINE = re.compile(r"^Responses(\d{3})$")


@dataclass
class Example:
    method: str
    path: str
    request: dict[str, Any]
    status: int
    response: dict[str, Any] | None


def examples() -> list[Example]:
    text = SPEC.read_text()
    lines = text.splitlines(keepends=True)
    offsets = [0]
    for line in lines:
        offsets.append(offsets[-1] + len(line))
    decoder = json.JSONDecoder()
    found: list[Example] = []
    current: dict[str, Any] = {}
    for number, line in enumerate(lines):
        stripped = line.rstrip("\n")
        if match := REQUEST_LINE.match(stripped):
            current = {"method": match.group(1), "path": match.group(2)}
        elif match := RESPONSE_LINE.match(stripped):
            current["status"] = int(match.group(1))
            if current["status"] == 204:
                found.append(Example(response=None, **current))
        elif stripped == "Body" and current:
            start = offsets[number + 1]
            body, _ = decoder.raw_decode(text[start:])
            if "status" in current:
                found.append(Example(response=body, **current))
            else:
                current["request"] = body
    return found
