"""The database's own floor: what no implementation of a bulk create can skip.

For the very request body the pipeline gets: parse it with orjson, build the rows the worker
writes (same columns, same computed costs), ``COPY`` them into a scratch copy of the
time_entries table, read them back, commit, and encode the final JSON:API payload with
orjson. The scratch table is an ordinary (logged) table made ``LIKE time_entries INCLUDING
ALL``: the same columns, defaults, check constraints and indexes, but no foreign keys. The
lookups a real implementation makes (token, person, service, task) are done once, outside
the clock, and so are the costs of the body's (person, minutes) pairs (a price list is data an
implementation may keep). The cyclic garbage collector is off while a floor runs (see
:func:`without_gc`).

The submit floor: parse the body with orjson and insert it, as received, as one bytea row,
committed: what accepting a batch durably costs at least. The same as one jsonb row is
measured too: PostgreSQL then parses the document again and stores its binary form, which
costs several times more than the raw row, and is a choice, not a necessity.

Both run in this process on their own psycopg connection to the bench database, in UTC as
timebatch's own sessions are.

The small-job floor (:class:`SmallFloor`): for batches of 1 and 100 entries, the fixed costs
of a job (submit, publish, pickup, the job's own transactions, the wake-up) are what
dominate, so their floor is the same create through timebatch's own domain code, in one
transaction, in this process.
"""

from __future__ import annotations

import datetime as dt
import gc
import time
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from fractions import Fraction
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import psycopg
from sqlalchemy import create_engine, event, make_url
from sqlalchemy.orm import Session

from shared.domain import documents
from shared.domain.context import BatchResult, load_context
from shared.domain.costs import CurrencyBook, entry_costs
from shared.domain.entries import create_entries
from shared.jsonapi.render import RELATIONSHIPS
from shared.store.columns import ATTRIBUTES, COLUMNS, COST_COLUMNS, TIMESTAMPS
from shared.store.engine import speak_utc
from shared.store.models import Operation

SCRATCH = "bench_floor_time_entries"
SUBMISSIONS = "bench_floor_submissions"
RAW_SUBMISSIONS = "bench_floor_raw_submissions"

# What the worker writes for a new entry (the rest are the table's defaults).
INSERT_COLUMNS = (
    "organization_id",
    "person_id",
    "service_id",
    "task_id",
    "date",
    "time",
    "billable_time",
    "note",
    "currency",
    "currency_default",
    "currency_normalized",
    *COST_COLUMNS,
    "creator_id",
    "updater_id",
    "last_actor_id",
    "created_at",
    "updated_at",
    "last_activity_at",
)
_COST_VALUES = ("currency", "currency_default", "currency_normalized", *COST_COLUMNS)
_TIMESTAMP_AT = tuple(n for n, name in enumerate(ATTRIBUTES) if name in TIMESTAMPS)
_DATE_AT = ATTRIBUTES.index("date")


def conninfo(sqlalchemy_url: str) -> str:
    return make_url(sqlalchemy_url).set(drivername="postgresql").render_as_string(False)


