"""The one write path, ``Ingest``: batches, single-entity operations, history and events."""

from __future__ import annotations

import itertools
import random
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from civica.core.bus import EntityChanged, EventBus, ObservationsAdded
from civica.core.clock import FakeClock
from civica.core.ldcontext import DEFAULT_VOCAB, LdContext
from civica.core.problems import (
    ALREADY_EXISTS,
    BAD_REQUEST_DATA,
    PRIVACY_VIOLATION,
    RESOURCE_NOT_FOUND,
    Problem,
)
from civica.core.store import ObservationQuery, Store
from civica.ingest.pipeline import Ingest
from civica.storage import DuckDBStore, MemoryStore

T0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)
W1 = "urn:ngsi-ld:WaterObserved:w1"
W2 = "urn:ngsi-ld:WaterObserved:w2"
L1 = "urn:ngsi-ld:Streetlight:l1"


class Rig:
    """An Ingest over a store, with a fake clock and a recorder on the bus."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.clock = FakeClock(T0)
        self.bus = EventBus()
        self.events: list[EntityChanged] = []
        self.readings: list[ObservationsAdded] = []
        self.bus.subscribe(self._record)
        self.ingest = Ingest(store, bus=self.bus, clock=self.clock)

    def _record(self, event: object) -> None:
        if isinstance(event, EntityChanged):
            self.events.append(event)
        elif isinstance(event, ObservationsAdded):
            self.readings.append(event)

    def entity(self, eid: str, tenant: str = "default") -> dict[str, Any]:
        return self.store.get_entities(tenant, [eid])[eid].entity

    def history(self, tenant: str = "default", **kw: Any) -> list[tuple[str, str, Any, datetime]]:
        rows = self.store.query_observations(tenant, ObservationQuery(**kw))
        return [
            (
                o.entity_id,
                o.attribute,
                o.value_num if o.value_json is None else o.value_json,
                o.observed_at,
            )
            for o in rows
        ]


@pytest.fixture(params=["memory", "duckdb"])
def rig(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Rig]:
    store: Store = (
        MemoryStore() if request.param == "memory" else DuckDBStore(tmp_path / "p.duckdb")
    )
    yield Rig(store)
    store.close()


def prop(value: Any, **extra: Any) -> dict[str, Any]:
    return {"type": "Property", "value": value, **extra}


def water(eid: str = W1, **attrs: Any) -> dict[str, Any]:
    return {"id": eid, "type": "WaterObserved", **attrs}


def kinds(problems: list[tuple[str | None, Problem]]) -> list[tuple[str | None, str]]:
    return [(eid, p.kind.name) for eid, p in problems]


# ---- upsert -------------------------------------------------------------------------------


def test_upsert_creates_then_merges(rig: Rig) -> None:
    first = rig.ingest.upsert("default", [water(flow=prop(1.0), height=prop(2.0))])
    assert (first.created, first.updated, first.errors) == ([W1], [], [])
    rig.clock.advance(60)
    second = rig.ingest.upsert("default", [water(flow=prop(3.0))])
    assert (second.created, second.updated) == ([], [W1])
    assert second.success == [W1]
    assert rig.entity(W1) == water(flow=prop(3.0, unitCode="MQS"), height=prop(2.0, unitCode="MTR"))
    stored = rig.store.get_entities("default", [W1])[W1]
    assert stored.created_at == T0
    assert stored.modified_at == T0 + timedelta(seconds=60)


def test_upsert_replace_drops_attributes_not_sent(rig: Rig) -> None:
    rig.ingest.upsert("default", [water(flow=prop(1.0), height=prop(2.0))])
    rig.clock.advance(5)
    out = rig.ingest.upsert("default", [water(flow=prop(4.0))], replace=True)
    assert out.updated == [W1]
    assert rig.entity(W1) == water(flow=prop(4.0, unitCode="MQS"))
    assert rig.store.get_entities("default", [W1])[W1].created_at == T0


def test_upsert_records_only_what_each_write_sent(rig: Rig) -> None:
    rig.ingest.upsert("default", [water(flow=prop(1.0), height=prop(2.0))])
    rig.clock.advance(60)
    rig.ingest.upsert("default", [water(flow=prop(3.0, observedAt="2026-03-01T07:59:30Z"))])
    assert rig.history() == [
        (W1, "flow", 3.0, datetime(2026, 3, 1, 7, 59, 30, tzinfo=UTC)),
        (W1, "flow", 1.0, T0),
        (W1, "height", 2.0, T0),
    ]


def test_the_same_entity_twice_in_one_batch_keeps_both_readings(rig: Rig) -> None:
    out = rig.ingest.upsert(
        "default",
        [
            water(flow=prop(1.0, observedAt="2026-03-01T07:00:00Z")),
            water(height=prop(5.0)),
            water(flow=prop(2.0, observedAt="2026-03-01T07:15:00Z")),
        ],
    )
    assert (out.created, out.updated, out.errors) == ([W1], [], [])
    assert rig.entity(W1)["flow"]["value"] == 2.0
    assert rig.entity(W1)["height"]["value"] == 5.0
    assert [(a, v) for _, a, v, _ in rig.history()] == [
        ("flow", 1.0),
        ("flow", 2.0),
        ("height", 5.0),
    ]
    [event] = rig.events
    assert event.created
    assert event.changed == {"flow", "height"}
    # The state event holds only the last flow; the readings event holds every reading.
    [readings] = rig.readings
    assert readings.tenant == "default"
    assert sorted((r.attribute, r.value_num) for r in readings.rows) == [
        ("flow", 1.0),
        ("flow", 2.0),
        ("height", 5.0),
    ]


def test_the_same_entity_twice_in_an_update_batch_keeps_both_readings(rig: Rig) -> None:
    rig.ingest.create("default", [water(flow=prop(0.5))])
    rig.clock.advance(1)
    out = rig.ingest.update("default", [water(flow=prop(1.0)), water(height=prop(5.0))])
    assert out.updated == [W1]
    assert [(a, v) for _, a, v, _ in rig.history()] == [
        ("flow", 0.5),
        ("flow", 1.0),
        ("height", 5.0),
    ]
    assert rig.events[-1].changed == {"flow", "height"}


def test_key_values_are_detected_or_forced(rig: Rig) -> None:
    kv = {"id": W1, "type": "WaterObserved", "flow": 2.5}
    auto = rig.ingest.upsert("default", [kv], key_values=None)
    assert auto.created == [W1]
    assert rig.entity(W1)["flow"] == prop(2.5, unitCode="MQS")
    strict = rig.ingest.upsert("default", [{**kv, "id": W2}])  # default: normalized only
    assert kinds(strict.errors) == [(W2, "BadRequestData")]
    forced = rig.ingest.upsert("default", [{**kv, "id": W2}], key_values=True)
    assert forced.created == [W2]


def test_one_bad_entity_does_not_spoil_the_batch(rig: Rig) -> None:
    out = rig.ingest.upsert(
        "default",
        [
            water(W1, flow=prop(1.0)),
            water(W2, flow=prop(1.0), licensePlate=prop("1-ABC-123")),
            {"id": "urn:ngsi-ld:Spaceship:1", "type": "Spaceship"},
            "not an object",
            {"type": "WaterObserved"},
            water("urn:ngsi-ld:WaterObserved:w3", flow=prop(1e9)),
        ],
    )
    assert out.created == [W1]
    assert kinds(out.errors) == [
        (W2, "PrivacyViolation"),
        ("urn:ngsi-ld:Spaceship:1", "BadRequestData"),
        (None, "BadRequestData"),
        (None, "BadRequestData"),
        ("urn:ngsi-ld:WaterObserved:w3", "BadRequestData"),
    ]
    assert rig.store.get_entities("default", [W2]) == {}
    assert [e.entity["id"] for e in rig.events] == [W1]
    assert [a for _, a, _, _ in rig.history()] == ["flow"]


def test_a_refused_attribute_refuses_the_whole_entity(rig: Rig) -> None:
    out = rig.ingest.upsert("default", [water(flow=prop(1.0), faceCount=prop(3))])
    assert out.created == []
    assert out.errors[0][1].kind is PRIVACY_VIOLATION
    assert rig.history() == []
    assert rig.events == []


def test_type_clash(rig: Rig) -> None:
    rig.ingest.upsert("default", [water(flow=prop(1.0))])
    out = rig.ingest.upsert("default", [{"id": W1, "type": "Device", "name": prop("x")}])
    assert kinds(out.errors) == [(W1, "BadRequestData")]
    assert "type" in out.errors[0][1].detail
    assert rig.entity(W1)["type"] == "WaterObserved"


def test_tenants_are_separate(rig: Rig) -> None:
    rig.ingest.upsert("a", [water(flow=prop(1.0))])
    out = rig.ingest.update("b", [water(flow=prop(2.0))])
    assert kinds(out.errors) == [(W1, "ResourceNotFound")]
    assert rig.ingest.create("b", [water(flow=prop(3.0))]).created == [W1]
    assert rig.entity(W1, "a")["flow"]["value"] == 1.0
    assert rig.entity(W1, "b")["flow"]["value"] == 3.0
    assert [e.tenant for e in rig.events] == ["a", "b"]


def test_upsert_under_a_context(rig: Rig) -> None:
    ctx = LdContext.from_terms({"debit": DEFAULT_VOCAB + "flow"})
    rig.ingest.upsert("default", [water(debit=prop(1.0))], ctx)
    assert "flow" in rig.entity(W1)
    assert "debit" not in rig.entity(W1)


# ---- create / update / delete -------------------------------------------------------------


def test_create_refuses_existing_and_duplicate_ids(rig: Rig) -> None:
    rig.ingest.create("default", [water(W1, flow=prop(1.0))])
    out = rig.ingest.create(
        "default", [water(W1, flow=prop(9.0)), water(W2, flow=prop(2.0)), water(W2, flow=prop(3.0))]
    )
    assert out.created == [W2]
    assert [(e, p.kind) for e, p in out.errors] == [(W1, ALREADY_EXISTS), (W2, ALREADY_EXISTS)]
    assert rig.entity(W1)["flow"]["value"] == 1.0
    assert rig.entity(W2)["flow"]["value"] == 2.0


def test_update_needs_an_existing_entity_and_can_refuse_to_overwrite(rig: Rig) -> None:
    rig.ingest.create("default", [water(flow=prop(1.0))])
    rig.events.clear()
    missing = rig.ingest.update("default", [water(W2, flow=prop(1.0))])
    assert [(e, p.kind) for e, p in missing.errors] == [(W2, RESOURCE_NOT_FOUND)]
    rig.clock.advance(10)
    kept = rig.ingest.update(
        "default", [water(flow=prop(7.0), height=prop(3.0))], no_overwrite=True
    )
    assert kept.updated == [W1]
    assert rig.entity(W1)["flow"]["value"] == 1.0
    assert rig.entity(W1)["height"]["value"] == 3.0
    assert [(a, v) for _, a, v, _ in rig.history()] == [("flow", 1.0), ("height", 3.0)]
    [event] = rig.events
    assert event.changed == {"height"}
    assert not event.created


def test_delete(rig: Rig) -> None:
    rig.ingest.create("default", [water(W1, flow=prop(1.0)), water(W2, flow=prop(2.0))])
    rig.events.clear()
    out = rig.ingest.delete("default", [W2, "urn:ngsi-ld:WaterObserved:none", "not an id", 7])
    assert out.updated == [W2]
    assert kinds(out.errors) == [
        ("not an id", "BadRequestData"),
        (None, "BadRequestData"),
        ("urn:ngsi-ld:WaterObserved:none", "ResourceNotFound"),
    ]
    assert rig.store.get_entities("default", [W2]) == {}
    assert [v for e, _, v, _ in rig.history() if e == W2] == [2.0]  # history stays
    [event] = rig.events
    assert (event.deleted, event.created, event.changed) == (True, False, frozenset())
    assert event.entity["id"] == W2


# ---- single-entity operations -------------------------------------------------------------


def test_replace_entity(rig: Rig) -> None:
    rig.ingest.create("default", [water(flow=prop(1.0), height=prop(2.0))])
    rig.clock.advance(30)
    rig.ingest.replace_entity("default", W1, {"flow": prop(5.0)})
    assert rig.entity(W1) == water(flow=prop(5.0, unitCode="MQS"))
    stored = rig.store.get_entities("default", [W1])[W1]
    assert (stored.created_at, stored.modified_at) == (T0, T0 + timedelta(seconds=30))
    assert rig.events[-1].changed == {"flow"}


@pytest.mark.parametrize(
    ("eid", "doc", "kind"),
    [
        (W1, {"id": W2, "flow": {"type": "Property", "value": 1.0}}, BAD_REQUEST_DATA),
        (W1, {"type": "Device", "name": {"type": "Property", "value": "x"}}, BAD_REQUEST_DATA),
        (W1, [], BAD_REQUEST_DATA),
        (W2, {"flow": {"type": "Property", "value": 1.0}}, RESOURCE_NOT_FOUND),
        (W1, {"colour": {"type": "Property", "value": "red"}}, BAD_REQUEST_DATA),
    ],
)
def test_replace_entity_errors(rig: Rig, eid: str, doc: Any, kind: Any) -> None:
    rig.ingest.create("default", [water(flow=prop(1.0))])
    with pytest.raises(Problem) as err:
        rig.ingest.replace_entity("default", eid, doc)
    assert err.value.kind is kind
    assert rig.entity(W1)["flow"]["value"] == 1.0


@pytest.mark.parametrize(
    ("mode", "skipped", "flow", "height"),
    [
        ("append", [], 9.0, 4.0),
        ("noOverwrite", ["flow"], 1.0, 4.0),
        ("update", ["height"], 9.0, None),
    ],
)
def test_write_attributes_modes(
    rig: Rig, mode: str, skipped: list[str], flow: float, height: float | None
) -> None:
    rig.ingest.create("default", [water(flow=prop(1.0))])
    rig.events.clear()
    result = rig.ingest.write_attributes(
        "default", W1, {"flow": prop(9.0), "height": prop(4.0)}, mode=mode
    )
    assert result == skipped
    assert rig.entity(W1)["flow"]["value"] == flow
    assert rig.entity(W1).get("height", {}).get("value") == height
    written = {"flow", "height"} - set(skipped)
    [event] = rig.events
    assert event.changed == written
    assert sorted(a for _, a, _, _ in rig.history()) == sorted(["flow", *written])


def test_write_attributes_with_nothing_to_do_writes_nothing(rig: Rig) -> None:
    rig.ingest.create("default", [water(flow=prop(1.0))])
    rig.events.clear()
    rig.clock.advance(5)
    assert rig.ingest.write_attributes("default", W1, {"flow": prop(2.0)}, mode="noOverwrite") == [
        "flow"
    ]
    assert rig.events == []
    assert rig.store.get_entities("default", [W1])[W1].modified_at == T0


def test_write_attributes_key_values_context_and_errors(rig: Rig) -> None:
    rig.ingest.create("default", [water(flow=prop(1.0))])
    ctx = LdContext.from_terms(
        {"debit": DEFAULT_VOCAB + "flow", "niveau": DEFAULT_VOCAB + "height"}
    )
    skipped = rig.ingest.write_attributes(
        "default", W1, {"debit": 2.0, "niveau": 1.0}, ctx, key_values=True, mode="noOverwrite"
    )
    assert skipped == ["debit"]  # reported in the client's own terms
    assert rig.entity(W1)["height"]["value"] == 1.0
    for fragment, kind in (
        ([], BAD_REQUEST_DATA),
        ({}, BAD_REQUEST_DATA),
        ({"id": W1}, BAD_REQUEST_DATA),
        ({"macAddress": prop("x")}, PRIVACY_VIOLATION),
        ({"flow": prop("fast")}, BAD_REQUEST_DATA),
    ):
        with pytest.raises(Problem) as err:
            rig.ingest.write_attributes("default", W1, fragment)
        assert err.value.kind is kind
    with pytest.raises(Problem) as missing:
        rig.ingest.write_attributes("default", W2, {"flow": prop(1.0)})
    assert missing.value.kind is RESOURCE_NOT_FOUND


def test_patch_attribute_merges_and_put_replaces(rig: Rig) -> None:
    rig.ingest.create(
        "default",
        [water(flow=prop(1.0, observedAt="2026-03-01T07:00:00Z", accuracy=prop(0.1)))],
    )
    rig.clock.advance(60)
    rig.ingest.patch_attribute("default", W1, "flow", {"value": 36.0, "unitCode": "MQH"})
    merged = rig.entity(W1)["flow"]
    assert merged["value"] == pytest.approx(0.01)
    assert merged["unitCode"] == "MQS"
    assert merged["observedAt"] == "2026-03-01T07:00:00.000Z"
    assert merged["accuracy"] == prop(0.1)
    rig.ingest.patch_attribute(
        "default", W1, "flow", {"type": "Property", "value": 2.0}, replace=True
    )
    assert rig.entity(W1)["flow"] == prop(2.0, unitCode="MQS")
    assert sorted(v for _, _, v, _ in rig.history()) == pytest.approx([0.01, 1.0, 2.0])
    assert [e.changed for e in rig.events[-2:]] == [{"flow"}, {"flow"}]


@pytest.mark.parametrize(
    ("name", "fragment", "replace", "kind"),
    [
        ("height", {"value": 1.0}, False, RESOURCE_NOT_FOUND),
        ("type", {"value": "Device"}, False, RESOURCE_NOT_FOUND),
        ("id", {"value": "urn:x:1"}, False, RESOURCE_NOT_FOUND),
        ("type", {"type": "Property", "value": "Device"}, True, RESOURCE_NOT_FOUND),
        ("flow", {"value": 1e9}, False, BAD_REQUEST_DATA),
        ("flow", {"value": None}, False, BAD_REQUEST_DATA),
        ("flow", {"faceCount": {"type": "Property", "value": 1}}, False, PRIVACY_VIOLATION),
        ("flow", "fast", False, BAD_REQUEST_DATA),
    ],
)
def test_patch_attribute_errors(
    rig: Rig, name: str, fragment: Any, replace: bool, kind: Any
) -> None:
    rig.ingest.create("default", [water(flow=prop(1.0))])
    with pytest.raises(Problem) as err:
        rig.ingest.patch_attribute("default", W1, name, fragment, replace=replace)
    assert err.value.kind is kind
    assert rig.entity(W1) == water(flow=prop(1.0, unitCode="MQS"))


def test_delete_attribute(rig: Rig) -> None:
    rig.ingest.create("default", [water(flow=prop(1.0), height=prop(2.0))])
    rig.clock.advance(1)
    rig.ingest.delete_attribute("default", W1, "height")
    assert rig.entity(W1) == water(flow=prop(1.0, unitCode="MQS"))
    assert rig.store.get_entities("default", [W1])[W1].modified_at == T0 + timedelta(seconds=1)
    event = rig.events[-1]
    assert event.changed == {"height"}
    assert "height" not in event.entity
    assert len(rig.history()) == 2  # deleting an attribute records no reading
    for name in ("height", "id", "type", "nothing"):
        with pytest.raises(Problem) as err:
            rig.ingest.delete_attribute("default", W1, name)
        assert err.value.kind is RESOURCE_NOT_FOUND
    with pytest.raises(Problem):
        rig.ingest.delete_attribute("default", W2, "flow")


# ---- the bus ------------------------------------------------------------------------------


def test_events_carry_the_new_state(rig: Rig) -> None:
    rig.ingest.upsert("default", [water(flow=prop(1.0), height=prop(2.0))])
    rig.ingest.upsert("default", [water(flow=prop(3.0))])
    created, updated = rig.events
    assert created.created
    assert created.changed == {"flow", "height"}
    assert not updated.created
    assert updated.changed == {"flow"}
    assert updated.entity["height"]["value"] == 2.0
    assert updated.entity["flow"]["value"] == 3.0


def test_a_failing_consumer_does_not_break_ingest(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(event: Any) -> None:
        raise RuntimeError("consumer down")

    rig.bus.subscribe(broken)
    later: list[Any] = []
    rig.bus.subscribe(later.append)
    out = rig.ingest.upsert("default", [water(flow=prop(1.0))])
    assert out.created == [W1]
    assert rig.entity(W1)["flow"]["value"] == 1.0
    # Both events (the readings, then the new state) still reached the next consumer.
    assert [type(e) for e in later] == [ObservationsAdded, EntityChanged]
    assert "consumer down" in caplog.text


# ---- concurrent upserts are combined -----------------------------------------------------


def test_concurrent_upserts_each_get_their_own_outcome(rig: Rig) -> None:
    """Sixteen callers at once, overlapping ids: each entity is reported created exactly once,
    every reading is kept, and the stored state has every attribute someone sent."""
    import threading

    names = ["pressure", "flow", "temperature", "height"]
    barrier = threading.Barrier(16)
    outcomes: list[Any] = [None] * 16
    unpublished: list[Any] = [None] * 16
    jitter = random.Random(7)
    # A slow consumer, so that one group's events are still going out while the next is written.
    rig.bus.subscribe(lambda event: time.sleep(jitter.random() / 500))

    def caller(n: int) -> None:
        docs = [
            water(f"urn:ngsi-ld:WaterObserved:c{(n + k) % 20}", **{names[n % 4]: prop(float(n))})
            for k in range(5)
        ]
        barrier.wait()
        outcomes[n] = rig.ingest.upsert("default", docs)
        # A caller hears back only once the events of its write are published.
        published = {
            (o.entity_id, o.attribute, o.value_num) for e in list(rig.readings) for o in e.rows
        }
        unpublished[n] = [
            d["id"] for d in docs if (d["id"], names[n % 4], float(n)) not in published
        ]

    threads = [threading.Thread(target=caller, args=(n,)) for n in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    created = [eid for out in outcomes for eid in out.created]
    updated = [eid for out in outcomes for eid in out.updated]
    assert [out.errors for out in outcomes] == [[]] * 16
    assert sorted(created) == sorted(set(created))  # nobody else also says 'created'
    assert len(created) + len(updated) == 16 * 5
    assert set(created) == {f"urn:ngsi-ld:WaterObserved:c{i}" for i in range(20)}
    assert sum(len(e.rows) for e in rig.readings) == 16 * 5
    for i in range(20):
        eid = f"urn:ngsi-ld:WaterObserved:c{i}"
        senders = [n for n in range(16) if (i - n) % 20 < 5]
        assert set(rig.entity(eid)) - {"id", "type"} == {names[n % 4] for n in senders}
    assert len(rig.history()) == 16 * 5
    assert unpublished == [[]] * 16
    # Events come in write order: each entity's published states only ever gain attributes.
    for i in range(20):
        eid = f"urn:ngsi-ld:WaterObserved:c{i}"
        shapes = [set(e.entity) for e in rig.events if e.entity["id"] == eid]
        assert all(a <= b for a, b in itertools.pairwise(shapes)), shapes


def test_a_merge_never_changes_the_state_it_merged_on(rig: Rig) -> None:
    """The DuckDB store hands merges the states it keeps (``shared=True``), not copies: a
    merge must build new documents, and a plain read must still get its own copy."""
    import copy

    rig.ingest.upsert("default", [water(pressure=prop(1.0), flow=prop(0.2))])
    kept = rig.store.get_entities("default", [W1], shared=True)[W1]
    before = copy.deepcopy(kept.entity)
    rig.ingest.upsert("default", [water(pressure=prop(2.0))])
    rig.ingest.upsert("default", [water(flow=prop(0.3), temperature=prop(11.0))], replace=True)
    assert kept.entity == before
    assert values(rig.entity(W1)) == {"flow": 0.3, "temperature": 11.0}
    mine = rig.store.get_entities("default", [W1])[W1]
    mine.entity["flow"]["value"] = 99.0
    mine.entity.pop("temperature")
    assert values(rig.entity(W1)) == {"flow": 0.3, "temperature": 11.0}


def values(entity: dict[str, Any]) -> dict[str, Any]:
    return {k: v["value"] for k, v in entity.items() if k not in ("id", "type")}


def test_upserts_begun_in_turn_are_written_in_turn(rig: Rig) -> None:
    """``begin_upsert`` merges now and writes on ``finish``: the second is merged on the
    first before either is written, and whoever finishes first writes both, in order."""
    first = rig.ingest.begin_upsert("default", [rig.ingest.admit(water(pressure=prop(1.0)))])
    second = rig.ingest.begin_upsert("default", [rig.ingest.admit(water(flow=prop(0.5)))])
    assert W1 not in rig.store.get_entities("default", [W1])  # nothing written yet
    assert second.finish().updated == [W1]
    assert first.finish().created == [W1]
    assert values(rig.entity(W1)) == {"pressure": 1.0, "flow": 0.5}
    assert [(e.created, sorted(e.changed)) for e in rig.events] == [
        (True, ["pressure"]),
        (False, ["flow"]),
    ]


class _FailOnce:
    """Wraps a store: its next ``write_prepared`` fails."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.armed = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    def write_prepared(self, writes: Any) -> None:
        if self.armed:
            self.armed = False
            raise OSError("database unavailable")
        self.store.write_prepared(writes)


