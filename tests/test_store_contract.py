"""One contract for every ``Store`` backend: the same tests run on each of them.

Backends: ``MemoryStore``; ``DuckDBStore`` on a file; and ``DuckDBStore`` closed and reopened
from its file after every write, which proves that everything written survives close/open.
A property test then checks that MemoryStore and DuckDBStore answer random ``q`` and geo
queries identically (DuckDB pre-filters in SQL, so a pushdown bug shows up as a difference).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from civica.core.entity import Entity, Observation
from civica.core.geo import GeoQuery, parse_geo_query
from civica.core.query import parse_q
from civica.core.store import (
    ApiKeyRecord,
    DeadLetter,
    EntityPage,
    EntityQuery,
    HistoryDocuments,
    ObservationQuery,
    PreparedWrite,
    Store,
    StoredEntity,
    TypeInfo,
)
from civica.core.temporal import instances
from civica.storage import DuckDBStore, MemoryStore

T0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


class ReopeningStore:
    """A DuckDBStore that is closed and reopened from its file after every write."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.inner = DuckDBStore(path)

    def _reopen(self) -> None:
        self.inner.close()
        self.inner = DuckDBStore(self.path)

    def _after_write(self, result: Any) -> Any:
        self._reopen()
        return result

    def tenants(self) -> list[str]:
        return self.inner.tenants()

    def get_entities(
        self, tenant: str, ids: Sequence[str], *, shared: bool = False
    ) -> dict[str, StoredEntity]:
        return self.inner.get_entities(tenant, ids, shared=shared)

    def write(
        self, tenant: str, entities: Sequence[StoredEntity], observations: Sequence[Observation]
    ) -> None:
        self._after_write(self.inner.write(tenant, entities, observations))

    def delete_entities(self, tenant: str, ids: Sequence[str]) -> list[str]:
        result: list[str] = self._after_write(self.inner.delete_entities(tenant, ids))
        return result

    def query_entities(self, tenant: str, query: EntityQuery) -> EntityPage:
        return self.inner.query_entities(tenant, query)

    def query_entity_documents(self, tenant: str, query: EntityQuery) -> tuple[list[str], int]:
        return self.inner.query_entity_documents(tenant, query)

    def history_documents(self, tenant: str, query: ObservationQuery) -> HistoryDocuments:
        return self.inner.history_documents(tenant, query)

    def prepare_write(
        self, tenant: str, entities: Sequence[StoredEntity], observations: Sequence[Observation]
    ) -> PreparedWrite:
        return self.inner.prepare_write(tenant, entities, observations)

    def write_prepared(self, writes: Sequence[PreparedWrite]) -> None:
        self.inner.write_prepared(writes)
        self._reopen()

    def entity_types(self, tenant: str) -> list[TypeInfo]:
        return self.inner.entity_types(tenant)

    def query_observations(self, tenant: str, query: ObservationQuery) -> list[Observation]:
        return self.inner.query_observations(tenant, query)

    def add_dead_letters(self, letters: Sequence[DeadLetter]) -> None:
        self._after_write(self.inner.add_dead_letters(letters))

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        return self.inner.dead_letters(limit)

    def count_dead_letters(self) -> int:
        return self.inner.count_dead_letters()

    def put_api_key(self, record: ApiKeyRecord) -> None:
        self._after_write(self.inner.put_api_key(record))

    def api_key(self, key_id: str) -> ApiKeyRecord | None:
        return self.inner.api_key(key_id)

    def api_keys(self) -> list[ApiKeyRecord]:
        return self.inner.api_keys()

    def put_subscription(self, tenant: str, sub_id: str, doc: dict[str, Any]) -> None:
        self._after_write(self.inner.put_subscription(tenant, sub_id, doc))

    def subscriptions(self, tenant: str | None = None) -> list[tuple[str, dict[str, Any]]]:
        return self.inner.subscriptions(tenant)

    def delete_subscription(self, tenant: str, sub_id: str) -> bool:
        result: bool = self._after_write(self.inner.delete_subscription(tenant, sub_id))
        return result

    def close(self) -> None:
        self.inner.close()


@pytest.fixture(
    params=["memory", "duckdb", "duckdb-compacting", "duckdb-reopened", "duckdb-small-cache"]
)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    backend: Store
    if request.param == "memory":
        backend = MemoryStore()
    elif request.param == "duckdb":
        backend = DuckDBStore(tmp_path / "contract.duckdb")
    elif request.param == "duckdb-compacting":
        # Every other write moves the history into sorted runs: queries then span runs and tail.
        backend = DuckDBStore(tmp_path / "contract.duckdb", compact_rows=2)
    elif request.param == "duckdb-small-cache":
        # Two cached states: most reads miss the state cache and it evicts all the time.
        backend = DuckDBStore(tmp_path / "contract.duckdb", state_cache=2)
    else:
        backend = ReopeningStore(tmp_path / "contract.duckdb")
    yield backend
    backend.close()


# ---- builders -------------------------------------------------------------------------------


def prop(value: Any, **extra: Any) -> dict[str, Any]:
    return {"type": "Property", "value": value, **extra}


def point(lon: float, lat: float) -> dict[str, Any]:
    return {"type": "GeoProperty", "value": {"type": "Point", "coordinates": [lon, lat]}}


def light(n: int, *, status: str = "ok", level: float = 0.5, **attrs: Any) -> Entity:
    return {
        "id": f"urn:ngsi-ld:Streetlight:{n:03d}",
        "type": "Streetlight",
        "status": prop(status),
        "illuminanceLevel": prop(level),
        **attrs,
    }


