"""Bulk documents decoded as the API checks them and as the worker applies them."""

from __future__ import annotations

import datetime as dt
from typing import Any

import orjson
import pytest

from shared.domain.documents import CHUNK, Batch, NotWellFormed, decode
from shared.domain.limits import MAX_DATE, MAX_ID, MAX_MINUTES, MAX_NOTE, MIN_DATE
from shared.store.models import Operation
from tests.applying import decoded_items
from tests.factories import create_resource, reference

REFERENCE_OPERATIONS = [Operation.DELETE, Operation.APPROVE, Operation.UNAPPROVE]
ID_OPERATIONS = [Operation.UPDATE, *REFERENCE_OPERATIONS]


def body(data: Any, **members: Any) -> bytes:
    return orjson.dumps({"data": data, **members})


@pytest.mark.parametrize(
    ("operation", "data"),
    [
        (Operation.CREATE, [create_resource()]),
        (Operation.UPDATE, [{"type": "time_entries", "id": "223"}]),
        (Operation.DELETE, [reference(231)]),
        (Operation.APPROVE, [reference(237)]),
        (Operation.UNAPPROVE, [reference(249)]),
    ],
)
def test_a_valid_body_of_each_operation_decodes(
    operation: Operation, data: list[dict[str, Any]]
) -> None:
    document: Any = decode(
        operation, body(data, meta={"source": "import"}, jsonapi={"version": "1.0"})
    )
    assert len(document.data) == 1
    assert orjson.loads(bytes(document.data[0])) == data[0]
    assert document.meta == {"source": "import"}


def test_a_large_batch_comes_in_chunks_and_a_problem_says_where_in_the_whole_batch() -> None:
    resources = [create_resource(note=str(n)) for n in range(CHUNK * 2 + 1)]
    found = list(Batch(Operation.CREATE, body(resources)))
    assert [len(chunk) for chunk in found] == [CHUNK, CHUNK, 1]
    assert [item["note"] for chunk in found for item in chunk] == [
        str(n) for n in range(len(resources))
    ]

    resources[CHUNK + 7]["attributes"]["time"] = "60"
    with pytest.raises(NotWellFormed, match=rf"\$\.data\[{CHUNK + 7}\]\.attributes\.time"):
        decode(Operation.CREATE, body(resources))


@pytest.mark.parametrize("operation", ID_OPERATIONS)
def test_the_ids_of_a_batch_come_in_batch_order_across_chunks(operation: Operation) -> None:
    named = [CHUNK + 5, 3, *range(CHUNK + 6, 2 * CHUNK + 6)]
    assert Batch(operation, body([reference(str(n)) for n in named])).ids() == named


def test_an_update_s_ids_pass_reads_the_ids_and_its_items_pass_checks_the_rest() -> None:
    resources: list[dict[str, Any]] = [reference(n) for n in range(1, CHUNK + 3)]
    resources[CHUNK + 1]["attributes"] = {"time": -1}
    batch = Batch(Operation.UPDATE, body(resources))
    assert batch.ids() == list(range(1, CHUNK + 3))
    with pytest.raises(NotWellFormed, match=rf"\$\.data\[{CHUNK + 1}\]\.attributes\.time"):
        list(batch)
    # An id no entry can have is refused by either pass.
    resources[CHUNK + 1] = reference(0)
    with pytest.raises(NotWellFormed, match=rf"\$\.data\[{CHUNK + 1}\]\.id"):
        Batch(Operation.UPDATE, body(resources)).ids()


@pytest.mark.parametrize("operation", ID_OPERATIONS)
def test_an_id_named_again_in_a_later_chunk_is_not_well_formed(operation: Operation) -> None:
    references = [reference(n) for n in range(1, CHUNK + 2)]
    decode(operation, body(references))
    with pytest.raises(NotWellFormed, match="duplicate"):
        decode(operation, body([*references, reference(str(CHUNK))]))


def test_approve_takes_for_all_approvers_and_the_others_do_not() -> None:
    data = [reference(237)]
    assert decode(Operation.APPROVE, body(data, for_all_approvers=True)).for_all_approvers is True
    for operation in (Operation.DELETE, Operation.UNAPPROVE):
        with pytest.raises(NotWellFormed):
            decode(operation, body(data, for_all_approvers=True))


def linked(resource: dict[str, Any], **relationships: Any) -> dict[str, Any]:
    """The resource with these relationships' linkage data, as (type, id) or None."""
    links = {
        name: {"data": None if value is None else {"type": value[0], "id": value[1]}}
        for name, value in relationships.items()
    }
    return resource | {"relationships": resource["relationships"] | links}


