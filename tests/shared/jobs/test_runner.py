"""run_job itself, on the committed database: it opens its own sessions and connections.

Each test gets fresh, committed demo data (`e2e_db`); a job is stored the way the API
stores one and then run as a worker would run it.
"""

from __future__ import annotations

import gzip
import uuid
from typing import Any

import orjson
import pytest
from sqlalchemy import Engine, func, select, text, update
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session

from shared.domain import entries as domain_entries
from shared.domain.documents import CHUNK
from shared.domain.tokens import Principal
from shared.jobs import runner
from shared.jobs.runner import Heartbeats, Outcome, ProgressReporter, lock_key, run_job
from shared.jsonapi.render import NOT_INCLUDED, RELATIONSHIPS
from shared.store.models import Job, Operation, TimeEntry
from tests.checked_client import check_document
from tests.factories import create_resource, queue_job, reference
from tests.jobclient import eventually

MEMBER = Principal(person_id=7781, organization_id=2110, read_only=False)
MAX_RUNS = 3


def queued(
    engine: Engine,
    operation: str,
    data: list[dict[str, Any]],
    *,
    principal: Principal = MEMBER,
    options: dict[str, Any] | None = None,
) -> uuid.UUID:
    with Session(engine) as session:
        job = queue_job(session, principal, operation, data, options=options)
        session.commit()
        return job.id


def job_row(engine: Engine, job_id: uuid.UUID) -> dict[str, Any]:
    """Every column of the job as stored."""
    with Session(engine) as session:
        job = session.get_one(Job, job_id)
        return {column.key: getattr(job, column.key) for column in Job.__table__.columns}


def stored_document(job: dict[str, Any]) -> Any:
    assert job["result_body"] is not None
    return orjson.loads(gzip.decompress(job["result_body"]))


def entries(engine: Engine) -> dict[int, tuple[Any, ...]]:
    """Every entry, as what a job could change."""
    with Session(engine) as session:
        rows = session.execute(
            select(TimeEntry.id, TimeEntry.note, TimeEntry.time, TimeEntry.service_id)
        )
        return {row.id: tuple(row) for row in rows}


def approved_entries(engine: Engine) -> set[int]:
    with Session(engine) as session:
        return set(session.scalars(select(TimeEntry.id).where(TimeEntry.approved.is_(True))))


def run(engine: Engine, job_id: uuid.UUID) -> Outcome:
    return run_job(engine, job_id, max_runs=MAX_RUNS, lease=2).outcome


def test_a_second_run_is_skipped_and_the_effect_happens_once(e2e_db: Engine) -> None:
    before = entries(e2e_db)
    job_id = queued(e2e_db, "create", [create_resource(note="a"), create_resource(note="b")])

    assert run(e2e_db, job_id) == Outcome.SUCCEEDED
    first = job_row(e2e_db, job_id)
    assert run(e2e_db, job_id) == Outcome.SKIPPED
    second = job_row(e2e_db, job_id)

    assert second == first  # the second run changed nothing, not even a timestamp
    assert (second["status"], second["attempts"], second["result_status"]) == ("succeeded", 1, 201)
    assert (second["processed"], second["error_count"]) == (2, 0)
    assert second["heartbeat_at"] is None
    after = entries(e2e_db)
    created = sorted(set(after) - set(before))
    assert len(after) == len(before) + 2
    document = stored_document(second)
    assert list(document) == ["data", "meta"]  # the spec's shape: nothing was asked to include
    assert [entry["id"] for entry in document["data"]] == [str(i) for i in created]
    assert [entry["attributes"]["note"] for entry in document["data"]] == ["a", "b"]


