"""Recent observations move into the sorted history in the background while writes go on."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

from civica.core.entity import Observation
from civica.core.store import ObservationQuery, StoredEntity
from civica.storage import DuckDBStore

T0 = datetime(2026, 3, 1, tzinfo=UTC)


def reading(eid: str, n: int) -> Observation:
    return Observation(
        eid, "WaterObserved", "pressure", T0 + timedelta(seconds=n), float(n), None, "MTR"
    )


def test_writes_during_compactions_lose_and_double_nothing(tmp_path: Path) -> None:
    store = DuckDBStore(tmp_path / "c.duckdb", compact_rows=40)
    writers, batches, per_batch = 4, 60, 7
    runs = []
    real = store._compact

    def counted() -> None:
        runs.append(threading.current_thread().name)
        real()

    store._compact = counted  # type: ignore[method-assign]

    def writer(w: int) -> None:
        eid = f"urn:ngsi-ld:WaterObserved:w{w}"
        for b in range(batches):
            state = StoredEntity({"id": eid, "type": "WaterObserved"}, T0, T0)
            rows = [reading(eid, b * per_batch + k) for k in range(per_batch)]
            store.write("default", [state], rows)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    store.compact()  # whatever the last background run left behind
    con = store._con
    [(recent,)] = con.execute("select count(*) from observations_recent").fetchall()
    [(moved, distinct)] = con.execute(
        "select count(*), count(distinct (entity_id, observed_at)) from observations"
    ).fetchall()
    total = writers * batches * per_batch
    assert recent == 0
    assert runs.count("civica-compaction") >= 2  # compactions ran while the writers wrote
    assert moved == distinct == total
    for w in range(writers):
        eid = f"urn:ngsi-ld:WaterObserved:w{w}"
        rows = store.query_observations(
            "default", ObservationQuery(entity_ids=(eid,), limit=10_000)
        )
        assert [r.value_num for r in rows] == [float(n) for n in range(batches * per_batch)]
    store.close()


def test_a_store_closes_after_its_compaction_finishes(tmp_path: Path) -> None:
    path = tmp_path / "close.duckdb"
    store = DuckDBStore(path, compact_rows=5)
    eid = "urn:ngsi-ld:WaterObserved:x"
    state = StoredEntity({"id": eid, "type": "WaterObserved"}, T0, T0)
    store.write("default", [state], [reading(eid, n) for n in range(10)])  # starts one
    store.close()
    reopened = DuckDBStore(path)
    assert len(reopened.query_observations("default", ObservationQuery(limit=100))) == 10
    reopened.close()