def stored(entity: Entity, created: float = 0, modified: float | None = None) -> StoredEntity:
    return StoredEntity(entity, at(created), at(created if modified is None else modified))


def obs(
    eid: str, attr: str, minute: float, value: float | str = 1.0, etype: str = "Streetlight"
) -> Observation:
    if isinstance(value, str):
        return Observation(eid, etype, attr, at(minute), None, f'"{value}"', None)
    return Observation(eid, etype, attr, at(minute), float(value), None, "WTT")


def ids_of(page: EntityPage) -> list[str]:
    return [s.id for s in page.items]


# ---- entities: write, get, replace ----------------------------------------------------------

RICH: Entity = {
    "id": "urn:ngsi-ld:Device:gateway-7",
    "type": "Device",
    "name": prop("Gateway Sint-Jansplein — ünïcødé ✓"),
    "batteryLevel": prop(0.75, observedAt="2026-03-01T07:59:00.000Z", unitCode="C62"),
    "controlledProperty": prop(["flow", "pressure"]),
    "address": prop({"streetAddress": "Sint-Jansplein 1", "postalCode": "9000", "n": [1, 2.5]}),
    "refDeviceModel": {"type": "Relationship", "object": "urn:ngsi-ld:DeviceModel:gw"},
    "description": {"type": "LanguageProperty", "languageMap": {"nl": "poort", "en": "gate"}},
    "location": point(3.7174, 51.0543),
    "rssi": prop(-71, accuracy=prop(2.5, observedBy={"type": "Relationship", "object": "urn:x:y"})),
    "congested": prop(False),
}


def test_write_then_get_returns_the_same_entity_and_timestamps(store: Store) -> None:
    store.write("default", [stored(RICH, created=-60, modified=5)], [])
    got = store.get_entities("default", [RICH["id"]])
    assert list(got) == [RICH["id"]]
    s = got[RICH["id"]]
    assert s.entity == RICH
    assert s.created_at == at(-60)
    assert s.modified_at == at(5)
    assert s.created_at.tzinfo is not None
    assert s.modified_at.utcoffset() == timedelta(0)
    assert (s.id, s.type) == (RICH["id"], "Device")


def test_get_ignores_missing_ids_duplicates_and_empty_requests(store: Store) -> None:
    store.write("default", [stored(light(1)), stored(light(2))], [])
    got = store.get_entities("default", [light(2)["id"], "urn:missing", light(2)["id"]])
    assert list(got) == [light(2)["id"]]
    assert store.get_entities("default", []) == {}
    assert store.get_entities("default", ["urn:missing"]) == {}


def test_returned_entities_are_copies(store: Store) -> None:
    store.write("default", [stored(light(1))], [])
    first = store.get_entities("default", [light(1)["id"]])[light(1)["id"]]
    first.entity["status"]["value"] = "mutated"
    first.entity["extra"] = prop(1)
    again = store.get_entities("default", [light(1)["id"]])[light(1)["id"]]
    assert again.entity == light(1)
    page = store.query_entities("default", EntityQuery())
    page.items[0].entity.clear()
    assert store.get_entities("default", [light(1)["id"]])[light(1)["id"]].entity == light(1)


def test_written_entity_is_not_aliased_by_the_store(store: Store) -> None:
    doc = light(1)
    store.write("default", [stored(doc)], [])
    doc["status"]["value"] = "changed-after-write"
    got = store.get_entities("default", [doc["id"]])[doc["id"]]
    assert got.entity["status"]["value"] == "ok"


def test_write_replaces_the_whole_state(store: Store) -> None:
    v1 = light(1, extra=prop(1))
    store.write("default", [stored(v1, created=0)], [])
    v2 = {"id": v1["id"], "type": "Streetlight", "status": prop("defectiveLamp")}
    store.write("default", [stored(v2, created=0, modified=10)], [])
    got = store.get_entities("default", [v1["id"]])[v1["id"]]
    assert got.entity == v2
    assert got.modified_at == at(10)
    assert store.query_entities("default", EntityQuery(attrs=("extra",))).total == 0
    assert store.query_entities("default", EntityQuery()).total == 1


def test_the_last_copy_of_an_id_in_one_write_wins(store: Store) -> None:
    first = light(1, status="ok")
    last = light(1, status="brokenLantern")
    store.write("default", [stored(first), stored(last, modified=3)], [])
    got = store.get_entities("default", [first["id"]])[first["id"]]
    assert got.entity["status"]["value"] == "brokenLantern"
    assert got.modified_at == at(3)
    assert store.query_entities("default", EntityQuery()).total == 1


def test_write_with_nothing_is_harmless(store: Store) -> None:
    store.write("default", [], [])
    assert store.query_entities("default", EntityQuery()).total == 0
    assert store.query_observations("default", ObservationQuery()) == []


# ---- tenants ------------------------------------------------------------------------------


def test_tenants_are_isolated(store: Store) -> None:
    a = light(1, status="ok")
    b = light(1, status="columnIssue", onlyInB=prop(1))
    store.write("city-a", [stored(a)], [obs(a["id"], "activePower", 0, 10)])
    store.write("city-b", [stored(b)], [obs(b["id"], "activePower", 0, 99)])
    assert store.tenants() == ["city-a", "city-b"]
    assert store.get_entities("city-a", [a["id"]])[a["id"]].entity == a
    assert store.get_entities("city-b", [a["id"]])[a["id"]].entity == b
    assert store.get_entities("elsewhere", [a["id"]]) == {}
    assert store.query_entities("city-a", EntityQuery(attrs=("onlyInB",))).total == 0
    assert [o.value_num for o in store.query_observations("city-a", ObservationQuery())] == [10.0]
    assert [t.attributes for t in store.entity_types("city-a")] == [("illuminanceLevel", "status")]
    assert store.delete_entities("city-a", [a["id"]]) == [a["id"]]
    assert store.get_entities("city-b", [a["id"]])[a["id"]].entity == b