@pytest.mark.parametrize(
    ("operation", "person", "data"),
    [
        ("create", 7781, [create_resource() | {"relationships": create_resource()["relationships"] | {"task": {"data": {"type": "tasks", "id": "302"}}}}, create_resource()]),
        ("update", 7781, [{"type": "time_entries", "id": "223", "attributes": {"note": "x"}}, reference(224)]),
        ("approve", 7782, [reference(223), reference(224)]),
        ("unapprove", 7783, [reference(249), reference(250)]),
    ],
)  # fmt: skip
def test_a_job_asked_to_include_stores_linkage_and_included(
    e2e_db: Engine, operation: str, person: int, data: list[dict[str, Any]]
) -> None:
    principal = Principal(person_id=person, organization_id=2110, read_only=False)
    options = {"include": ["person", "service", "task"]}
    job_id = queued(e2e_db, operation, data, principal=principal, options=options)

    assert run(e2e_db, job_id) == Outcome.SUCCEEDED

    document = stored_document(job_row(e2e_db, job_id))
    check_document(document, 200)
    assert list(document) == ["data", "included", "meta"]
    people, services, tasks = (
        {"data": {"type": "people", "id": "7781"}},
        {"data": {"type": "services", "id": "1213"}},
        {"data": {"type": "tasks", "id": "302"}},
    )
    # A created entry without a task links to none; the demo entries all have task 302.
    expected_tasks = [tasks, {"data": None}] if operation == "create" else [tasks, tasks]
    for entry, task in zip(document["data"], expected_tasks, strict=True):
        relationships = entry["relationships"]
        assert list(relationships) == list(RELATIONSHIPS)
        assert (relationships["person"], relationships["service"]) == (people, services)
        assert relationships["task"] == task
        assert relationships["approver"] == NOT_INCLUDED
    assert [(r["type"], r["id"]) for r in document["included"]] == [
        ("people", "7781"),
        ("services", "1213"),
        ("tasks", "302"),
    ]
    assert document["included"][0]["attributes"]["first_name"] == "Max"
    assert document["included"][2]["attributes"]["title"] == "Wireframes"


def test_a_job_locked_by_another_delivery_is_busy_and_left_alone(e2e_db: Engine) -> None:
    before = entries(e2e_db)
    job_id = queued(e2e_db, "delete", [reference(231)])
    stored = job_row(e2e_db, job_id)
    with e2e_db.connect() as holder:
        holder.execute(text("SELECT pg_advisory_lock(:key)"), {"key": lock_key(job_id)})
        holder.commit()
        try:
            assert run(e2e_db, job_id) == Outcome.BUSY
            assert job_row(e2e_db, job_id) == stored
            assert entries(e2e_db) == before
        finally:
            holder.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": lock_key(job_id)})
            holder.commit()
    # The lock was all that stood in the way.
    assert run(e2e_db, job_id) == Outcome.SUCCEEDED
    assert 231 not in entries(e2e_db)


@pytest.mark.parametrize("status", ["queued", "running"])
def test_a_job_out_of_runs_is_abandoned_with_a_clear_error(e2e_db: Engine, status: str) -> None:
    before = entries(e2e_db)
    job_id = queued(e2e_db, "create", [create_resource(), create_resource()])
    with e2e_db.begin() as connection:
        # As if every earlier attempt had died mid-job.
        connection.execute(
            update(Job).where(Job.id == job_id).values(status=status, attempts=MAX_RUNS)
        )

    assert run(e2e_db, job_id) == Outcome.FAILED

    job = job_row(e2e_db, job_id)
    assert (job["status"], job["result_status"], job["error_count"]) == ("failed", 500, 1)
    assert job["attempts"] == MAX_RUNS + 1
    assert job["finished_at"] is not None and job["heartbeat_at"] is None
    assert stored_document(job) == {
        "errors": [
            {
                "status": "500",
                "title": "Job abandoned",
                "detail": f"the job did not complete in {MAX_RUNS} attempts and was given up",
            }
        ],
        "jsonapi": {"version": "1.0"},
    }
    assert entries(e2e_db) == before
    assert run(e2e_db, job_id) == Outcome.SKIPPED


def test_the_last_allowed_attempt_still_runs(e2e_db: Engine) -> None:
    job_id = queued(e2e_db, "delete", [reference(231)])
    with e2e_db.begin() as connection:
        connection.execute(
            update(Job).where(Job.id == job_id).values(status="running", attempts=MAX_RUNS - 1)
        )
    assert run(e2e_db, job_id) == Outcome.SUCCEEDED
    job = job_row(e2e_db, job_id)
    assert (job["status"], job["attempts"], job["result_status"]) == (
        "succeeded",
        MAX_RUNS,
        204,
    )
    assert job["result_body"] is None
    assert 231 not in entries(e2e_db)


def test_a_domain_error_fails_the_job_and_applies_nothing(e2e_db: Engine) -> None:
    before = entries(e2e_db)
    data = [create_resource(note="fine"), create_resource(note="bad"), create_resource()]
    data[1]["relationships"]["service"]["data"]["id"] = "999999"
    job_id = queued(e2e_db, "create", data)

    assert run(e2e_db, job_id) == Outcome.FAILED

    job = job_row(e2e_db, job_id)
    assert (job["status"], job["result_status"], job["error_count"]) == ("failed", 404, 1)
    (error,) = stored_document(job)["errors"]
    assert (error["status"], error["source"]) == (
        "404",
        {"pointer": "/data/1/relationships/service"},
    )
    assert entries(e2e_db) == before
    assert run(e2e_db, job_id) == Outcome.SKIPPED