@contextmanager
def without_gc() -> Iterator[None]:
    """The cyclic collector off: its passes over a batch's hundreds of thousands of fresh
    objects (no cycles among them) are work an implementation can avoid."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _timed(phases: dict[str, float], name: str, started: float) -> float:
    now = time.perf_counter()
    phases[name] = now - started
    return now


class Floor:
    """The floor and the submit floor, for one organization and caller of the demo data."""

    def __init__(self, sqlalchemy_url: str, organization_id: int, caller_id: int) -> None:
        self.conn = psycopg.connect(conninfo(sqlalchemy_url))
        # In UTC, as timebatch's own sessions are: the floor pays no zone conversion they skip.
        speak_utc(self.conn)
        self.organization_id = organization_id
        self.caller_id = caller_id
        with self.conn.cursor() as cur:
            for table in (SCRATCH, SUBMISSIONS, RAW_SUBMISSIONS):
                cur.execute(f"DROP TABLE IF EXISTS {table}")
            cur.execute(f"CREATE TABLE {SCRATCH} (LIKE time_entries INCLUDING ALL)")
            cur.execute(f"CREATE TABLE {SUBMISSIONS} (id bigserial PRIMARY KEY, body jsonb)")
            cur.execute(f"CREATE TABLE {RAW_SUBMISSIONS} (id bigserial PRIMARY KEY, body bytea)")
            row = cur.execute(
                "SELECT default_currency, reporting_currency, time_zone, internal_overhead_rate,"
                " facility_overhead_rate FROM organizations WHERE id = %s",
                (organization_id,),
            ).fetchone()
            assert row is not None, f"organization {organization_id} is missing"
            default, reporting, zone, internal, facility = row
            rates: dict[str, Decimal] = {
                currency: rate
                for currency, rate in cur.execute(
                    "SELECT currency, rate FROM exchange_rates WHERE organization_id = %s",
                    (organization_id,),
                )
            }
            self.people = {
                pid: (rate, currency)
                for pid, rate, currency in cur.execute(
                    "SELECT id, cost_rate, cost_rate_currency FROM people"
                    " WHERE organization_id = %s",
                    (organization_id,),
                )
            }
            self.billable: dict[int, bool] = {
                sid: billable
                for sid, billable in cur.execute(
                    "SELECT id, billable FROM services WHERE organization_id = %s",
                    (organization_id,),
                )
            }
        self.conn.commit()
        self.book = CurrencyBook(default, reporting, {c: Fraction(r) for c, r in rates.items()})
        self.overheads = (internal, facility)
        self.zone = ZoneInfo(zone)
        self._costs: dict[tuple[int, int], tuple[Any, ...]] = {}

    def close(self) -> None:
        self.conn.close()

    def costs(self, person_id: int, minutes: int) -> tuple[Any, ...]:
        """An entry's currencies and costs, as the worker computes them; memoized."""
        found = self._costs.get((person_id, minutes))
        if found is None:
            rate, currency = self.people[person_id]
            values = entry_costs(
                minutes,
                rate,
                currency,
                self.book,
                internal_overhead_rate=self.overheads[0],
                facility_overhead_rate=self.overheads[1],
            )
            found = self._costs[(person_id, minutes)] = tuple(values[k] for k in _COST_VALUES)
        return found

    def prime(self, body: bytes) -> None:
        """Compute the costs the body needs before the clock starts: a price list is data an
        implementation can keep, not work it must redo per request."""
        for item in orjson.loads(body)["data"]:
            person = int(item["relationships"]["person"]["data"]["id"])
            self.costs(person, item["attributes"].get("time", 0))

    def reset(self) -> None:
        with self.conn.cursor() as cur:
            cur.execute(f"TRUNCATE {SCRATCH}, {SUBMISSIONS}, {RAW_SUBMISSIONS}")
        self.conn.commit()

    def create(self, body: bytes) -> tuple[dict[str, float], bytes]:
        """The floor of a bulk create of ``body``: its phases in seconds, and the payload.

        Call :meth:`prime` with the body first."""
        with without_gc():
            return self._create(body)

    def _create(self, body: bytes) -> tuple[dict[str, float], bytes]:
        phases: dict[str, float] = {}
        started = t = time.perf_counter()
        document = orjson.loads(body)
        t = _timed(phases, "parse", t)

        costs = self.costs
        now = dt.datetime.now(dt.UTC)
        caller = self.caller_id
        organization_id = self.organization_id
        billable = self.billable
        rows = []
        for item in document["data"]:
            attributes = item["attributes"]
            relationships = item["relationships"]
            person_id = int(relationships["person"]["data"]["id"])
            service_id = int(relationships["service"]["data"]["id"])
            task = relationships.get("task")
            minutes = attributes.get("time", 0)
            rows.append(
                (
                    organization_id,
                    person_id,
                    service_id,
                    None if task is None or task["data"] is None else int(task["data"]["id"]),
                    dt.date.fromisoformat(attributes["date"]),
                    minutes,
                    minutes if billable[service_id] else 0,
                    attributes.get("note"),
                    *costs(person_id, minutes),
                    caller,
                    caller,
                    caller,
                    now,
                    now,
                    now,
                )
            )
        t = _timed(phases, "rows", t)

        with self.conn.cursor() as cur:
            with cur.copy(f"COPY {SCRATCH} ({', '.join(INSERT_COLUMNS)}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
            t = _timed(phases, "copy", t)
        with self.conn.cursor(binary=True) as cur:
            read = cur.execute(f"SELECT {', '.join(COLUMNS)} FROM {SCRATCH} ORDER BY id").fetchall()
            t = _timed(phases, "read", t)
        self.conn.commit()
        t = _timed(phases, "commit", t)

        payload = self.encode(read)
        t = _timed(phases, "encode", t)
        phases["total"] = t - started
        return phases, payload

    def encode(self, rows: list[tuple[Any, ...]]) -> bytes:
        zone = self.zone
        formatted: dict[dt.datetime, str] = {}
        relationships: dict[str, Any] = {
            "organization": {"data": {"type": "organizations", "id": str(self.organization_id)}}
        }
        for name in RELATIONSHIPS[1:]:
            relationships[name] = {"meta": {"included": False}}
        data = []
        for row in rows:
            values = list(row[2:])
            for n in _TIMESTAMP_AT:
                value = values[n]
                if value is not None:
                    text = formatted.get(value)
                    if text is None:
                        text = formatted[value] = value.astimezone(zone).isoformat(
                            timespec="milliseconds"
                        )
                    values[n] = text
            values[_DATE_AT] = values[_DATE_AT].isoformat()
            data.append(
                {
                    "id": str(row[0]),
                    "type": "time_entries",
                    "attributes": dict(zip(ATTRIBUTES, values, strict=True)),
                    "relationships": relationships,
                }
            )
        return orjson.dumps({"data": data, "meta": {}})

    def submit(self, body: bytes) -> dict[str, float]:
        """Parse the body and store it as one bytea row (and, for reference, as jsonb)."""
        with without_gc():
            return self._submit(body)

    def _submit(self, body: bytes) -> dict[str, float]:
        started = time.perf_counter()
        orjson.loads(body)
        with self.conn.cursor() as cur:
            cur.execute(f"INSERT INTO {SUBMISSIONS} (body) VALUES (%s::jsonb)", (body.decode(),))
        self.conn.commit()
        jsonb = time.perf_counter() - started

        started = time.perf_counter()
        orjson.loads(body)
        with self.conn.cursor() as cur:
            cur.execute(f"INSERT INTO {RAW_SUBMISSIONS} (body) VALUES (%b)", (body,))
        self.conn.commit()
        raw = time.perf_counter() - started
        return {"jsonb": jsonb, "bytea": raw}


class SmallFloor:
    """The small-job floor: the same create applied synchronously in one transaction, through
    the domain code (load the context, decode, create, render, commit), in this process. What
    a job of a few entries costs with no queue, worker, job row or notification around it."""

    def __init__(self, sqlalchemy_url: str, organization_id: int, caller_id: int) -> None:
        self.engine = create_engine(sqlalchemy_url, pool_size=1)
        event.listen(self.engine, "connect", speak_utc)
        self.organization_id = organization_id
        self.caller_id = caller_id

    def close(self) -> None:
        self.engine.dispose()

    def create(self, body: bytes) -> tuple[float, bytes]:
        """Seconds the create took, and its payload."""
        started = time.perf_counter()
        with Session(self.engine) as session, session.begin():
            ctx = load_context(session, self.organization_id, self.caller_id, {})
            result = BatchResult(session, ctx)
            batch = documents.Batch(Operation.CREATE, body)
            create_entries(session, ctx, batch, lambda processed: None, result)
            payload = result.finish()
        return time.perf_counter() - started, payload
