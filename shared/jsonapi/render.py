"""Time entries as JSON:API resources, attribute for attribute as in the spec's examples."""

from __future__ import annotations

import datetime as dt
import gzip
import zlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from zoneinfo import ZoneInfo

import orjson

from shared.store.columns import ATTRIBUTES, TIMESTAMPS

RELATIONSHIPS = (
    "organization",
    "person",
    "service",
    "task",
    "approver",
    "updater",
    "rejecter",
    "creator",
    "last_actor",
    "person_subsidiary",
    "deal_subsidiary",
    "timesheet",
    "invoice_attribution",
    "approval_statuses",
)

_NOT_INCLUDED = {"meta": {"included": False}}


def format_timestamp(value: dt.datetime, zone: dt.tzinfo) -> str:
    local = value.astimezone(zone)
    return local.isoformat(timespec="milliseconds")


class EntryRenderer:
    """Renders entries of one organization; the zone and relationship blocks are built once."""

    def __init__(self, organization_id: int, time_zone: str) -> None:
        self.zone = ZoneInfo(time_zone)
        self.organization = {"data": {"type": "organizations", "id": str(organization_id)}}
        self._relationships: dict[str, Any] = {"organization": self.organization}
        for name in RELATIONSHIPS[1:]:
            self._relationships[name] = _NOT_INCLUDED
        # A batch shares a handful of timestamps and dates: format each once.
        self._formatted: dict[Any, str] = {}

    def _format(self, value: Any) -> str:
        text = self._formatted.get(value)
        if text is None:
            if isinstance(value, dt.datetime):
                text = format_timestamp(value, self.zone)
            else:
                text = value.isoformat()
            if len(self._formatted) < 10_000:
                self._formatted[value] = text
        return text

    def resource(self, row: Mapping[Any, Any]) -> dict[str, Any]:
        fmt = self._format
        attributes = {
            name: (fmt(value) if convert and value is not None else value)
            for name, convert in _PLAN
            for value in (row[name],)
        }
        return {
            "id": str(row["id"]),
            "type": "time_entries",
            "attributes": attributes,
            "relationships": self._relationships,
        }

    def collection(self, rows: Iterable[Mapping[Any, Any]]) -> dict[str, Any]:
        return {"data": [self.resource(row) for row in rows], "meta": {}}

    def encode_collection(self, rows: Sequence[Mapping[Any, Any]]) -> bytes:
        """The collection document, gzip-compressed, rendered and compressed in chunks so a
        large batch never holds its whole JSON text in memory."""
        compressor = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31)
        parts = [compressor.compress(b'{"data":[')]
        for start in range(0, len(rows), RENDER_CHUNK):
            chunk = [self.resource(row) for row in rows[start : start + RENDER_CHUNK]]
            text = orjson.dumps(chunk)[1:-1]
            parts.append(compressor.compress(b"," + text if start else text))
        parts.append(compressor.compress(b'],"meta":{}}'))
        parts.append(compressor.flush())
        return b"".join(parts)


GZIP_LEVEL = 1
RENDER_CHUNK = 1000
_PLAN = tuple((name, name in TIMESTAMPS or name == "date") for name in ATTRIBUTES)


def gzip_document(document: Any) -> bytes:
    return gzip.compress(orjson.dumps(document), compresslevel=GZIP_LEVEL)