def test_a_problem_in_a_later_chunk_undoes_the_chunks_written_before_it(e2e_db: Engine) -> None:
    before = entries(e2e_db)
    data = [create_resource(note=str(n)) for n in range(2 * CHUNK + 5)]
    late = 2 * CHUNK + 3
    data[late]["relationships"]["service"]["data"]["id"] = "999999"
    job_id = queued(e2e_db, "create", data)

    assert run(e2e_db, job_id) == Outcome.FAILED

    (error,) = stored_document(job_row(e2e_db, job_id))["errors"]
    assert error["source"] == {"pointer": f"/data/{late}/relationships/service"}
    assert entries(e2e_db) == before


def test_a_batch_of_several_chunks_answers_every_entry_in_order_with_what_it_includes(
    e2e_db: Engine,
) -> None:
    data = [create_resource(note=str(n)) for n in range(CHUNK + 2)]
    # Only the last chunk names this person: it must be linked and included all the same.
    data[-1]["relationships"]["person"]["data"]["id"] = "7782"
    options = {"include": ["person"]}
    principal = Principal(person_id=7782, organization_id=2110, read_only=False)
    job_id = queued(e2e_db, "create", data, principal=principal, options=options)

    assert run(e2e_db, job_id) == Outcome.SUCCEEDED

    document = stored_document(job_row(e2e_db, job_id))
    assert [entry["attributes"]["note"] for entry in document["data"]] == [
        str(n) for n in range(len(data))
    ]
    assert document["data"][-1]["relationships"]["person"] == {
        "data": {"type": "people", "id": "7782"}
    }
    assert [(r["type"], r["id"]) for r in document["included"]] == [
        ("people", "7781"),
        ("people", "7782"),
    ]
    with Session(e2e_db) as session:
        ids = [int(entry["id"]) for entry in document["data"]]
        assert session.scalar(select(func.count()).where(TimeEntry.id.in_(ids))) == len(data)


ADMIN = Principal(person_id=7783, organization_id=2110, read_only=False)


def created(engine: Engine, count: int) -> list[str]:
    """The ids of `count` new entries, noted with their place."""
    job_id = queued(engine, "create", [create_resource(note=str(n)) for n in range(count)])
    assert run(engine, job_id) == Outcome.SUCCEEDED
    return [entry["id"] for entry in stored_document(job_row(engine, job_id))["data"]]


