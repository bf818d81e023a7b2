"""Batch bodies admitted in worker processes give exactly what admission here gives."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pytest

from civica.app import domain_catalogue
from civica.core.bus import EventBus, ObservationsAdded
from civica.core.entity import observations
from civica.core.problems import Problem
from civica.core.readings import TIMESTAMP, readings_rows, timestamp_array
from civica.core.store import ObservationQuery
from civica.ingest.admission import MIN_OFFLOAD_BYTES, AdmissionPool, admit_body
from civica.ingest.pipeline import Ingest
from civica.privacy.gate import PrivacyGate
from civica.storage import DuckDBStore


@pytest.fixture(scope="module")
def pool() -> Iterator[AdmissionPool]:
    admission = AdmissionPool(PrivacyGate(domain_catalogue()), workers=1)
    yield admission
    admission.close()


def reading(n: int, **extra: Any) -> dict[str, Any]:
    return {
        "id": f"urn:ngsi-ld:WaterObserved:w{n}",
        "type": "WaterObserved",
        "pressure": {
            "type": "Property",
            "value": 30 + n % 7,
            "unitCode": "MTR",
            "observedAt": f"2026-03-01T08:{n % 60:02d}:00+01:00",
        },
        "flow": {"type": "Property", "value": 1.5, "unitCode": "G51"},  # L/s → m³/s
        **extra,
    }


def big_body(docs: list[Any]) -> bytes:
    body = orjson.dumps(docs)
    assert len(body) >= MIN_OFFLOAD_BYTES  # really sent to the worker
    return body


def summary(result: tuple[list[Any], list[tuple[str | None, Problem]]]) -> Any:
    good, errors = result
    return good, [(eid, p.kind, p.status, p.detail, p.to_dict()) for eid, p in errors]


def test_the_worker_admits_and_refuses_like_the_server(pool: AdmissionPool) -> None:
    docs: list[Any] = [reading(n) for n in range(300)]
    docs[7] = reading(7, faceEmbedding={"type": "Property", "value": [0.1, 0.2]})
    docs[8] = reading(8, pressure={"type": "Property", "value": 1e9, "unitCode": "MTR"})
    docs[9] = {"id": "not a uri", "type": "WaterObserved"}
    docs[10] = "not an entity"
    body = big_body(docs)
    here = admit_body(pool.gate, body, False, 10_000)
    *there, readings = pool.admit_body(body, False, 10_000)
    assert summary(there) == summary(here)
    good, errors = there
    # The worker made the readings too: the rows ingest would have made, same order.
    assert readings is not None
    rows = readings_rows(readings)
    made = [row for entity in good for row in observations(entity, rows[0].observed_at)]
    assert [r for r in rows if r.attribute == "pressure"] == [
        r for r in made if r.attribute == "pressure"
    ]
    assert len(rows) == len(made) == 2 * 296
    assert len(good) == 296 and len(errors) == 4
    assert good[0]["flow"]["value"] == pytest.approx(0.0015)  # converted to the canonical unit
    assert good[0]["pressure"]["observedAt"] == "2026-03-01T07:00:00.000Z"  # in UTC
    assert [p.kind.name for _, p in errors] == [
        "PrivacyViolation",
        "BadRequestData",
        "BadRequestData",
        "BadRequestData",
    ]


@pytest.mark.parametrize(
    ("body", "kind"),
    [
        (b"[" + b" " * MIN_OFFLOAD_BYTES + b"{", "InvalidRequest"),
        (orjson.dumps({"id": "x" * MIN_OFFLOAD_BYTES}), "BadRequestData"),
    ],
)
def test_a_refused_body_is_refused_whole(pool: AdmissionPool, body: bytes, kind: str) -> None:
    with pytest.raises(Problem) as refused:
        pool.admit_body(body, False, 10_000)
    assert refused.value.kind.name == kind
    assert refused.value.status == 400


def test_too_many_items(pool: AdmissionPool) -> None:
    with pytest.raises(Problem, match="at most 100 items"):
        pool.admit_body(big_body([reading(n) for n in range(300)]), False, 100)


def test_small_bodies_stay_here(pool: AdmissionPool) -> None:
    good, errors, readings = pool.admit_body(orjson.dumps([reading(1)]), False, 10_000)
    assert [e["id"] for e in good] == ["urn:ngsi-ld:WaterObserved:w1"] and errors == []
    assert readings is None  # ingest makes them itself


def test_ingest_with_workers_stores_every_reading_once(pool: AdmissionPool, tmp_path: Path) -> None:
    store = DuckDBStore(tmp_path / "w.duckdb")
    bus = EventBus()
    events: list[ObservationsAdded] = []
    bus.subscribe(lambda e: events.append(e) if isinstance(e, ObservationsAdded) else None)
    ingest = Ingest(store, pool.gate, bus, admission=pool)
    # w5 exists as another type: its entity is refused when merged, its readings not stored.
    ingest.upsert("default", [{"id": "urn:ngsi-ld:WaterObserved:w5", "type": "Device"}])
    out = ingest.upsert_body("default", big_body([reading(n) for n in range(300)]))
    assert [(eid, p.kind.name) for eid, p in out.errors] == [
        ("urn:ngsi-ld:WaterObserved:w5", "BadRequestData")
    ]
    assert len(out.created) == 299
    stored = store.query_observations("default", ObservationQuery(limit=10_000))
    assert len(stored) == 2 * 299
    assert "urn:ngsi-ld:WaterObserved:w5" not in {o.entity_id for o in stored}
    assert sorted(stored) == sorted(row for e in events for row in e.rows)
    again = ingest.upsert_body("default", big_body([reading(n) for n in range(6, 300)]))
    assert again.errors == [] and len(again.updated) == 294
    assert len(store.query_observations("default", ObservationQuery(limit=10_000))) == 2 * 593
    store.close()


T_SHARED = datetime(2026, 3, 1, 8, 0, 0, 123456, UTC)


@pytest.mark.parametrize(
    "values",
    [
        [],
        [T_SHARED] * 5,  # one object: a batch's modification time
        [T_SHARED + timedelta(microseconds=k * 1_234_567) for k in range(50)],
        [datetime(2026, 3, 1, 9, 30, tzinfo=timezone(timedelta(hours=2))), T_SHARED],
        [datetime(1900, 1, 1, tzinfo=UTC), datetime(2200, 12, 31, 23, 59, 59, 999999, UTC)],
        [T_SHARED, None],
        [datetime(2026, 3, 1, 9, 30), datetime(2026, 3, 1, 9, 31)],  # naive: as Arrow takes them
    ],
)
def test_timestamp_arrays_are_what_arrow_makes(values: list[datetime | None]) -> None:
    expected = pa.array(values, TIMESTAMP)
    made = timestamp_array(values)
    assert made.type == TIMESTAMP
    assert made.equals(expected)
