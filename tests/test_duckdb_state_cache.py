"""DuckDBStore's state cache: it never answers with anything but what the file holds."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from civica.core.geo import GeoQuery
from civica.core.store import EntityQuery, StoredEntity
from civica.storage import DuckDBStore, embedded

T0 = datetime(2026, 3, 1, tzinfo=UTC)
EID = "urn:ngsi-ld:WaterObserved:s1"


def state(pressure: float, lon: float = 4.35, minutes: int = 0, **extra: Any) -> StoredEntity:
    entity = {
        "id": EID,
        "type": "WaterObserved",
        "location": {"type": "GeoProperty", "value": {"type": "Point", "coordinates": [lon, 50.8]}},
        "pressure": {"type": "Property", "value": pressure, "unitCode": "MTR"},
        **extra,
    }
    return StoredEntity(entity, T0, T0 + timedelta(minutes=minutes))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[DuckDBStore]:
    s = DuckDBStore(tmp_path / "cache.duckdb")
    yield s
    s.close()


def from_file(store: DuckDBStore) -> dict[str, Any]:
    """The state as the file holds it, bypassing the cache."""
    reopened = DuckDBStore.__new__(DuckDBStore)
    reopened.__dict__.update(store.__dict__)
    reopened._states = embedded._StateCache(0)
    return reopened.get_entities("default", [EID])[EID].entity


def pressure(store: DuckDBStore) -> float:
    return float(store.get_entities("default", [EID])[EID].entity["pressure"]["value"])


def test_a_reading_updates_document_and_time_and_keeps_the_row_findable(
    store: DuckDBStore,
) -> None:
    store.write("default", [state(1.0)], [])
    for n in range(2, 5):  # same shape: only the document and modification time change
        store.write("default", [state(float(n), minutes=n)], [])
    got = store.get_entities("default", [EID])[EID]
    assert got.entity["pressure"]["value"] == 4.0
    assert got.modified_at == T0 + timedelta(minutes=4)
    assert from_file(store)["pressure"]["value"] == 4.0
    near = GeoQuery("near", {"type": "Point", "coordinates": [4.35, 50.8]}, max_distance=100)
    assert [s.id for s in store.query_entities("default", EntityQuery(geo=near)).items] == [EID]


def test_a_moved_entity_is_found_at_its_new_place(store: DuckDBStore) -> None:
    store.write("default", [state(1.0)], [])
    store.write("default", [state(1.0, lon=4.40, minutes=1)], [])
    old = GeoQuery("near", {"type": "Point", "coordinates": [4.35, 50.8]}, max_distance=100)
    new = GeoQuery("near", {"type": "Point", "coordinates": [4.40, 50.8]}, max_distance=100)
    assert store.query_entities("default", EntityQuery(geo=old)).items == []
    assert [s.id for s in store.query_entities("default", EntityQuery(geo=new)).items] == [EID]


def test_a_new_attribute_is_queryable(store: DuckDBStore) -> None:
    store.write("default", [state(1.0)], [])
    flow = {"type": "Property", "value": 0.1, "unitCode": "MQS"}
    store.write("default", [state(1.0, minutes=1, flow=flow)], [])
    page = store.query_entities("default", EntityQuery(attrs=("flow",)))
    assert [s.id for s in page.items] == [EID]
    assert "flow" in from_file(store)


def test_a_failed_write_leaves_no_trace_in_the_cache(
    store: DuckDBStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.write("default", [state(1.0)], [])
    store.write("default", [state(2.0, minutes=1, flow={"type": "Property", "value": 0.1})], [])

    def broken(*args: Any) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(embedded, "_replace_statements", broken)
    with pytest.raises(RuntimeError):
        store.write("default", [state(3.0, minutes=2)], [])  # attribute set changes: full path
    assert pressure(store) == 2.0
    assert from_file(store)["pressure"]["value"] == 2.0


def test_a_read_overtaken_by_a_write_does_not_fill_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "race.duckdb"
    first = DuckDBStore(path)
    first.write("default", [state(1.0)], [])
    first.close()
    store = DuckDBStore(path)  # empty cache: the next read goes to the file
    real = embedded._states_of
    calls = [0]

    def write_in_between(table: Any) -> Any:
        calls[0] += 1
        if calls[0] == 1:  # after the read, before the cache fill: a write lands
            store.write("default", [state(9.0, minutes=5)], [])
        return real(table)

    monkeypatch.setattr(embedded, "_states_of", write_in_between)
    assert pressure(store) == 1.0  # the read saw the file before the write
    monkeypatch.setattr(embedded, "_states_of", real)
    assert pressure(store) == 9.0  # and did not put its stale row in the cache
    store.close()


def test_deleted_entities_leave_the_cache(store: DuckDBStore) -> None:
    store.write("default", [state(1.0)], [])
    assert store.delete_entities("default", [EID]) == [EID]
    assert store.get_entities("default", [EID]) == {}
    store.write("default", [state(5.0)], [])
    assert pressure(store) == 5.0


def test_the_cache_is_bounded(tmp_path: Path) -> None:
    store = DuckDBStore(tmp_path / "small.duckdb", state_cache=16)
    many = [
        StoredEntity({"id": f"urn:ngsi-ld:Device:d{i}", "type": "Device"}, T0, T0)
        for i in range(100)
    ]
    store.write("default", many, [])
    assert len(store._states._rows) <= 16
    got = store.get_entities("default", [s.id for s in many])
    assert sorted(got) == sorted(s.id for s in many)
    store.close()


def test_warming_loads_the_most_recent_states_as_the_file_holds_them(tmp_path: Path) -> None:
    path = tmp_path / "warm.duckdb"
    first = DuckDBStore(path)
    for n in range(5):  # entity n last modified at minute n
        entity = {**state(float(n)).entity, "id": f"urn:ngsi-ld:WaterObserved:w{n}"}
        first.write("default", [StoredEntity(entity, T0, T0 + timedelta(minutes=n))], [])
    first.write("other", [state(7.0, minutes=9)], [])
    first.close()

    store = DuckDBStore(path, state_cache=3)
    assert store.warm_state_cache() == 3  # no more than the cache holds
    cache = store._states
    # The three most recently modified, whatever their tenant.
    assert cache.get("other", EID) is not None
    assert cache.get("default", "urn:ngsi-ld:WaterObserved:w4") is not None
    assert cache.get("default", "urn:ngsi-ld:WaterObserved:w3") is not None
    assert cache.get("default", "urn:ngsi-ld:WaterObserved:w2") is None
    warm = cache.get("default", "urn:ngsi-ld:WaterObserved:w4")
    assert warm is not None
    assert warm.modified_at == T0 + timedelta(minutes=4)
    assert warm.bbox == (4.35, 50.8, 4.35, 50.8)
    assert warm.attrs == ("location", "pressure")
    got = store.get_entities("default", ["urn:ngsi-ld:WaterObserved:w4"])
    assert got["urn:ngsi-ld:WaterObserved:w4"].entity["pressure"]["value"] == 4.0
    # A write after warming is what later reads see.
    store.write("other", [state(8.0, minutes=10)], [])
    assert store.get_entities("other", [EID])[EID].entity["pressure"]["value"] == 8.0
    store.close()


def test_warming_an_empty_or_cacheless_store_loads_nothing(tmp_path: Path) -> None:
    empty = DuckDBStore(tmp_path / "empty.duckdb")
    assert empty.warm_state_cache() == 0
    empty.write("default", [state(1.0)], [])
    empty.close()
    cacheless = DuckDBStore(tmp_path / "empty.duckdb", state_cache=0)
    assert cacheless.warm_state_cache() == 0
    assert pressure(cacheless) == 1.0
    cacheless.close()