def test_tenants_lists_only_tenants_holding_data(store: Store) -> None:
    assert store.tenants() == []
    store.write("zeta", [stored(light(1))], [])
    store.write("alpha", [], [obs("urn:x", "activePower", 0)])
    store.write("nothing", [], [])
    assert store.tenants() == ["alpha", "zeta"]
    store.delete_entities("zeta", [light(1)["id"]])
    assert store.tenants() == ["alpha"]


# ---- delete -------------------------------------------------------------------------------


def test_delete_returns_existing_ids_in_request_order_and_keeps_history(store: Store) -> None:
    lights = [light(n) for n in (1, 2, 3)]
    store.write(
        "default",
        [stored(e) for e in lights],
        [obs(e["id"], "activePower", n) for n, e in enumerate(lights)],
    )
    gone = store.delete_entities(
        "default", [lights[2]["id"], "urn:missing", lights[0]["id"], lights[2]["id"]]
    )
    assert gone == [lights[2]["id"], lights[0]["id"]]
    assert ids_of(store.query_entities("default", EntityQuery())) == [lights[1]["id"]]
    assert store.get_entities("default", [lights[0]["id"]]) == {}
    history = store.query_observations("default", ObservationQuery())
    assert [o.entity_id for o in history] == [e["id"] for e in lights]
    assert store.delete_entities("default", [lights[0]["id"]]) == []
    assert store.delete_entities("default", []) == []


# ---- query entities -----------------------------------------------------------------------


def town() -> list[Entity]:
    """Twelve entities of three types around a small town (lon 4.0..4.11, lat 50.0)."""
    out: list[Entity] = []
    for n in range(12):
        kind = ("Streetlight", "WaterObserved", "Device")[n % 3]
        e: Entity = {"id": f"urn:ngsi-ld:{kind}:{n:02d}", "type": kind}
        if kind == "Streetlight":
            e["status"] = prop("ok" if n % 2 else "defectiveLamp")
            e["illuminanceLevel"] = prop(n / 10)
        elif kind == "WaterObserved":
            e["flow"] = prop(n * 1.5, unitCode="MQS")
            e["pressure"] = prop(40 + n, observedAt=f"2026-03-01T0{n % 10}:00:00.000Z")
        else:
            e["address"] = prop({"city": "Gent" if n < 6 else "Brugge", "zip": 9000 + n})
            e["refDeviceModel"] = {"type": "Relationship", "object": f"urn:model:{n % 2}"}
        if n != 11:  # one entity without location
            e["location"] = point(4.0 + n * 0.01, 50.0)
        out.append(e)
    return out


@pytest.fixture
def town_store(store: Store) -> Store:
    entities = town()
    # Written in two batches, out of id order, to prove ordering comes from the store.
    store.write("default", [stored(e) for e in reversed(entities[6:])], [])
    store.write("default", [stored(e) for e in reversed(entities[:6])], [])
    store.write("other", [stored(e) for e in entities[:3]], [])
    return store


def expected_ids(query: EntityQuery) -> list[str]:
    """Sorted ids ``EntityQuery.matches`` accepts, over the whole town."""
    hits = [e["id"] for e in town() if query.matches(stored(e))]
    return sorted(hits)


def streetlight(n: int) -> str:
    return f"urn:ngsi-ld:Streetlight:{n:02d}"


def water(n: int) -> str:
    return f"urn:ngsi-ld:WaterObserved:{n:02d}"


def device(n: int) -> str:
    return f"urn:ngsi-ld:Device:{n:02d}"


ALL_IDS = sorted(e["id"] for e in town())