def test_create_items_flatten_relationships_to_columns() -> None:
    document = body(
        [
            create_resource(),
            linked(
                create_resource(date="2026-02-28", time=0, note="n"),
                person=("people", 7782),
                service=("services", "01214"),
                task=("tasks", "303"),
            ),
            linked(create_resource(note=None), task=None),
        ]
    )
    decoded = decoded_items(Operation.CREATE, document)
    assert decoded == [
        {"date": "2026-01-02", "time": 60, "person_id": 7781, "service_id": 1213},
        {
            "date": "2026-02-28",
            "time": 0,
            "note": "n",
            "person_id": 7782,
            "service_id": 1214,
            "task_id": 303,
        },
        {
            "date": "2026-01-02",
            "time": 60,
            "note": None,
            "person_id": 7781,
            "service_id": 1213,
            "task_id": None,
        },
    ]
    # Attributes in the order of the writable ones, then the references' columns.
    assert list(decoded[1]) == ["date", "time", "note", "person_id", "service_id", "task_id"]


def test_update_items_hold_the_id_and_only_what_was_sent() -> None:
    document = body(
        [
            {"type": "time_entries", "id": "223", "attributes": {"note": "changed"}},
            {"type": "time_entries", "id": 224, "attributes": {"date": "2026-03-01", "time": 5}},
            {
                "type": "time_entries",
                "id": "0225",
                "relationships": {
                    "service": {"data": {"type": "services", "id": "1214"}},
                    "task": {"data": None},
                },
            },
            {"type": "time_entries", "id": "226", "attributes": {}, "relationships": {}},
        ]
    )
    assert decoded_items(Operation.UPDATE, document) == [
        {"id": 223, "note": "changed"},
        {"id": 224, "date": "2026-03-01", "time": 5},
        {"id": 225, "service_id": 1214, "task_id": None},
        {"id": 226},
    ]


@pytest.mark.parametrize("operation", REFERENCE_OPERATIONS)
def test_reference_items_are_ids(operation: Operation) -> None:
    document = body([reference(231), {"type": "time_entries", "id": 232}, reference("0233")])
    assert decoded_items(operation, document) == [{"id": 231}, {"id": 232}, {"id": 233}]


@pytest.mark.parametrize("operation", ID_OPERATIONS)
def test_an_id_named_twice_is_not_well_formed(operation: Operation) -> None:
    # "231" and 231 and "0231" are the same entry.
    for second in (231, "231", "0231"):
        with pytest.raises(NotWellFormed, match="duplicate ids"):
            decode(operation, body([reference(231), {"type": "time_entries", "id": second}]))
    assert len(decode(operation, body([reference(231), reference(232)])).data) == 2


def test_create_dates_are_checked_against_the_range() -> None:
    day = dt.timedelta(days=1)
    for inside in (MIN_DATE, MAX_DATE):
        decode(Operation.CREATE, body([create_resource(date=inside.isoformat())]))
    for outside in (MIN_DATE - day, MAX_DATE + day):
        document = body([create_resource(), create_resource(date=outside.isoformat())])
        with pytest.raises(NotWellFormed, match="date out of range"):
            decode(Operation.CREATE, document)


def test_update_dates_are_checked_against_the_range() -> None:
    def update(date: dt.date) -> bytes:
        return body([{"type": "time_entries", "id": 1, "attributes": {"date": date.isoformat()}}])

    day = dt.timedelta(days=1)
    for inside in (MIN_DATE, MAX_DATE):
        decode(Operation.UPDATE, update(inside))
    for outside in (MIN_DATE - day, MAX_DATE + day):
        with pytest.raises(NotWellFormed, match="date out of range"):
            decode(Operation.UPDATE, update(outside))


def test_a_date_that_is_not_on_the_calendar_is_not_well_formed() -> None:
    for date in ("2026-02-29", "2026-13-01", "02.01.2026", "2026-01-02T00:00:00"):
        with pytest.raises(NotWellFormed):
            decode(Operation.CREATE, body([create_resource(date=date)]))


