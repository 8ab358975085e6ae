"""Entries rendered as JSON:API resources: the spec's attribute order, local timestamps, gzip."""

from __future__ import annotations

import datetime as dt
import gzip
from typing import Any

import orjson
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.jsonapi.render import (
    NOT_INCLUDED,
    RELATIONSHIPS,
    RENDER_CHUNK,
    EntryRenderer,
    gzip_document,
)
from shared.store.columns import ATTRIBUTES, READ_COLUMNS, TIMESTAMPS
from shared.store.models import TimeEntry
from shared.store.queries import ENTRY_COLUMNS, referenced

UTC = dt.UTC


def row(entry_id: int = 1, /, **values: Any) -> dict[str, Any]:
    """A row as the queries select it: every rendered column, timestamps in UTC."""
    base: dict[str, Any] = dict.fromkeys(READ_COLUMNS)
    base |= {
        "id": entry_id,
        "organization_id": 2110,
        "person_id": 7781,
        "service_id": 1213,
        "date": dt.date(2026, 1, 5),
        "time": 60,
        "created_at": dt.datetime(2026, 1, 5, 8, 0, tzinfo=UTC),
        "updated_at": dt.datetime(2026, 1, 5, 8, 0, tzinfo=UTC),
        "last_activity_at": dt.datetime(2026, 1, 5, 8, 0, tzinfo=UTC),
    }
    return base | values


def demo_row(session: Session, entry_id: int) -> dict[str, Any]:
    found = session.execute(select(*ENTRY_COLUMNS).where(TimeEntry.id == entry_id)).one()
    return dict(found._mapping)


def test_attributes_come_in_the_spec_s_order(session: Session) -> None:
    resource = EntryRenderer(2110, "Europe/Berlin").resource(demo_row(session, 249))
    assert list(resource) == ["id", "type", "attributes", "relationships"]
    assert list(resource["attributes"]) == list(ATTRIBUTES)
    assert list(resource["relationships"]) == list(RELATIONSHIPS)
    assert (resource["id"], resource["type"]) == ("249", "time_entries")


def test_relationships_name_the_organization_and_include_nothing_else() -> None:
    relationships = EntryRenderer(2111, "UTC").resource(row())["relationships"]
    assert relationships.pop("organization") == {"data": {"type": "organizations", "id": "2111"}}
    assert relationships == {name: {"meta": {"included": False}} for name in RELATIONSHIPS[1:]}


@pytest.mark.parametrize(
    ("zone", "at", "text"),
    [
        # Winter and summer time in Berlin: the offset follows the instant, not the zone.
        ("Europe/Berlin", dt.datetime(2026, 1, 5, 8, 30, 15, 987654), "2026-01-05T09:30:15.987+01:00"),
        ("Europe/Berlin", dt.datetime(2026, 7, 5, 8, 30, 15), "2026-07-05T10:30:15.000+02:00"),
        ("America/New_York", dt.datetime(2026, 1, 5, 3, 0, 0, 1000), "2026-01-04T22:00:00.001-05:00"),
        ("Asia/Kolkata", dt.datetime(2026, 1, 5, 8, 0), "2026-01-05T13:30:00.000+05:30"),
        ("UTC", dt.datetime(2026, 1, 5, 8, 0, 0, 999), "2026-01-05T08:00:00.000+00:00"),
    ],
)  # fmt: skip
def test_timestamps_have_the_organization_s_offset_and_milliseconds(
    zone: str, at: dt.datetime, text: str
) -> None:
    instant = at.replace(tzinfo=UTC)
    attributes = EntryRenderer(2110, zone).resource(row(approved_at=instant))["attributes"]
    assert attributes["approved_at"] == text


def test_every_timestamp_column_is_formatted_and_nulls_stay_null() -> None:
    instant = dt.datetime(2026, 1, 5, 8, 0, tzinfo=UTC)
    values = dict.fromkeys(TIMESTAMPS, instant)
    attributes = EntryRenderer(2110, "Europe/Berlin").resource(row(**values))["attributes"]
    assert {name: attributes[name] for name in TIMESTAMPS} == dict.fromkeys(
        TIMESTAMPS, "2026-01-05T09:00:00.000+01:00"
    )
    bare = EntryRenderer(2110, "Europe/Berlin").resource(row(approved_at=None, note=None))
    assert bare["attributes"]["approved_at"] is None and bare["attributes"]["note"] is None