QUERIES: list[tuple[str, EntityQuery, list[str]]] = [
    ("everything", EntityQuery(limit=100), ALL_IDS),
    ("types", EntityQuery(types=("Streetlight",)), [streetlight(n) for n in (0, 3, 6, 9)]),
    (
        "two types",
        EntityQuery(types=("Device", "Nope", "WaterObserved"), limit=100),
        sorted([device(n) for n in (2, 5, 8, 11)] + [water(n) for n in (1, 4, 7, 10)]),
    ),
    ("ids", EntityQuery(ids=(water(4), "urn:x", device(2))), [device(2), water(4)]),
    ("ids and types", EntityQuery(ids=(water(4), device(2)), types=("Device",)), [device(2)]),
    (
        "id pattern",
        EntityQuery(id_pattern=r"urn:ngsi-ld:Water.*:0\d"),
        [water(1), water(4), water(7)],
    ),
    ("id pattern is a full match", EntityQuery(id_pattern=r"Water"), []),
    ("empty id pattern", EntityQuery(id_pattern=""), []),
    (
        "attrs",
        EntityQuery(attrs=("flow", "refDeviceModel"), limit=100),
        sorted([device(n) for n in (2, 5, 8, 11)] + [water(n) for n in (1, 4, 7, 10)]),
    ),
    ("attrs none present", EntityQuery(attrs=("nothing",)), []),
    ("q numeric", EntityQuery(q=parse_q("flow>=6;flow<15")), [water(4), water(7)]),
    (
        "q string",
        EntityQuery(q=parse_q('status=="defectiveLamp"')),
        [streetlight(0), streetlight(6)],
    ),
    (
        "q or",
        EntityQuery(q=parse_q('status=="ok"|pressure==41'), limit=100),
        [streetlight(3), streetlight(9), water(1)],
    ),
    ("q compound", EntityQuery(q=parse_q('address[city]=="Brugge"')), [device(8), device(11)]),
    (
        "q relationship",
        EntityQuery(q=parse_q("refDeviceModel==urn:model:0")),
        [device(2), device(8)],
    ),
    (
        "q observedAt",
        EntityQuery(q=parse_q("pressure.observedAt>=2026-03-01T05:00:00Z")),
        [water(7)],
    ),
    ("q and types", EntityQuery(types=("WaterObserved",), q=parse_q("flow<5")), [water(1)]),
    ("q with attrs", EntityQuery(attrs=("flow",), q=parse_q("pressure>44")), [water(7), water(10)]),
    (
        "geo near",
        EntityQuery(geo=parse_geo_query("near;maxDistance==1500", "Point", "[4.05, 50.0]")),
        # 0.01 degree of longitude at latitude 50 is about 715 m.
        [streetlight(3), streetlight(6), water(4), water(7), device(5)],
    ),
    (
        "geo near ring",
        EntityQuery(
            geo=parse_geo_query("near;minDistance==1000;maxDistance==1500", "Point", "[4.05, 50.0]")
        ),
        [streetlight(3), water(7)],
    ),
    (
        "geo within",
        EntityQuery(
            geo=parse_geo_query(
                "within",
                "Polygon",
                "[[[3.995,49.99],[4.025,49.99],[4.025,50.01],[3.995,50.01],[3.995,49.99]]]",
            )
        ),
        [streetlight(0), water(1), device(2)],
    ),
    (
        "geo disjoint",
        EntityQuery(
            geo=parse_geo_query(
                "disjoint",
                "Polygon",
                "[[[3.995,49.99],[4.085,49.99],[4.085,50.01],[3.995,50.01],[3.995,49.99]]]",
            )
        ),
        [streetlight(9), water(10)],  # device 11 has no location: matches nothing
    ),
    (
        "geo and q",
        EntityQuery(
            q=parse_q("illuminanceLevel>0.1"),
            geo=parse_geo_query("near;maxDistance==2200", "Point", "[4.0, 50.0]"),
        ),
        [streetlight(3)],
    ),
]


@pytest.mark.parametrize(
    ("query", "expected"), [q[1:] for q in QUERIES], ids=[q[0] for q in QUERIES]
)
def test_query_entities(town_store: Store, query: EntityQuery, expected: list[str]) -> None:
    expected = sorted(expected)
    assert expected == expected_ids(query)  # the spec predicate agrees with the hand answer
    page = town_store.query_entities("default", query)
    assert ids_of(page) == expected[: query.limit]
    assert page.total == len(expected)
    docs, total = town_store.query_entity_documents("default", query)
    assert [orjson.loads(d) for d in docs] == [s.entity for s in page.items]
    assert total == page.total


@pytest.mark.parametrize(
    "query",
    [
        EntityQuery(),
        EntityQuery(types=("Streetlight", "Device")),
        EntityQuery(attrs=("location",)),
        EntityQuery(q=parse_q("location")),
        EntityQuery(geo=parse_geo_query("near;maxDistance==5000", "Point", "[4.05, 50.0]")),
    ],
    ids=["plain", "types", "attrs", "q", "geo"],
)
def test_pages_partition_the_result_in_id_order(town_store: Store, query: EntityQuery) -> None:
    everything = town_store.query_entities("default", replace(query, limit=100))
    want = expected_ids(query)
    assert ids_of(everything) == want
    for limit in (1, 3, 5):
        pages = [
            town_store.query_entities("default", replace(query, limit=limit, offset=offset))
            for offset in range(0, len(want) + limit, limit)
        ]
        assert all(p.total == len(want) for p in pages)
        assert [i for p in pages for i in ids_of(p)] == want
        assert all(len(p.items) <= limit for p in pages)
    beyond = town_store.query_entities("default", replace(query, offset=50))
    assert beyond.items == []
    assert beyond.total == len(want)


def test_query_returns_timestamps_and_full_entities(town_store: Store) -> None:
    page = town_store.query_entities("default", EntityQuery(ids=(device(5),)))
    [got] = page.items
    assert got.entity == town()[5]
    assert got.created_at == at(0)


def test_other_tenant_is_not_queried(town_store: Store) -> None:
    page = town_store.query_entities("other", EntityQuery(limit=100))
    assert ids_of(page) == sorted(e["id"] for e in town()[:3])
    assert town_store.query_entities("nobody", EntityQuery()).total == 0


def test_geo_query_on_another_geoproperty(store: Store) -> None:
    here = {
        "id": "urn:a",
        "type": "Device",
        "location": point(10.0, 10.0),
        "observationSpace": point(4.0, 50.0),
    }
    there = {"id": "urn:b", "type": "Device", "location": point(4.0, 50.0)}
    store.write("default", [stored(here), stored(there)], [])
    geo = parse_geo_query("near;maxDistance==10", "Point", "[4.0, 50.0]", "observationSpace")
    assert geo is not None
    page = store.query_entities("default", EntityQuery(geo=geo))
    assert ids_of(page) == ["urn:a"]


def test_near_across_the_antimeridian(store: Store) -> None:
    east = {"id": "urn:east", "type": "T", "location": point(179.99, 10.0)}
    west = {"id": "urn:west", "type": "T", "location": point(-179.99, 10.0)}
    far = {"id": "urn:far", "type": "T", "location": point(-179.0, 10.0)}
    store.write("default", [stored(east), stored(west), stored(far)], [])
    # 0.015 degree of longitude at latitude 10 is about 1.6 km; 1.01 degree about 110 km.
    geo = parse_geo_query("near;maxDistance==5000", "Point", "[179.995, 10.0]")
    page = store.query_entities("default", EntityQuery(geo=geo))
    assert ids_of(page) == ["urn:east", "urn:west"]
    assert page.total == 2