def with_member(resource: dict[str, Any], path: tuple[str, ...], name: str) -> dict[str, Any]:
    """The resource with one more member `name` in the object at `path`."""
    copy = orjson.loads(orjson.dumps(resource))
    target = copy
    for key in path:
        target = target[key]
    target[name] = 1
    return copy  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("path", "name"),
    [
        ((), "lid"),
        (("attributes",), "cost"),  # read-only attributes are unknown to a write
        (("attributes",), "approved"),
        (("relationships",), "approver"),
        (("relationships", "person"), "links_to"),
        (("relationships", "person", "data"), "lid"),
    ],
)
def test_unknown_members_of_a_resource_are_not_well_formed(
    path: tuple[str, ...], name: str
) -> None:
    decode(Operation.CREATE, body([create_resource()]))
    with pytest.raises(NotWellFormed):
        decode(Operation.CREATE, body([with_member(create_resource(), path, name)]))


@pytest.mark.parametrize("operation", list(Operation))
def test_an_unknown_top_level_member_is_not_well_formed(operation: Operation) -> None:
    resource = create_resource() if operation == Operation.CREATE else reference(231)
    with pytest.raises(NotWellFormed):
        decode(operation, body([resource], included=[]))


@pytest.mark.parametrize("operation", list(Operation))
def test_empty_or_missing_data_is_not_well_formed(operation: Operation) -> None:
    for document in (body([]), b"{}", body(None), body({})):
        with pytest.raises(NotWellFormed):
            decode(operation, document)


@pytest.mark.parametrize(
    "raw", [b"", b"not json", b'{"data": [', b"[]", b'"data"', b'{"data": [1]}']
)
def test_bodies_that_are_not_a_document_are_not_well_formed(raw: bytes) -> None:
    with pytest.raises(NotWellFormed):
        decoded_items(Operation.DELETE, raw)


@pytest.mark.parametrize(
    "attributes",
    [
        {"time": MAX_MINUTES + 1},
        {"time": -1},
        {"time": "60"},
        {"time": 1.5},
        {"note": "a\x00b"},
        {"note": "n" * (MAX_NOTE + 1)},
        {"date": None},
    ],
)
def test_attribute_values_out_of_bounds_are_not_well_formed(attributes: dict[str, Any]) -> None:
    with pytest.raises(NotWellFormed):
        decode(Operation.CREATE, body([create_resource(**attributes)]))


def test_attribute_values_at_the_bounds_decode() -> None:
    document = body([create_resource(time=MAX_MINUTES, note="n" * MAX_NOTE)])
    (item,) = decoded_items(Operation.CREATE, document)
    assert (item["time"], len(item["note"])) == (MAX_MINUTES, MAX_NOTE)


@pytest.mark.parametrize(
    "bad", [0, -1, MAX_ID + 1, "0", "", "12a", "1" * 20, str(MAX_ID + 1), 1.5, 0.0, 2.0**63, None]
)
def test_ids_that_are_not_bigint_ids_are_not_well_formed(bad: Any) -> None:
    with pytest.raises(NotWellFormed):
        decode(Operation.DELETE, body([{"type": "time_entries", "id": bad}]))
    assert decoded_items(Operation.DELETE, body([reference(MAX_ID)])) == [{"id": MAX_ID}]


def test_whole_numbers_are_ids_and_minutes_in_either_spelling() -> None:
    """JSON Schema, which the OpenAPI document is written in, calls 7.0 an integer."""
    document = body([{"type": "time_entries", "id": n} for n in (7.0, 2.0**62)])
    assert decoded_items(Operation.DELETE, document) == [{"id": 7}, {"id": 2**62}]
    # More digits than int() takes from a string.
    leading_zeros = body([reference("0" * 5000 + str(MAX_ID))])
    assert decoded_items(Operation.DELETE, leading_zeros) == [{"id": MAX_ID}]
    linked_floats = linked(create_resource(time=60.0), person=("people", 7781.0))
    (item,) = decoded_items(Operation.CREATE, body([linked_floats]))
    assert (item["time"], item["person_id"]) == (60, 7781)
    assert type(item["time"]) is int


def test_a_resource_of_another_type_is_not_well_formed() -> None:
    with pytest.raises(NotWellFormed):
        decode(Operation.DELETE, body([{"type": "people", "id": "7781"}]))
    for wrong in (
        linked(create_resource(), person=("services", "7781")),
        linked(create_resource(), task=("services", "302")),
    ):
        with pytest.raises(NotWellFormed):
            decode(Operation.CREATE, body([wrong]))


def test_create_needs_a_date_a_person_and_a_service() -> None:
    no_date = create_resource()
    del no_date["attributes"]["date"]
    no_service = create_resource()
    del no_service["relationships"]["service"]
    null_person = create_resource()
    null_person["relationships"]["person"]["data"] = None
    for resource in (no_date, no_service, null_person):
        with pytest.raises(NotWellFormed):
            decode(Operation.CREATE, body([resource]))