def test_an_update_of_several_steps_links_and_includes_what_each_step_names(
    e2e_db: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each chunk a step of its own: written, and rendered while its UPDATE runs.
    monkeypatch.setattr(domain_entries._Updates, "ROWS", CHUNK)
    ids = created(e2e_db, CHUNK + 2)
    data: list[dict[str, Any]] = [
        {"type": "time_entries", "id": id_, "attributes": {"note": f"u{id_}"}} for id_ in ids
    ]
    # Only the last step names this person: it must be linked and included all the same.
    data[-1]["relationships"] = {"person": {"data": {"type": "people", "id": "7782"}}}
    principal = Principal(person_id=7782, organization_id=2110, read_only=False)
    options = {"include": ["person"]}
    job_id = queued(e2e_db, "update", data, principal=principal, options=options)

    assert run(e2e_db, job_id) == Outcome.SUCCEEDED

    document = stored_document(job_row(e2e_db, job_id))
    assert [(e["id"], e["attributes"]["note"]) for e in document["data"]] == [
        (id_, f"u{id_}") for id_ in ids
    ]
    assert [e["relationships"]["person"]["data"]["id"] for e in document["data"]] == [
        *["7781"] * (len(ids) - 1),
        "7782",
    ]
    assert [(r["type"], r["id"]) for r in document["included"]] == [
        ("people", "7781"),
        ("people", "7782"),
    ]
    with Session(e2e_db) as session:
        stored = session.execute(
            select(TimeEntry.id, TimeEntry.note, TimeEntry.person_id).where(
                TimeEntry.id.in_(map(int, ids))
            )
        )
        assert sorted(stored) == sorted(
            (int(id_), f"u{id_}", 7782 if id_ == ids[-1] else 7781) for id_ in ids
        )


def answered(engine: Engine, job_id: uuid.UUID) -> list[dict[str, Any]]:
    assert run(engine, job_id) == Outcome.SUCCEEDED
    return stored_document(job_row(engine, job_id))["data"]


def test_a_batch_naming_several_chunks_of_entries_writes_and_answers_all_in_order(
    e2e_db: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The update's scratch rows go in by more than one COPY.
    monkeypatch.setattr(domain_entries._Updates, "ROWS", CHUNK)
    # Reversed: each chunk's entries are read by id, the answer keeps the batch's order.
    ids = created(e2e_db, CHUNK + 2)[::-1]
    update_doc = [
        {"type": "time_entries", "id": id_, "attributes": {"note": f"u{id_}"}} for id_ in ids
    ]
    data = answered(e2e_db, queued(e2e_db, "update", update_doc))
    assert [(e["id"], e["attributes"]["note"]) for e in data] == [(i, f"u{i}") for i in ids]

    data = answered(e2e_db, queued(e2e_db, "approve", [reference(i) for i in ids], principal=ADMIN))
    assert [(e["id"], e["attributes"]["approved"]) for e in data] == [(i, True) for i in ids]
    with Session(e2e_db) as session:
        stored = session.execute(
            select(TimeEntry.note, TimeEntry.approved).where(TimeEntry.id.in_(map(int, ids)))
        ).all()
    assert sorted(stored) == sorted((f"u{i}", True) for i in ids)

    unapprove_doc = [reference(i) for i in ids]
    data = answered(e2e_db, queued(e2e_db, "unapprove", unapprove_doc, principal=ADMIN))
    assert [(e["id"], e["attributes"]["approved"]) for e in data] == [(i, False) for i in ids]

    assert run(e2e_db, queued(e2e_db, "delete", [reference(i) for i in ids])) == Outcome.SUCCEEDED
    with Session(e2e_db) as session:
        left = session.scalar(select(func.count()).where(TimeEntry.id.in_(map(int, ids))))
    assert left == 0


@pytest.mark.parametrize("operation", ["update", "approve", "unapprove", "delete"])
def test_a_missing_entry_in_a_later_chunk_undoes_the_chunks_before_it(
    e2e_db: Engine, operation: str
) -> None:
    ids = created(e2e_db, CHUNK + 2)
    before = entries(e2e_db), approved_entries(e2e_db)
    late = CHUNK + 1
    ids[late] = "424242"
    data = [
        {"type": "time_entries", "id": id_, "attributes": {"note": "changed"}}
        if operation == "update"
        else reference(id_)
        for id_ in ids
    ]
    principal = MEMBER if operation in ("update", "delete") else ADMIN
    job_id = queued(e2e_db, operation, data, principal=principal)

    assert run(e2e_db, job_id) == Outcome.FAILED

    (error,) = stored_document(job_row(e2e_db, job_id))["errors"]
    assert (error["status"], error["source"]) == ("404", {"pointer": f"/data/{late}/id"})
    assert (entries(e2e_db), approved_entries(e2e_db)) == before


def test_a_refused_update_changes_none_of_the_batch(e2e_db: Engine) -> None:
    before = entries(e2e_db)
    update_doc = [
        {"type": "time_entries", "id": "223", "attributes": {"note": "changed", "time": 1}},
        {"type": "time_entries", "id": "249", "attributes": {"note": "approved already"}},
    ]
    job_id = queued(e2e_db, "update", update_doc)

    assert run(e2e_db, job_id) == Outcome.FAILED

    job = job_row(e2e_db, job_id)
    assert (job["status"], job["result_status"]) == ("failed", 409)
    (error,) = stored_document(job)["errors"]
    assert error["source"] == {"pointer": "/data/1/id"} and "unapprove first" in error["detail"]
    assert entries(e2e_db) == before


def test_a_canceled_or_unknown_job_is_skipped(e2e_db: Engine) -> None:
    job_id = queued(e2e_db, "delete", [reference(231)])
    with e2e_db.begin() as connection:
        connection.execute(
            update(Job).where(Job.id == job_id).values(status="canceled", finished_at=func.now())
        )
    stored = job_row(e2e_db, job_id)
    assert run(e2e_db, job_id) == Outcome.SKIPPED
    assert job_row(e2e_db, job_id) == stored
    assert 231 in entries(e2e_db)
    assert run(e2e_db, uuid.uuid4()) == Outcome.SKIPPED


def test_progress_is_written_while_entries_remain_and_left_to_the_end_once_all_are(
    e2e_db: Engine,
) -> None:
    job_id = queued(e2e_db, "create", [create_resource()] * 3)
    with e2e_db.begin() as connection:
        connection.execute(update(Job).where(Job.id == job_id).values(status="running"))
    report = ProgressReporter(e2e_db, job_id, total=3, min_interval=0)

    report(2)
    assert job_row(e2e_db, job_id)["processed"] == 2
    # All written: the job's own end says so, in its transaction; no write of its own.
    report(3)
    assert job_row(e2e_db, job_id)["processed"] == 2


def test_heartbeats_renew_each_running_job_until_it_ends_from_one_thread(e2e_db: Engine) -> None:
    jobs = [queued(e2e_db, "create", [create_resource()]) for _ in range(2)]
    with Session(e2e_db) as session:
        session.execute(
            update(Job).where(Job.id.in_(jobs)).values(status="running", heartbeat_at=None)
        )
        session.commit()

    def beats() -> list[Any]:
        return [job_row(e2e_db, job_id)["heartbeat_at"] for job_id in jobs]

    heartbeats = Heartbeats()

    def beats_on(times: int) -> None:
        for _ in range(times):
            last = beats()[0]
            eventually(lambda last=last: beats()[0] > last, timeout=10, what="a beat")

    with heartbeats.beating(e2e_db, jobs[0], 0.05):
        with heartbeats.beating(e2e_db, jobs[1], 0.05):
            eventually(lambda: None not in beats(), timeout=10, what="a beat of each job")
        # Two beats on, the round that may have beaten the ended job too is over.
        beats_on(2)
        ended = beats()[1]
        # The job still running beats on; the one that ended no longer does.
        beats_on(2)
        assert beats()[1] == ended
    assert heartbeats._thread is not None and heartbeats._thread.is_alive()


def lock_is_free(engine: Engine, job_id: uuid.UUID) -> bool:
    """Whether another delivery of the job could take its lock now."""
    with engine.connect() as other:
        taken = other.scalar(text("SELECT pg_try_advisory_lock(:key)"), {"key": lock_key(job_id)})
        if taken:
            other.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": lock_key(job_id)})
        other.commit()
    return bool(taken)


def test_every_end_of_a_run_gives_the_job_lock_back(
    e2e_db: Engine, one_connection: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One connection in the pool: each run after the first gets back the connection that
    # held the lock, and a lock it kept would make it a second holder, not a free job.
    engine = one_connection
    succeeded = queued(engine, "create", [create_resource()])
    assert run(engine, succeeded) == Outcome.SUCCEEDED
    assert lock_is_free(e2e_db, succeeded)
    assert run(engine, succeeded) == Outcome.SKIPPED
    assert lock_is_free(e2e_db, succeeded)

    refused = queued(engine, "delete", [reference(999999)])
    assert run(engine, refused) == Outcome.FAILED
    assert lock_is_free(e2e_db, refused)

    def broken(*args: Any) -> None:
        raise RuntimeError("a bug")

    raised = queued(engine, "delete", [reference(231)])
    monkeypatch.setitem(runner.APPLY, Operation.DELETE, (broken, 204))
    with pytest.raises(RuntimeError):
        run(engine, raised)
    assert lock_is_free(e2e_db, raised)
    assert job_row(engine, raised)["status"] == "running"
    monkeypatch.undo()
    assert run(engine, raised) == Outcome.SUCCEEDED


def test_a_run_whose_connection_dies_leaves_the_job_to_the_next_run(
    e2e_db: Engine, one_connection: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    job_id = queued(one_connection, "delete", [reference(231)])
    status = runner.APPLY[Operation.DELETE][1]

    def terminated(session: Session, *args: Any) -> None:
        session.execute(text("SELECT pg_terminate_backend(pg_backend_pid())"))

    monkeypatch.setitem(runner.APPLY, Operation.DELETE, (terminated, status))
    with pytest.raises(DBAPIError):
        run(one_connection, job_id)
    # The server let the lock go with the connection, and the pool dropped that one.
    assert lock_is_free(e2e_db, job_id)
    monkeypatch.undo()
    assert run(one_connection, job_id) == Outcome.SUCCEEDED
    assert 231 not in entries(e2e_db)


def test_a_claim_that_fails_once_it_holds_the_lock_leaves_no_lock_behind(
    e2e_db: Engine, one_connection: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    job_id = queued(one_connection, "delete", [reference(231)])
    claim = runner._CLAIM

    def failing(connection: Any, **params: Any) -> Any:
        claim(connection, **params)
        raise OperationalError("SELECT", {}, Exception("the claim failed after the lock"))

    monkeypatch.setattr(runner, "_CLAIM", failing)
    with pytest.raises(OperationalError):
        run(one_connection, job_id)
    # The connection that may hold it is gone: another delivery takes the job.
    assert lock_is_free(e2e_db, job_id)
    monkeypatch.undo()
    assert run(one_connection, job_id) == Outcome.SUCCEEDED