def test_ordering_is_by_id_code_point(store: Store) -> None:
    ids = ["urn:b", "urn:B", "urn:a:10", "urn:a:9", "urn:ä", "urn:a", "urn:Z"]
    store.write("default", [stored({"id": i, "type": "T"}) for i in ids], [])
    page = store.query_entities("default", EntityQuery(limit=100))
    assert ids_of(page) == ["urn:B", "urn:Z", "urn:a", "urn:a:10", "urn:a:9", "urn:b", "urn:ä"]


# ---- entity types -------------------------------------------------------------------------


def test_entity_types_count_and_union_of_attributes(town_store: Store) -> None:
    infos = town_store.entity_types("default")
    assert [(i.type, i.count) for i in infos] == [
        ("Device", 4),
        ("Streetlight", 4),
        ("WaterObserved", 4),
    ]
    assert infos[0].attributes == ("address", "location", "refDeviceModel")
    assert infos[1].attributes == ("illuminanceLevel", "location", "status")
    assert infos[2].attributes == ("flow", "location", "pressure")
    assert town_store.entity_types("nobody") == []


def test_entity_types_of_entities_without_attributes(store: Store) -> None:
    store.write("default", [stored({"id": "urn:bare", "type": "Bare"})], [])
    assert store.entity_types("default") == [TypeInfo("Bare", 1, ())]


# ---- observations -------------------------------------------------------------------------

LAMP, PUMP = "urn:ngsi-ld:Streetlight:lamp", "urn:ngsi-ld:WaterObserved:pump"


@pytest.fixture
def history(store: Store) -> Store:
    rows = [
        obs(PUMP, "flow", 30, 3.0, "WaterObserved"),
        obs(LAMP, "activePower", 20, 120.0),
        obs(LAMP, "status", 0, "ok"),
        obs(LAMP, "activePower", 0, 100.0),
        obs(PUMP, "flow", 0, 1.0, "WaterObserved"),
        obs(LAMP, "activePower", 10, 110.0),
        obs(PUMP, "flow", 15, 2.0, "WaterObserved"),
        obs(LAMP, "status", 20, "defectiveLamp"),
    ]
    # Two writes, so ordering cannot be insertion order.
    store.write("default", [], rows[:4])
    store.write("default", [], rows[4:])
    store.write("other", [], [obs(LAMP, "activePower", 5, 999.0)])
    return store


def keys(rows: list[Observation]) -> list[tuple[str, str, float]]:
    return [(o.entity_id, o.attribute, (o.observed_at - T0).total_seconds() / 60) for o in rows]


def test_observations_are_ordered_by_entity_attribute_time(history: Store) -> None:
    rows = history.query_observations("default", ObservationQuery())
    assert keys(rows) == [
        (LAMP, "activePower", 0),
        (LAMP, "activePower", 10),
        (LAMP, "activePower", 20),
        (LAMP, "status", 0),
        (LAMP, "status", 20),
        (PUMP, "flow", 0),
        (PUMP, "flow", 15),
        (PUMP, "flow", 30),
    ]
    first = rows[0]
    assert first == Observation(LAMP, "Streetlight", "activePower", at(0), 100.0, None, "WTT")
    assert rows[4].value_json == '"defectiveLamp"'
    assert rows[4].value_num is None
    assert all(o.observed_at.utcoffset() == timedelta(0) for o in rows)


def test_observation_filters(history: Store) -> None:
    def q(**kw: Any) -> list[tuple[str, str, float]]:
        return keys(history.query_observations("default", ObservationQuery(**kw)))

    assert q(entity_ids=(PUMP,)) == [(PUMP, "flow", 0), (PUMP, "flow", 15), (PUMP, "flow", 30)]
    assert q(entity_ids=(PUMP, LAMP), attrs=("status",)) == [
        (LAMP, "status", 0),
        (LAMP, "status", 20),
    ]
    assert q(entity_ids=("urn:none",)) == []
    assert q(types=("WaterObserved",)) == q(entity_ids=(PUMP,))
    assert q(types=("Nope",)) == []
    assert q(attrs=("flow", "status")) == [
        (LAMP, "status", 0),
        (LAMP, "status", 20),
        (PUMP, "flow", 0),
        (PUMP, "flow", 15),
        (PUMP, "flow", 30),
    ]


def test_observation_time_window_is_start_inclusive_end_exclusive(history: Store) -> None:
    rows = history.query_observations("default", ObservationQuery(start=at(10), end=at(20)))
    assert keys(rows) == [(LAMP, "activePower", 10), (PUMP, "flow", 15)]
    assert history.query_observations("default", ObservationQuery(start=at(20), end=at(20))) == []
    after = history.query_observations("default", ObservationQuery(start=at(20)))
    assert keys(after) == [(LAMP, "activePower", 20), (LAMP, "status", 20), (PUMP, "flow", 30)]
    before = history.query_observations("default", ObservationQuery(end=at(0.001)))
    assert keys(before) == [(LAMP, "activePower", 0), (LAMP, "status", 0), (PUMP, "flow", 0)]


def test_observation_window_accepts_other_time_zones(history: Store) -> None:
    cet = datetime(2026, 3, 1, 9, 10, tzinfo=timezone(timedelta(hours=1)))  # 08:10 UTC
    rows = history.query_observations("default", ObservationQuery(start=cet, entity_ids=(LAMP,)))
    assert keys(rows) == [
        (LAMP, "activePower", 10),
        (LAMP, "activePower", 20),
        (LAMP, "status", 20),
    ]


