"""DuckDBStore's file format: older files are migrated in place; entity keys stay unique."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pytest

from civica.core.store import EntityQuery, StoredEntity
from civica.storage import DuckDBStore, embedded

T0 = datetime(2026, 3, 1, tzinfo=UTC)


def entity(n: int, pressure: float, tenant_tag: str = "") -> dict[str, Any]:
    return {
        "id": f"urn:ngsi-ld:WaterObserved:{tenant_tag}m{n}",
        "type": "WaterObserved",
        "pressure": {"type": "Property", "value": pressure, "unitCode": "MTR"},
    }


def v1_file(path: Path) -> None:
    """A database as Civica wrote it before entity keys (schema version 1)."""
    con = duckdb.connect(str(path))
    con.execute(
        "create table entities (tenant varchar not null, id varchar not null, "
        "type varchar not null, doc varchar not null, attrs varchar[] not null, "
        "min_lon double, min_lat double, max_lon double, max_lat double, "
        "created_at timestamptz not null, modified_at timestamptz not null, "
        "primary key (tenant, id))"
    )
    con.execute("create table schema_info (version integer not null)")
    con.execute("insert into schema_info values (1)")
    for tenant in ("default", "other"):
        for n in range(3):
            e = entity(n, float(n))
            con.execute(
                "insert into entities values (?, ?, ?, ?, ?, null, null, null, null, ?, ?)",
                [tenant, e["id"], e["type"], orjson.dumps(e).decode(), ["pressure"], T0, T0],
            )
    con.close()


def test_a_version_1_file_gets_entity_keys_and_keeps_working(tmp_path: Path) -> None:
    path = tmp_path / "old.duckdb"
    v1_file(path)
    store = DuckDBStore(path)
    con = store._con
    assert con.execute("select max(version) from schema_info").fetchall() == [(2,)]
    rows = con.execute("select tenant, id, entity_key from entities").fetchall()
    assert len(rows) == 6
    assert all(key == embedded.entity_key(tenant, eid) for tenant, eid, key in rows)
    # Readings update the right rows of the right tenant, by key.
    later = T0 + timedelta(minutes=5)
    store.write("other", [StoredEntity(entity(1, 9.0), T0, later)], [])
    store.write("other", [StoredEntity(entity(1, 10.0), T0, later + timedelta(minutes=1))], [])
    store.write("default", [StoredEntity(entity(7, 7.0), later, later)], [])  # a new one
    store.close()

    reopened = DuckDBStore(path, state_cache=0)  # answers from the file only
    page = reopened.query_entities("other", EntityQuery(limit=10))
    assert [s.entity["pressure"]["value"] for s in page.items] == [0.0, 10.0, 2.0]
    defaults = reopened.query_entities("default", EntityQuery(limit=10)).items
    assert [s.entity["pressure"]["value"] for s in defaults] == [0.0, 1.0, 2.0, 7.0]
    reopened.close()


def test_a_new_entity_that_would_share_a_key_is_refused_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = DuckDBStore(tmp_path / "keys.duckdb")
    store.write("default", [StoredEntity(entity(1, 1.0), T0, T0)], [])
    monkeypatch.setattr(embedded, "entity_key", lambda tenant, eid: 42)
    first = StoredEntity(entity(2, 2.0), T0, T0)
    with pytest.raises(ValueError, match="share an entity key"):  # two in one write
        store.write("default", [first, StoredEntity(entity(3, 3.0), T0, T0)], [])
    store.write("default", [first], [])  # key 42: nobody has it yet
    with pytest.raises(duckdb.Error, match="share an entity key"):  # one already stored has it
        store.write("default", [StoredEntity(entity(4, 4.0), T0, T0)], [])
    monkeypatch.undo()
    ids = [s.id for s in store.query_entities("default", EntityQuery(limit=10)).items]
    assert ids == [entity(1, 0)["id"], entity(2, 0)["id"]]
    assert (
        store.get_entities("default", [entity(2, 0)["id"]])[entity(2, 0)["id"]].entity["pressure"][
            "value"
        ]
        == 2.0
    )
    store.close()