def test_a_stored_entry_renders_with_its_stored_values(session: Session) -> None:
    stored = demo_row(session, 249)
    attributes = EntryRenderer(2110, "Europe/Berlin").resource(stored)["attributes"]
    # 249 was approved 2016-10-03 09:00 UTC: summer time in Berlin.
    assert attributes["approved_at"] == "2016-10-03T11:00:00.000+02:00"
    assert attributes["date"] == "2016-10-01"
    plain = [name for name in ATTRIBUTES if name not in TIMESTAMPS and name != "date"]
    assert {name: attributes[name] for name in plain} == {name: stored[name] for name in plain}
    assert (attributes["time"], attributes["cost"], attributes["cost_default"]) == (
        480,
        16000,
        20000,
    )


def test_dates_and_numbers_are_not_converted() -> None:
    attributes = EntryRenderer(2110, "Asia/Tokyo").resource(
        row(date=dt.date(2026, 12, 31), time=0, cost=-5, invoiced=False)
    )["attributes"]
    # A date is a calendar day: no zone moves it.
    assert attributes["date"] == "2026-12-31"
    assert (attributes["time"], attributes["cost"], attributes["invoiced"]) == (0, -5, False)


@pytest.mark.parametrize("count", [0, 1, RENDER_CHUNK, RENDER_CHUNK + 1, 2 * RENDER_CHUNK + 7])
def test_encode_collection_is_gzip_of_the_collection_document(count: int) -> None:
    renderer = EntryRenderer(2110, "Europe/Berlin")
    base = dt.datetime(2026, 1, 5, 8, 0, tzinfo=UTC)
    rows = [
        row(n + 1, note=f"n{n}", updated_at=base + dt.timedelta(minutes=n)) for n in range(count)
    ]
    encoded = renderer.encode_collection(rows)
    assert encoded[:2] == b"\x1f\x8b"  # a gzip member, servable with Content-Encoding: gzip
    expected = EntryRenderer(2110, "Europe/Berlin").collection(rows)
    assert gzip.decompress(encoded) == orjson.dumps(expected)
    document = orjson.loads(gzip.decompress(encoded))
    assert list(document) == ["data", "meta"]
    assert [entry["id"] for entry in document["data"]] == [str(n + 1) for n in range(count)]
    assert document["meta"] == {}


@pytest.mark.parametrize("count", [0, 1, RENDER_CHUNK + 1])
def test_related_resources_are_linked_and_included_once_each(session: Session, count: int) -> None:
    rows = [row(n + 1, task_id=302 if n % 2 else None) for n in range(count)]
    rows.append(row(count + 1, task_id=424242))  # gone since, or never the caller's to see
    related = referenced(session, 2110, rows, {"task", "person"})
    assert list(related) == ["person", "task"]
    renderer = EntryRenderer(2110, "Europe/Berlin", related)

    encoded = renderer.encode_collection(rows)

    assert gzip.decompress(encoded) == orjson.dumps(renderer.collection(rows))
    document = orjson.loads(gzip.decompress(encoded))
    assert list(document) == ["data", "included", "meta"]
    tasks = [entry["relationships"]["task"] for entry in document["data"]]
    assert tasks == [
        {"data": {"type": "tasks", "id": "302"} if n % 2 else None} for n in range(count)
    ] + [{"data": None}]
    for entry in document["data"]:
        assert list(entry["relationships"]) == list(RELATIONSHIPS)
        assert entry["relationships"]["person"] == {"data": {"type": "people", "id": "7781"}}
        assert entry["relationships"]["service"] == NOT_INCLUDED  # not asked for
    assert [(r["type"], r["id"]) for r in document["included"]] == [("people", "7781")] + (
        [("tasks", "302")] if count > 1 else []
    )
    # Nothing asked: the spec's shape, the same as a renderer that was never given any.
    plain = EntryRenderer(2110, "Europe/Berlin", {}).resource(rows[0])
    assert plain == EntryRenderer(2110, "Europe/Berlin").resource(rows[0])
    assert plain["relationships"]["person"] == NOT_INCLUDED


def test_gzip_document_decompresses_to_the_document_s_json() -> None:
    document = {
        "errors": [{"status": "500", "title": "Internal error"}],
        "jsonapi": {"version": "1.0"},
    }
    zipped = gzip_document(document)
    assert zipped[:2] == b"\x1f\x8b"
    assert gzip.decompress(zipped) == orjson.dumps(document)