def test_last_n_keeps_the_newest_per_entity_and_attribute(history: Store) -> None:
    rows = history.query_observations("default", ObservationQuery(last_n=1))
    assert keys(rows) == [(LAMP, "activePower", 20), (LAMP, "status", 20), (PUMP, "flow", 30)]
    two = history.query_observations("default", ObservationQuery(last_n=2, attrs=("activePower",)))
    assert [o.value_num for o in two] == [110.0, 120.0]
    windowed = history.query_observations(
        "default", ObservationQuery(last_n=1, end=at(20), entity_ids=(LAMP,))
    )
    assert keys(windowed) == [(LAMP, "activePower", 10), (LAMP, "status", 0)]


def test_observation_limit_cuts_the_ordered_list(history: Store) -> None:
    rows = history.query_observations("default", ObservationQuery(limit=4))
    assert keys(rows) == keys(history.query_observations("default", ObservationQuery()))[:4]


def test_observations_of_another_tenant(history: Store) -> None:
    rows = history.query_observations("other", ObservationQuery())
    assert [o.value_num for o in rows] == [999.0]
    assert history.query_observations("nobody", ObservationQuery()) == []


def test_observations_keep_microseconds_and_instants(store: Store) -> None:
    when = datetime(2026, 3, 1, 10, 0, 0, 123456, tzinfo=UTC)
    local = when.astimezone(timezone(timedelta(hours=-5)))
    store.write("default", [], [Observation("urn:x", "T", "a", local, 1.0, None, None)])
    [row] = store.query_observations("default", ObservationQuery())
    assert row.observed_at == when  # the same instant, whatever zone it is rendered in


# ---- dead letters -------------------------------------------------------------------------


def letter(minute: float, reason: str, topic: str | None = None) -> DeadLetter:
    return DeadLetter(at(minute), "mqtt" if topic else "http", "default", reason, "{}", topic)


def test_dead_letters_newest_first_with_count(store: Store) -> None:
    assert store.dead_letters() == []
    assert store.count_dead_letters() == 0
    store.add_dead_letters([letter(5, "b", "civica/default/T/1"), letter(1, "a")])
    store.add_dead_letters([])
    store.add_dead_letters([letter(9, "c"), letter(3, "late arrival")])
    assert store.count_dead_letters() == 4
    assert [d.reason for d in store.dead_letters()] == ["c", "b", "late arrival", "a"]
    assert [d.reason for d in store.dead_letters(2)] == ["c", "b"]
    assert store.dead_letters(0) == []
    got = {d.reason: d for d in store.dead_letters()}
    assert got["b"] == letter(5, "b", "civica/default/T/1")
    assert got["a"].topic is None
    assert got["a"].received_at.utcoffset() == timedelta(0)


def test_dead_letters_at_the_same_time_latest_added_first(store: Store) -> None:
    store.add_dead_letters([letter(1, "first"), letter(1, "second")])
    store.add_dead_letters([letter(1, "third")])
    assert [d.reason for d in store.dead_letters()] == ["third", "second", "first"]
    assert [d.reason for d in store.dead_letters(1)] == ["third"]


# ---- api keys -----------------------------------------------------------------------------


def key(key_id: str, minute: float, *, revoked: bool = False, role: str = "reader") -> ApiKeyRecord:
    return ApiKeyRecord(key_id, f"hash-{key_id}", role, f"label {key_id}", at(minute), revoked)


def test_api_keys_put_get_replace_list(store: Store) -> None:
    assert store.api_keys() == []
    assert store.api_key("k1") is None
    store.put_api_key(key("k2", 5))
    store.put_api_key(key("k1", 1))
    store.put_api_key(key("k3", 9, role="admin"))
    assert store.api_key("k3") == key("k3", 9, role="admin")
    assert [k.key_id for k in store.api_keys()] == ["k1", "k2", "k3"]
    store.put_api_key(key("k1", 1, revoked=True))
    assert store.api_key("k1") == key("k1", 1, revoked=True)
    assert len(store.api_keys()) == 3


# ---- subscriptions ------------------------------------------------------------------------


def test_subscriptions_by_tenant(store: Store) -> None:
    doc: dict[str, Any] = {
        "id": "urn:sub:1",
        "type": "Subscription",
        "entities": [{"type": "Streetlight"}],
        "notification": {"endpoint": {"uri": "http://example.org/hook"}},
        "throttling": 5,
        "isActive": True,
    }
    store.put_subscription("b", "urn:sub:2", {**doc, "id": "urn:sub:2"})
    store.put_subscription("a", "urn:sub:9", {**doc, "id": "urn:sub:9"})
    store.put_subscription("a", "urn:sub:1", doc)
    assert store.subscriptions("a") == [("a", doc), ("a", {**doc, "id": "urn:sub:9"})]
    assert [(t, d["id"]) for t, d in store.subscriptions()] == [
        ("a", "urn:sub:1"),
        ("a", "urn:sub:9"),
        ("b", "urn:sub:2"),
    ]
    store.put_subscription("a", "urn:sub:1", {**doc, "isActive": False})
    assert store.subscriptions("a")[0][1]["isActive"] is False
    assert store.delete_subscription("a", "urn:sub:1") is True
    assert store.delete_subscription("a", "urn:sub:1") is False
    assert store.delete_subscription("c", "urn:sub:2") is False
    assert [d["id"] for _, d in store.subscriptions()] == ["urn:sub:9", "urn:sub:2"]
    assert store.subscriptions("nobody") == []