def test_an_upsert_merged_after_a_failed_write_can_be_abandoned(rig: Rig) -> None:
    """What the MQTT consumer does when a batch fails while the next is merged: the next was
    merged on the stored state, but it must not be written before the failed one is sent
    again. Abandoned, it is not written and leaves nothing behind."""
    store = _FailOnce(rig.store)
    ingest = Ingest(store, bus=rig.bus, clock=rig.clock)  # type: ignore[arg-type]
    ingest.upsert("default", [water(pressure=prop(1.0))])
    store.armed = True
    failed = ingest.begin_upsert("default", [ingest.admit(water(pressure=prop(2.0)))])
    with pytest.raises(OSError):
        failed.finish()
    later = ingest.begin_upsert("default", [ingest.admit(water(flow=prop(0.5)))])
    with pytest.raises(Problem) as refused:
        later.abandon()
    assert refused.value.kind.name == "WriteNotStored"
    assert values(rig.entity(W1)) == {"pressure": 1.0}
    assert [(a, v) for _e, a, v, _t in rig.history()] == [("pressure", 1.0)]
    # Sent again in order, both are stored; nothing abandoned lingers in the merge state.
    ingest.upsert("default", [water(pressure=prop(2.0))])
    ingest.upsert("default", [water(flow=prop(0.5))])
    assert values(rig.entity(W1)) == {"pressure": 2.0, "flow": 0.5}
    assert len(rig.history()) == 3
    # Abandoning an upsert that is written already changes nothing and gives its outcome.
    done = ingest.begin_upsert("default", [ingest.admit(water(flow=prop(0.7)))])
    assert done.finish().updated == [W1]
    assert done.abandon().updated == [W1]
    assert values(rig.entity(W1)) == {"pressure": 2.0, "flow": 0.7}
