"""Reading time entries, people, services and tasks: filters, sort, pages, includes, 404s."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import Connection, event, text
from sqlalchemy.orm import Session
from werkzeug.test import TestResponse

from shared.jsonapi.render import RELATIONSHIPS
from shared.store.columns import ATTRIBUTES
from tests.factories import Factories

NOT_INCLUDED = {"meta": {"included": False}}
DAY = dt.date(2024, 3, 1)


def get(client: FlaskClient, headers: dict[str, str], path: str, **params: str) -> TestResponse:
    return client.get(f"/api/v2/{path}", query_string=params, headers=headers)


def listing(
    client: FlaskClient, headers: dict[str, str], path: str, params: dict[str, str]
) -> TestResponse:
    return client.get(f"/api/v2/{path}", query_string=params, headers=headers)


def ids_of(response: TestResponse) -> list[int]:
    assert response.status_code == 200, response.json
    return [int(resource["id"]) for resource in response.json["data"]]


def bad_parameter(response: TestResponse) -> str:
    assert response.status_code == 400, response.json
    (error,) = response.json["errors"]
    assert error["status"] == "400"
    return str(error["source"]["parameter"])


@dataclass
class World:
    """An organization of its own, so counts and orders are exactly what a test made."""

    organization_id: int
    headers: dict[str, str]
    people: tuple[int, int]
    services: tuple[int, int]
    tasks: tuple[int, int]
    entries: dict[str, int]


@pytest.fixture
def world(factories: Factories, auth: Any) -> World:
    org = factories.organization(time_zone="America/New_York")
    ann = factories.person(org.id, first_name="Ann")
    bob = factories.person(org.id, first_name="Bob", manager_id=ann.id)
    design = factories.service(org.id, name="Design")
    internal = factories.service(org.id, name="Internal", billable=False)
    sketch = factories.task(design, title="Sketch")
    admin = factories.task(internal, title="Admin")
    at = dt.datetime(2024, 3, 20, 12, tzinfo=dt.UTC)
    rows = {
        # name: person, service, task, day offset, approved, invoiced, hours after `at`
        "a1": (ann, design, sketch, 0, True, False, 3),
        "a2": (ann, design, None, 1, False, False, 1),
        "b1": (bob, internal, admin, 1, True, True, 2),
        "b2": (bob, design, sketch, 4, False, False, 1),
        "a3": (ann, internal, None, 9, False, False, 5),
    }
    entries = {}
    for name, (person, service, task, days, approved, invoiced, hours) in rows.items():
        entries[name] = factories.entry(
            organization_id=org.id,
            person_id=person.id,
            service_id=service.id,
            task_id=task.id if task else None,
            date=DAY + dt.timedelta(days=days),
            approved=approved,
            invoiced=invoiced,
            updated_at=at + dt.timedelta(hours=hours),
            note=name,
        ).id
    return World(
        organization_id=org.id,
        headers=auth(ann.id),
        people=(ann.id, bob.id),
        services=(design.id, internal.id),
        tasks=(sketch.id, admin.id),
        entries=entries,
    )


def names(world: World, response: TestResponse) -> list[str]:
    by_id = {v: k for k, v in world.entries.items()}
    return [by_id[i] for i in ids_of(response)]


def entries(client: FlaskClient, world: World, **params: str) -> TestResponse:
    return get(client, world.headers, "time_entries", **params)


def test_entries_render_like_the_bulk_results(client: FlaskClient, auth: Any) -> None:
    response = get(client, auth(7781), "time_entries")
    assert response.status_code == 200
    assert response.content_type == "application/vnd.api+json; charset=utf-8"
    document = response.json
    assert {int(r["id"]) for r in document["data"]} == {223, 224, 231, 232, 237, 238, 249, 250}
    entry = next(r for r in document["data"] if r["id"] == "249")
    assert list(entry) == ["id", "type", "attributes", "relationships"]
    assert entry["type"] == "time_entries"
    assert list(entry["attributes"]) == list(ATTRIBUTES)
    assert list(entry["relationships"]) == list(RELATIONSHIPS)
    assert entry["relationships"]["organization"] == {
        "data": {"type": "organizations", "id": "2110"}
    }
    assert all(entry["relationships"][name] == NOT_INCLUDED for name in RELATIONSHIPS[1:])
    assert "included" not in document
    attributes = entry["attributes"]
    assert attributes["date"] == "2016-10-01"
    assert attributes["time"] == 480
    assert (attributes["cost"], attributes["currency"]) == (16000, "EUR")
    assert (attributes["cost_default"], attributes["currency_default"]) == (20000, "USD")
    assert attributes["approved"] is True
    # Europe/Berlin in October is UTC+2, with milliseconds, as in the spec.
    assert attributes["approved_at"] == "2016-10-03T11:00:00.000+02:00"
    shown = get(client, auth(7781), "time_entries/249")
    assert shown.status_code == 200
    assert shown.json == {"data": entry, "meta": {}}


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({}, ["a3", "b2", "b1", "a2", "a1"]),
        ({"filter[person_id]": "{ann}"}, ["a3", "a2", "a1"]),
        ({"filter[person_id]": "{bob}"}, ["b2", "b1"]),
        ({"filter[person_id]": "{ann},{bob}"}, ["a3", "b2", "b1", "a2", "a1"]),
        ({"filter[service_id]": "{internal}"}, ["a3", "b1"]),
        ({"filter[service_id]": "{design},{internal}"}, ["a3", "b2", "b1", "a2", "a1"]),
        ({"filter[task_id]": "{sketch}"}, ["b2", "a1"]),
        ({"filter[task_id]": "{sketch},{admin}"}, ["b2", "b1", "a1"]),
        ({"filter[date]": "2024-03-02"}, ["b1", "a2"]),
        ({"filter[date]": "2024-02-29"}, []),
        ({"filter[after]": "2024-03-02"}, ["a3", "b2", "b1", "a2"]),
        ({"filter[after]": "2024-03-11"}, []),
        ({"filter[before]": "2024-03-02"}, ["b1", "a2", "a1"]),
        ({"filter[before]": "2024-02-29"}, []),
        ({"filter[after]": "2024-03-02", "filter[before]": "2024-03-05"}, ["b2", "b1", "a2"]),
        ({"filter[after]": "2024-03-05", "filter[before]": "2024-03-02"}, []),
        ({"filter[status]": "approved"}, ["b1", "a1"]),
        ({"filter[status]": "unapproved"}, ["a3", "b2", "a2"]),
        ({"filter[status]": "invoiced"}, ["b1"]),
        ({"filter[status]": "invoiced,unapproved"}, ["a3", "b2", "b1", "a2"]),
        (
            {
                "filter[person_id]": "{ann}",
                "filter[service_id]": "{design}",
                "filter[status]": "unapproved",
            },
            ["a2"],
        ),
        ({"filter[person_id]": "7781"}, []),
    ],
)
def test_entry_filters(
    client: FlaskClient, world: World, params: dict[str, str], expected: list[str]
) -> None:
    values = {
        "ann": world.people[0],
        "bob": world.people[1],
        "design": world.services[0],
        "internal": world.services[1],
        "sketch": world.tasks[0],
        "admin": world.tasks[1],
    }
    query = {key: value.format(**values) for key, value in params.items()}
    response = entries(client, world, **query)
    assert names(world, response) == expected
    assert response.json["meta"]["total_count"] == len(expected)


@pytest.mark.parametrize(
    ("sort", "expected"),
    [
        # Default: newest date first; ties on date by id in the same direction.
        (None, ["a3", "b2", "b1", "a2", "a1"]),
        ("-date", ["a3", "b2", "b1", "a2", "a1"]),
        ("date", ["a1", "a2", "b1", "b2", "a3"]),
        # a2 and b2 were updated at the same time: id breaks the tie.
        ("updated_at", ["a2", "b2", "b1", "a1", "a3"]),
        ("-updated_at", ["a3", "a1", "b1", "b2", "a2"]),
        ("date,-updated_at", ["a1", "b1", "a2", "b2", "a3"]),
        ("-date,updated_at", ["a3", "b2", "a2", "b1", "a1"]),
    ],
)
def test_entry_sort(
    client: FlaskClient, world: World, sort: str | None, expected: list[str]
) -> None:
    params = {} if sort is None else {"sort": sort}
    assert names(world, entries(client, world, **params)) == expected


def test_equal_sort_keys_page_without_overlap(
    client: FlaskClient, world: World, factories: Factories
) -> None:
    for _ in range(7):
        factories.entry(
            organization_id=world.organization_id,
            person_id=world.people[0],
            service_id=world.services[0],
            date=DAY,
        )
    for sort in ("date", "-date", "updated_at", "-updated_at"):
        seen: list[int] = []
        link: str | None = f"/api/v2/time_entries?sort={sort}&page[size]=2"
        while link is not None:
            response = client.get(link, headers=world.headers)
            seen.extend(ids_of(response))
            link = response.json["links"]["next"]
        assert len(seen) == 12 == len(set(seen)), sort


@pytest.mark.parametrize(
    ("params", "parameter"),
    [
        ({"filter[person_id]": "ann"}, "filter[person_id]"),
        ({"filter[person_id]": ""}, "filter[person_id]"),
        ({"filter[person_id]": "1,,2"}, "filter[person_id]"),
        ({"filter[person_id]": "1, 2"}, "filter[person_id]"),
        ({"filter[person_id]": " 1"}, "filter[person_id]"),
        ({"filter[person_id]": "0"}, "filter[person_id]"),
        ({"filter[person_id]": "-3"}, "filter[person_id]"),
        ({"filter[service_id]": "99999999999999999999"}, "filter[service_id]"),
        ({"filter[task_id]": "1.5"}, "filter[task_id]"),
        ({"filter[date]": "2024-02-30"}, "filter[date]"),
        ({"filter[date]": "20240301"}, "filter[date]"),
        ({"filter[date]": "2024-W09-5"}, "filter[date]"),
        ({"filter[after]": "yesterday"}, "filter[after]"),
        ({"filter[before]": "2024-3-1"}, "filter[before]"),
        ({"filter[status]": "pending"}, "filter[status]"),
        ({"filter[status]": "approved,"}, "filter[status]"),
        ({"filter[status]": "approved, invoiced"}, "filter[status]"),
        ({"filter[note]": "x"}, "filter[note]"),
        ({"filter[organization_id]": "2111"}, "filter[organization_id]"),
        ({"filter": "x"}, "filter"),
        ({"fields[time_entries]": "date"}, "fields[time_entries]"),
        ({"page[offset]": "3"}, "page[offset]"),
        ({"color": "blue"}, "color"),
        ({"sort": "note"}, "sort"),
        ({"sort": "-id"}, "sort"),
        ({"sort": ""}, "sort"),
        ({"sort": "date,"}, "sort"),
        ({"include": "approver"}, "include"),
        ({"include": "person.manager"}, "include"),
        ({"include": ""}, "include"),
        ({"page[size]": "201"}, "page[size]"),
        ({"page[size]": "0"}, "page[size]"),
        ({"page[size]": "ten"}, "page[size]"),
        ({"page[number]": "0"}, "page[number]"),
        ({"page[number]": "-1"}, "page[number]"),
        ({"page[number]": "99999999999999999999"}, "page[number]"),
        ({"page[number]": "1000000001"}, "page[number]"),
    ],
)
def test_bad_parameters_are_400_naming_them(
    client: FlaskClient, world: World, params: dict[str, str], parameter: str
) -> None:
    assert bad_parameter(entries(client, world, **params)) == parameter


def test_errors_say_what_is_supported(client: FlaskClient, world: World) -> None:
    detail = entries(client, world, **{"filter[note]": "x"}).json["errors"][0]["detail"]
    assert "person_id" in detail and "status" in detail
    detail = entries(client, world, sort="note").json["errors"][0]["detail"]
    assert "date" in detail and "updated_at" in detail
    detail = entries(client, world, include="approver").json["errors"][0]["detail"]
    assert "person, service, task" in detail
    detail = entries(client, world, **{"filter[status]": "pending"}).json["errors"][0]["detail"]
    assert "approved, invoiced, unapproved" in detail


def test_a_parameter_given_twice_is_400(client: FlaskClient, world: World) -> None:
    response = client.get(
        "/api/v2/time_entries?filter[date]=2024-03-01&filter[date]=2024-03-02",
        headers=world.headers,
    )
    assert bad_parameter(response) == "filter[date]"


def test_pages_and_their_boundaries(client: FlaskClient, world: World) -> None:
    base = {"sort": "date", "filter[after]": "2024-03-01"}
    first = entries(client, world, **base, **{"page[size]": "2"})
    assert names(world, first) == ["a1", "a2"]
    assert first.json["meta"] == {
        "current_page": 1,
        "total_pages": 3,
        "total_count": 5,
        "page_size": 2,
        "max_page_size": 200,
    }
    links = first.json["links"]
    assert links["prev"] is None
    assert links["first"] == links["self"]
    assert "filter[after]=2024-03-01" in links["next"] and "sort=date" in links["next"]
    assert "page[size]=2" in links["next"] and links["next"].endswith("page[number]=2")
    assert links["last"].endswith("page[number]=3")

    middle = client.get(links["next"], headers=world.headers)
    assert names(world, middle) == ["b1", "b2"]
    assert middle.json["meta"]["current_page"] == 2
    assert middle.json["links"]["prev"] == links["first"]

    last = client.get(links["last"], headers=world.headers)
    assert names(world, last) == ["a3"]
    assert last.json["links"]["next"] is None
    assert last.json["links"]["prev"].endswith("page[number]=2")

    beyond = entries(client, world, **base, **{"page[size]": "2", "page[number]": "9"})
    assert beyond.status_code == 200
    assert beyond.json["data"] == []
    assert beyond.json["meta"]["total_count"] == 5 and beyond.json["meta"]["total_pages"] == 3
    assert beyond.json["links"]["next"] is None
    assert beyond.json["links"]["prev"].endswith("page[number]=3")

    exact = entries(client, world, **{"page[size]": "5"})
    assert len(ids_of(exact)) == 5
    assert exact.json["meta"]["total_pages"] == 1 and exact.json["links"]["next"] is None

    widest = entries(client, world, **{"page[size]": "200"})
    assert widest.json["meta"]["page_size"] == 200


def test_an_empty_collection(client: FlaskClient, world: World) -> None:
    response = entries(client, world, **{"filter[date]": "1999-01-01"})
    assert response.status_code == 200
    assert response.json["data"] == []
    assert response.json["meta"]["total_count"] == 0
    assert response.json["meta"]["total_pages"] == 0
    links = response.json["links"]
    assert links["first"] == links["last"] == links["self"]
    assert links["prev"] is None and links["next"] is None


def test_default_page_size_is_30(client: FlaskClient, world: World, factories: Factories) -> None:
    for _ in range(30):
        factories.entry(
            organization_id=world.organization_id,
            person_id=world.people[1],
            service_id=world.services[1],
            date=DAY,
        )
    response = entries(client, world)
    assert len(ids_of(response)) == 30
    assert response.json["meta"]["page_size"] == 30
    assert response.json["meta"]["total_count"] == 35
    assert response.json["meta"]["total_pages"] == 2


def test_include_person_service_and_task(client: FlaskClient, world: World) -> None:
    response = entries(client, world, include="person,service,task", sort="date")
    assert response.status_code == 200
    document = response.json
    ann, bob = (str(i) for i in world.people)
    design, internal = (str(i) for i in world.services)
    sketch, admin = (str(i) for i in world.tasks)
    linkage = [
        {name: r["relationships"][name]["data"] for name in ("person", "service", "task")}
        for r in document["data"]
    ]
    assert linkage == [
        {"person": {"type": "people", "id": ann}, "service": {"type": "services", "id": design}, "task": {"type": "tasks", "id": sketch}},
        {"person": {"type": "people", "id": ann}, "service": {"type": "services", "id": design}, "task": None},
        {"person": {"type": "people", "id": bob}, "service": {"type": "services", "id": internal}, "task": {"type": "tasks", "id": admin}},
        {"person": {"type": "people", "id": bob}, "service": {"type": "services", "id": design}, "task": {"type": "tasks", "id": sketch}},
        {"person": {"type": "people", "id": ann}, "service": {"type": "services", "id": internal}, "task": None},
    ]  # fmt: skip
    for resource in document["data"]:
        assert resource["relationships"]["approver"] == NOT_INCLUDED
        assert list(resource["relationships"]) == list(RELATIONSHIPS)
    included = [(r["type"], r["id"]) for r in document["included"]]
    assert included == [
        ("people", ann),
        ("people", bob),
        ("services", design),
        ("services", internal),
        ("tasks", sketch),
        ("tasks", admin),
    ]
    person = document["included"][0]
    assert person["attributes"]["first_name"] == "Ann"
    assert person["relationships"]["organization"]["data"]["id"] == str(world.organization_id)
    task = document["included"][4]
    assert task["attributes"]["title"] == "Sketch"


def test_include_only_what_is_asked(client: FlaskClient, world: World) -> None:
    response = entries(client, world, include="task", **{"filter[person_id]": str(world.people[0])})
    document = response.json
    assert [r["type"] for r in document["included"]] == ["tasks"]
    for resource in document["data"]:
        assert resource["relationships"]["person"] == NOT_INCLUDED
        assert resource["relationships"]["service"] == NOT_INCLUDED
        assert "data" in resource["relationships"]["task"]
    empty = entries(client, world, include="person", **{"filter[date]": "1999-01-01"})
    assert empty.json["data"] == [] and empty.json["included"] == []


@contextmanager
def selects(connection: Connection) -> Iterator[list[str]]:
    seen: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            seen.append(statement)

    event.listen(connection, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(connection, "before_cursor_execute", record)


def test_includes_cost_one_query_per_kind_whatever_the_page(
    client: FlaskClient, world: World, factories: Factories, connection: Connection
) -> None:
    for n in range(40):
        person = factories.person(world.organization_id)
        service = factories.service(world.organization_id)
        factories.entry(
            organization_id=world.organization_id,
            person_id=person.id,
            service_id=service.id,
            task_id=factories.task(service).id,
            # Later than the world's entries: the pages below hold only these.
            date=DAY + dt.timedelta(days=100 + n),
        )
    counts = []
    for size in ("2", "40"):
        with selects(connection) as seen:
            response = entries(client, world, include="person,service,task", **{"page[size]": size})
        assert len(response.json["included"]) == 3 * int(size)
        counts.append(len(seen))
        for table in ("people", "services", "tasks", "time_entries"):
            reads = [s for s in seen if f"FROM {table}" in s]
            # one per included kind; for entries, the COUNT and the page
            assert len(reads) == (2 if table == "time_entries" else 1), (table, reads)
    assert counts[0] == counts[1] <= 7


def test_show_an_entry(client: FlaskClient, world: World) -> None:
    entry_id = world.entries["b1"]
    response = get(client, world.headers, f"time_entries/{entry_id}", include="person,task")
    assert response.status_code == 200
    document = response.json
    assert document["data"]["id"] == str(entry_id)
    assert document["data"]["attributes"]["note"] == "b1"
    assert document["data"]["relationships"]["person"]["data"]["id"] == str(world.people[1])
    assert document["data"]["relationships"]["service"] == NOT_INCLUDED
    assert [(r["type"], r["id"]) for r in document["included"]] == [
        ("people", str(world.people[1])),
        ("tasks", str(world.tasks[1])),
    ]
    # New York in March 2024 (after the 10th) is UTC-4.
    assert document["data"]["attributes"]["updated_at"] == "2024-03-20T10:00:00.000-04:00"


@pytest.mark.parametrize(
    "path",
    [
        "time_entries/999999999",
        "time_entries/235",  # Workflow Studio's
        "time_entries/abc",
        "time_entries/0",
        "time_entries/99999999999999999999999",
        "people/7791",
        "people/424242",
        "people/x",
        "services/2213",
        "services/1",
        "tasks/402",
        "tasks/-1",
    ],
)
def test_missing_or_foreign_resources_are_404(client: FlaskClient, auth: Any, path: str) -> None:
    response = get(client, auth(7781), path)
    assert response.status_code == 404, response.json
    (error,) = response.json["errors"]
    assert error["title"] == "Not found"


def test_the_bulk_routes_beside_entries_are_not_entry_ids(client: FlaskClient, auth: Any) -> None:
    for path in ("time_entries/approve", "time_entries/unapprove"):
        response = get(client, auth(7781), path)
        assert response.status_code == 405, response.json
        assert set(response.headers["Allow"].split(", ")) == {"PATCH", "OPTIONS"}


def test_show_takes_include_only(client: FlaskClient, auth: Any) -> None:
    assert (
        bad_parameter(get(client, auth(), "time_entries/223", **{"page[size]": "2"}))
        == "page[size]"
    )
    assert bad_parameter(get(client, auth(), "time_entries/223", include="approver")) == "include"
    assert bad_parameter(get(client, auth(), "people/7781", include="manager")) == "include"
    assert bad_parameter(get(client, auth(), "tasks/302", **{"filter[id]": "302"})) == "filter[id]"


def test_people_services_and_tasks(client: FlaskClient, auth: Any) -> None:
    headers = auth(7781)
    people = get(client, headers, "people")
    assert ids_of(people) == [7781, 7782, 7783, 7784]
    person = people.json["data"][0]
    assert person == {
        "id": "7781",
        "type": "people",
        "attributes": {
            "first_name": "Max",
            "last_name": "Member",
            "email": "max.member@example.com",
            "created_at": person["attributes"]["created_at"],
        },
        "relationships": {
            "organization": {"data": {"type": "organizations", "id": "2110"}},
            "manager": NOT_INCLUDED,
        },
    }
    assert get(client, headers, "people/7781").json == {"data": person, "meta": {}}

    services = get(client, headers, "services")
    assert ids_of(services) == [1213, 1214]
    assert [s["attributes"]["billable"] for s in services.json["data"]] == [True, False]
    assert services.json["data"][0]["attributes"]["name"] == "Design"
    assert get(client, headers, "services/1214").json["data"]["attributes"]["name"] == "Internal"

    tasks = get(client, headers, "tasks")
    assert ids_of(tasks) == [302, 303]
    assert tasks.json["data"][0]["attributes"]["title"] == "Wireframes"
    assert get(client, headers, "tasks/303").json["data"]["type"] == "tasks"
    assert tasks.json["meta"]["total_count"] == 2


@pytest.mark.parametrize(
    ("path", "params", "expected"),
    [
        ("people", {"filter[id]": "7783,7781,8881"}, [7781, 7783]),
        ("people", {"sort": "-id"}, [7784, 7783, 7782, 7781]),
        ("people", {"page[size]": "3", "page[number]": "2"}, [7784]),
        ("people", {"page[size]": "3", "page[number]": "3"}, []),
        ("services", {"filter[id]": "1214"}, [1214]),
        ("services", {"sort": "-id"}, [1214, 1213]),
        ("tasks", {"filter[service_id]": "1214"}, [303]),
        ("tasks", {"filter[service_id]": "1213,1214", "sort": "-id"}, [303, 302]),
        ("tasks", {"filter[service_id]": "2213"}, []),
    ],
)
def test_directory_filters_sort_and_pages(
    client: FlaskClient, auth: Any, path: str, params: dict[str, str], expected: list[int]
) -> None:
    assert ids_of(listing(client, auth(), path, params)) == expected


@pytest.mark.parametrize(
    ("path", "params", "parameter"),
    [
        ("people", {"filter[service_id]": "1213"}, "filter[service_id]"),
        ("people", {"filter[first_name]": "Max"}, "filter[first_name]"),
        ("people", {"sort": "last_name"}, "sort"),
        ("people", {"include": "manager"}, "include"),
        ("services", {"filter[id]": "x"}, "filter[id]"),
        ("services", {"page[size]": "500"}, "page[size]"),
        ("tasks", {"include": "service"}, "include"),
        ("tasks", {"filter[service_id]": ""}, "filter[service_id]"),
    ],
)
def test_directory_bad_parameters(
    client: FlaskClient, auth: Any, path: str, params: dict[str, str], parameter: str
) -> None:
    assert bad_parameter(listing(client, auth(), path, params)) == parameter


def test_reading_needs_a_token_and_allows_read_only_ones(client: FlaskClient, auth: Any) -> None:
    for path in ("time_entries", "time_entries/223", "people", "services/1213", "tasks"):
        assert client.get(f"/api/v2/{path}").status_code == 401
        assert get(client, auth(7781, read_only=True), path).status_code == 200
    other = auth(8881)
    assert ids_of(get(client, other, "time_entries")) == []
    assert ids_of(get(client, other, "people")) == [8881]


def test_reading_negotiates(client: FlaskClient, auth: Any) -> None:
    response = client.get("/api/v2/time_entries", headers=auth() | {"Accept": "text/html"})
    assert response.status_code == 406
    for accept in ("application/vnd.api+json", "application/vnd.api+json; ext=bulk", "*/*"):
        response = client.get("/api/v2/people", headers=auth() | {"Accept": accept})
        assert response.status_code == 200


def test_counts_are_right_for_10000_entries(
    client: FlaskClient, factories: Factories, session: Session, auth: Any
) -> None:
    org = factories.organization()
    person = factories.person(org.id)
    service = factories.service(org.id)
    session.execute(
        text(
            "INSERT INTO time_entries (organization_id, person_id, service_id, date, time,"
            " currency, currency_default, currency_normalized)"
            " SELECT :org, :person, :service, DATE '2025-01-01' + (n % 365), 60, 'EUR', 'USD', 'EUR'"
            " FROM generate_series(1, 10000) AS n"
        ),
        {"org": org.id, "person": person.id, "service": service.id},
    )
    headers = auth(person.id)

    def page(**params: str) -> TestResponse:
        response = get(client, headers, "time_entries", **params)
        assert response.status_code == 200, response.json
        return response

    widest = page(**{"page[size]": "200"})
    assert widest.json["meta"] == {
        "current_page": 1,
        "total_pages": 50,
        "total_count": 10_000,
        "page_size": 200,
        "max_page_size": 200,
    }
    last = page(**{"page[size]": "200", "page[number]": "50"})
    assert len(last.json["data"]) == 200 and last.json["links"]["next"] is None
    assert page(**{"page[size]": "200", "page[number]": "51"}).json["data"] == []

    default = page()
    assert default.json["meta"]["total_pages"] == 334  # 333 full pages of 30, then 10
    assert default.json["links"]["last"].endswith("page[number]=334")
    tail = page(**{"page[number]": "334"})
    assert len(tail.json["data"]) == 10
    assert tail.json["meta"]["total_count"] == 10_000

    # n % 365 puts 2025-07-01 (day 181) and later on days 181..364: 184 days of 27 or 28.
    expected = sum(1 for n in range(1, 10_001) if n % 365 >= 181)
    filtered = page(**{"filter[after]": "2025-07-01"})
    assert filtered.json["meta"]["total_count"] == expected
    one_day = page(**{"filter[date]": "2025-01-01", "page[size]": "200"})
    assert len(one_day.json["data"]) == one_day.json["meta"]["total_count"] == 27