def test_subscription_documents_are_copies(store: Store) -> None:
    doc: dict[str, Any] = {"id": "urn:sub:1", "entities": [{"type": "T"}]}
    store.put_subscription("a", "urn:sub:1", doc)
    doc["entities"].append({"type": "U"})
    [(_, got)] = store.subscriptions("a")
    assert got == {"id": "urn:sub:1", "entities": [{"type": "T"}]}
    got["entities"].clear()
    assert store.subscriptions("a")[0][1]["entities"] == [{"type": "T"}]


# ---- MemoryStore and DuckDBStore agree on random data and queries -------------------------

_counter = itertools.count()

# Clusters where bounding-box pre-filters go wrong: either side of the antimeridian, round a
# pole, and an ordinary town. Points are jittered around them (longitude wraps).
CLUSTERS = [(4.1, 50.1), (179.9, 10.0), (-179.9, 10.0), (30.0, 89.8), (-150.0, 89.8)]


def _jitter(centre: tuple[float, float], dx: float, dy: float) -> list[float]:
    lon = (centre[0] + dx + 540.0) % 360.0 - 180.0
    lat = max(-90.0, min(90.0, centre[1] + dy))
    return [round(lon, 6), round(lat, 6)]


near_clusters = st.builds(
    _jitter, st.sampled_from(CLUSTERS), st.floats(-0.3, 0.3), st.floats(-0.2, 0.2)
)
positions = st.one_of(
    st.tuples(st.floats(-180, 180), st.floats(-90, 90)).map(
        lambda p: [round(p[0], 6), round(p[1], 6)]
    ),
    near_clusters,
    near_clusters,
    near_clusters,
)


@st.composite
def geometries(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(["Point", "Point", "LineString", "Polygon"]))
    if kind == "Point":
        return {"type": "Point", "coordinates": draw(positions)}
    x, y = draw(positions)
    w = draw(st.floats(0.0005, 0.05))
    x = min(max(x, -179.9), 179.9)
    y = min(max(y, -89.9), 89.9)
    if kind == "LineString":
        return {"type": "LineString", "coordinates": [[x, y], [round(x + w, 6), round(y + w, 6)]]}
    ring = [
        [x, y],
        [round(x + w, 6), y],
        [round(x + w, 6), round(y + w, 6)],
        [x, round(y + w, 6)],
        [x, y],
    ]
    return {"type": "Polygon", "coordinates": [ring]}


scalars = st.one_of(
    st.integers(-5, 5),
    st.sampled_from([0.5, -1.5, 2.25]),
    st.booleans(),
    st.sampled_from(["ok", "off", "b", "2026-03-01T00:00:00Z"]),
)


@st.composite
def random_entities(draw: st.DrawFn) -> list[Entity]:
    out: list[Entity] = []
    for n in draw(st.lists(st.integers(0, 40), unique=True, max_size=14)):
        e: Entity = {"id": f"urn:r:{n}", "type": draw(st.sampled_from(["A", "B", "C"]))}
        if draw(st.booleans()):
            e["x"] = prop(draw(st.one_of(scalars, st.lists(scalars, max_size=3))))
        if draw(st.booleans()):
            e["y"] = prop(
                draw(scalars),
                observedAt=draw(
                    st.sampled_from(["2026-01-01T00:00:00.000Z", "2026-06-01T00:00:00.000Z"])
                ),
            )
        if draw(st.booleans()):
            e["c"] = prop({"k": draw(scalars), "d": {"e": draw(scalars)}})
        if draw(st.booleans()):
            e["r"] = {"type": "Relationship", "object": draw(st.sampled_from(["urn:a", "urn:b"]))}
        if draw(st.integers(0, 4)) > 0:
            e["location"] = {"type": "GeoProperty", "value": draw(geometries())}
        out.append(e)
    return out


q_texts = st.sampled_from(
    [
        "x", "x==1", "x!=1", "x>0", "x<=0.5", "x==-5..0", "x!=1..3", 'x=="ok","b"', "x==true",
        "x~=o", 'x!~="^o"', "y>=2026-03-01T00:00:00Z", "y.observedAt<2026-03-01T00:00:00Z",
        "c[k]>0", "c[d.e]==1,2,3", "r==urn:a", "x>0|y<0", "x>0;y<0", "(x|y);c[k]!=0",
        "type==A", "id~=urn:r:1",
    ]
)  # fmt: skip


@st.composite
def geo_queries(draw: st.DrawFn) -> GeoQuery:
    rel = draw(
        st.sampled_from(
            ["near", "near", "within", "intersects", "disjoint", "contains", "overlaps", "equals"]
        )
    )
    if rel == "near":
        mods = draw(
            st.sampled_from(
                ["maxDistance=={a}", "minDistance=={a}", "minDistance=={a};maxDistance=={b}"]
            )
        )
        a = draw(st.sampled_from([0, 10, 1_000, 20_000, 50_000, 50_000, 300_000, 2_000_000]))
        text = mods.format(a=a, b=a * 3 + 5)
        ref = draw(near_clusters)
        geo = parse_geo_query(f"near;{text}", "Point", str(ref))
    else:
        g = draw(geometries()) if rel != "within" else None
        if g is None or (rel in ("contains", "overlaps") and draw(st.booleans())):
            x, y = draw(positions)
            w = draw(st.floats(0.01, 30))
            x, y = min(x, 179.9 - w), min(y, 89.9 - w)
            ring = [[x, y], [x + w, y], [x + w, y + w], [x, y + w], [x, y]]
            g = {"type": "Polygon", "coordinates": [ring]}
        geo = parse_geo_query(rel, g["type"], str(g["coordinates"]))
    assert geo is not None
    return geo


entity_queries = st.builds(
    EntityQuery,
    types=st.one_of(st.none(), st.sampled_from([("A",), ("A", "C"), ()])),
    ids=st.one_of(
        st.none(), st.lists(st.integers(0, 40).map(lambda n: f"urn:r:{n}"), max_size=5).map(tuple)
    ),
    id_pattern=st.one_of(st.none(), st.sampled_from([r"urn:r:1\d*", r".*[02468]", ""])),
    attrs=st.one_of(st.none(), st.sampled_from([("x",), ("y", "r"), ("location",), ()])),
    q=st.one_of(st.none(), q_texts.map(parse_q)),
    geo=st.one_of(st.none(), geo_queries()),
    limit=st.integers(1, 20),
    offset=st.integers(0, 5),
)


@pytest.fixture(scope="module")
def twin_stores() -> Iterator[tuple[MemoryStore, DuckDBStore]]:
    duck = DuckDBStore(":memory:")
    yield MemoryStore(), duck
    duck.close()


@settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(entities=random_entities(), queries=st.lists(entity_queries, min_size=1, max_size=4))
def test_memory_and_duckdb_answer_identically(
    twin_stores: tuple[MemoryStore, DuckDBStore], entities: list[Entity], queries: list[EntityQuery]
) -> None:
    tenant = f"t{next(_counter)}"
    for s in twin_stores:
        s.write(tenant, [stored(e) for e in entities], [])
    for query in queries:
        mem, duck = (s.query_entities(tenant, query) for s in twin_stores)
        assert ids_of(duck) == ids_of(mem)
        assert duck.total == mem.total
        brute = sorted(e["id"] for e in entities if query.matches(stored(e)))
        assert mem.total == len(brute)
        assert ids_of(mem) == brute[query.offset : query.offset + query.limit]
    mem_types, duck_types = (s.entity_types(tenant) for s in twin_stores)
    assert duck_types == mem_types


@settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(entities=random_entities(), geos=st.lists(geo_queries(), min_size=1, max_size=6))
def test_memory_and_duckdb_agree_on_geo_queries(
    twin_stores: tuple[MemoryStore, DuckDBStore], entities: list[Entity], geos: list[GeoQuery]
) -> None:
    # Geo alone, so that the SQL bounding-box pre-filter decides more often.
    tenant = f"g{next(_counter)}"
    for s in twin_stores:
        s.write(tenant, [stored(e) for e in entities], [])
    for geo in geos:
        query = EntityQuery(geo=geo, limit=100)
        mem, duck = (s.query_entities(tenant, query) for s in twin_stores)
        assert ids_of(duck) == ids_of(mem)
        assert ids_of(mem) == sorted(e["id"] for e in entities if geo.matches(e))


# ---- history rendered by the store ---------------------------------------------------------

MIXED = "urn:ngsi-ld:WaterObserved:mixed"


@pytest.mark.parametrize(
    "window",
    [
        {},
        {"start": at(2), "end": at(7)},
        {"attrs": ("pressure", "status")},
        {"attrs": ("nothing",)},
        {"start": at(100)},
    ],
    ids=["all", "window", "attrs", "no-attr", "empty-window"],
)
def test_history_documents_match_the_instances(store: Store, window: dict[str, Any]) -> None:
    """The store's own JSON of a one-entity history decodes to what ``instances`` renders."""
    values: list[tuple[str, Any, str | None]] = [
        ("pressure", 31.25, "MTR"),
        ("pressure", 0.1 + 0.2, "MTR"),
        ("pressure", 1e-07, "MTR"),
        ("pressure", -2.0, "MTR"),
        ("pressure", 1e21, "MTR"),
        ("status", 'open "valve" ünïcode', None),
        ("status", True, None),
        ("status", {"nested": [1, None, "x"]}, None),
        ("flow", 12.0, None),
    ]
    rows = []
    for minute, (attr, value, unit) in enumerate(values):
        number = isinstance(value, float)
        rows.append(
            Observation(
                MIXED,
                "WaterObserved",
                attr,
                at(minute) + timedelta(microseconds=123_456),
                value if number else None,
                None if number else orjson.dumps(value).decode(),
                unit,
            )
        )
    rows.append(Observation(MIXED + "x", "WaterObserved", "pressure", at(3), 9.0, None, "MTR"))
    store.write("default", [], rows)
    query = ObservationQuery(entity_ids=(MIXED,), **window)
    expected = store.query_observations("default", query)
    docs = store.history_documents("default", query)
    assert docs.instances == len(expected)
    assert docs.entity_type == ("WaterObserved" if expected else None)
    got = {name: orjson.loads(array) for name, array in docs.attributes}
    want: dict[str, list[dict[str, Any]]] = {}
    for o in expected:
        want.setdefault(o.attribute, []).extend(instances([o]))
    assert got == want
    assert [name for name, _ in docs.attributes] == sorted(want)
    if not window:
        assert got["pressure"][0]["observedAt"] == "2026-03-01T08:00:00.123Z"


def test_prepared_writes_apply_in_order_in_one_go(store: Store) -> None:
    L1, L2 = light(1)["id"], light(2)["id"]  # noqa: N806
    first = store.prepare_write(
        "default", [stored(light(1, level=0.1)), stored(light(2))], [obs(L1, "x", 1)]
    )
    second = store.prepare_write(
        "default", [stored(light(1, level=0.9), modified=5)], [obs(L1, "x", 2)]
    )
    store.write_prepared([first, second])
    got = store.get_entities("default", [L1, L2])
    assert got[L1].entity == light(1, level=0.9)  # the later write wins
    assert got[L1].modified_at == at(5)
    assert L2 in got
    history = store.query_observations("default", ObservationQuery(entity_ids=(L1,)))
    assert [o.observed_at for o in history] == [at(1), at(2)]
    store.write_prepared([])  # nothing to do
