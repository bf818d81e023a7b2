"""MQTT ingest against the real Mosquitto: messages in, entities, observations and dead letters out.

Each test has its own topic root, tenant and shared-subscription group, so parallel runs and
earlier tests never see each other's messages.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from civica.core.bus import EntityChanged
from civica.core.entity import Observation
from civica.core.store import DeadLetter, EntityQuery, ObservationQuery, Store, StoredEntity
from civica.ingest.mqtt import MqttIngest
from civica.ingest.pipeline import Ingest
from civica.storage import DuckDBStore, MemoryStore
from tests.conftest import REQUIRE_SERVICES, service_available

MQTT_URL = os.environ.get("CIVICA_MQTT_URL", "mqtt://127.0.0.1:1883")
WATER = "WaterObserved"
services = pytest.mark.services


def sensor(n: int) -> str:
    return f"urn:ngsi-ld:{WATER}:sensor-{n}"


# ---- fixtures --------------------------------------------------------------------------------
@pytest.fixture
def mqtt_url() -> str:
    """The broker; skips (or fails under CIVICA_REQUIRE_SERVICES=1) when it is not reachable."""
    parts = urlsplit(MQTT_URL)
    service_available(parts.hostname or "127.0.0.1", parts.port or 1883, "Mosquitto")
    return MQTT_URL


@pytest.fixture
def root() -> str:
    return f"civica-test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def tenant() -> str:
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[DuckDBStore]:
    db = DuckDBStore(tmp_path / "civica.duckdb")
    yield db
    db.close()


Publish = Callable[[str, Any], None]


@pytest.fixture
def publish(mqtt_url: str) -> Iterator[Publish]:
    """Publish at QoS 1 and wait for the broker's PUBACK; objects are sent as JSON."""
    parts = urlsplit(mqtt_url)
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.max_inflight_messages_set(1000)
    client.connect(parts.hostname or "127.0.0.1", parts.port or 1883)
    client.loop_start()

    def send(topic: str, payload: Any) -> None:
        body = payload if isinstance(payload, bytes) else orjson.dumps(payload)
        info = client.publish(topic, body, qos=1)
        info.wait_for_publish(timeout=10)
        assert info.is_published(), f"the broker did not take {topic}"

    yield send
    client.disconnect()
    client.loop_stop()


Consumers = Callable[..., MqttIngest]


@pytest.fixture
def consumer(mqtt_url: str, root: str) -> Iterator[Consumers]:
    """Start MqttIngest consumers on this test's topic root; all are stopped afterwards."""
    started: list[MqttIngest] = []
    group = f"g-{uuid.uuid4().hex[:12]}"

    def make(store: Store, **options: Any) -> MqttIngest:
        options.setdefault("group", group)
        options.setdefault("linger", 0.02)
        ingest = options.pop("ingest", None) or Ingest(store)
        running = MqttIngest(ingest, mqtt_url, topic_root=root, **options)
        running.start()
        started.append(running)
        return running

    yield make
    for running in started:
        running.stop()


def wait_for(check: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def settled(running: MqttIngest, count: int) -> Callable[[], bool]:
    def check() -> bool:
        stats = running.stats()
        return stats.accepted + stats.dead_lettered >= count

    return check


def entities(store: Store, tenant: str) -> dict[str, StoredEntity]:
    page = store.query_entities(tenant, EntityQuery(limit=1000))
    return {s.id: s for s in page.items}


def readings(store: Store, tenant: str, attr: str = "pressure") -> list[Observation]:
    return store.query_observations(tenant, ObservationQuery(attrs=(attr,)))


def letters(store: Store) -> list[DeadLetter]:
    return store.dead_letters(limit=1000)


WithWorker = tuple[Ingest, list[int]]


@pytest.fixture
def with_worker(store: DuckDBStore) -> Iterator[WithWorker]:
    """What ``civica serve`` builds: the app's Ingest with one admission worker, and the sizes
    of the bodies sent to it. (Listed before ``consumer``, so it closes after the consumers.)"""
    from civica.app import build_services
    from civica.ingest.admission import AdmissionPool

    ingest = build_services(store).ingest
    pool = ingest.admission = AdmissionPool(ingest.gate, 1)
    bodies: list[int] = []
    submit = pool.submit_body

    def counted(raw: bytes, key_values: bool | None, max_batch: int) -> Any:
        bodies.append(len(raw))
        return submit(raw, key_values, max_batch)

    pool.submit_body = counted  # type: ignore[method-assign]
    yield ingest, bodies
    pool.close()


# ---- what gets stored ------------------------------------------------------------------------
@services
def test_normalized_and_key_values_messages_are_stored(
    store: DuckDBStore, consumer: Consumers, publish: Publish, root: str, tenant: str
) -> None:
    running = consumer(store)
    observed = "2024-05-01T10:00:00Z"
    normalized = {
        "id": sensor(1),
        "type": WATER,
        "pressure": {"type": "Property", "value": 3.5, "unitCode": "MTR", "observedAt": observed},
        "location": {
            "type": "GeoProperty",
            "value": {"type": "Point", "coordinates": [4.35, 50.85]},
        },
    }
    key_values = {"id": sensor(2), "type": WATER, "pressure": 4.25, "flow": 0.5}
    publish(f"{root}/{tenant}/{WATER}/{sensor(1)}", normalized)
    publish(f"{root}/{tenant}/{WATER}/{sensor(2)}", key_values)
    wait_for(settled(running, 2), "two messages")

    assert running.stats().accepted == 2
    stored = entities(store, tenant)
    assert set(stored) == {sensor(1), sensor(2)}
    assert stored[sensor(1)].entity["location"]["value"]["coordinates"] == [4.35, 50.85]
    assert stored[sensor(2)].entity["flow"] == {"type": "Property", "value": 0.5, "unitCode": "MQS"}
    pressure = {o.entity_id: o for o in readings(store, tenant)}
    assert pressure[sensor(1)].value_num == 3.5
    assert pressure[sensor(1)].observed_at == datetime(2024, 5, 1, 10, tzinfo=UTC)
    assert pressure[sensor(2)].value_num == 4.25
    assert pressure[sensor(2)].unit == "MTR"
    assert letters(store) == []


@services
def test_a_list_payload_stores_every_item_and_takes_the_type_from_the_topic(
    store: DuckDBStore, consumer: Consumers, publish: Publish, root: str, tenant: str
) -> None:
    running = consumer(store)
    items = [{"id": sensor(n), "pressure": 10.0 + n} for n in range(5)]
    publish(f"{root}/{tenant}/{WATER}/gateway-7", items)
    wait_for(settled(running, 1), "the list")

    stored = entities(store, tenant)
    assert sorted(stored) == sorted(sensor(n) for n in range(5))
    assert {s.type for s in stored.values()} == {WATER}
    assert sorted(o.value_num for o in readings(store, tenant)) == [10.0, 11.0, 12.0, 13.0, 14.0]
    assert running.stats().entities == 5


@services
def test_id_and_type_come_from_the_topic_and_must_agree_with_it(
    store: DuckDBStore, consumer: Consumers, publish: Publish, root: str, tenant: str
) -> None:
    running = consumer(store)
    publish(f"{root}/{tenant}/{WATER}/{sensor(1)}", {"pressure": 4.2})
    publish(f"{root}/{tenant}/{WATER}/{sensor(2)}", {"id": sensor(3), "pressure": 1.0})
    publish(f"{root}/{tenant}/{WATER}/{sensor(4)}", {"type": "Streetlight", "pressure": 1.0})
    wait_for(settled(running, 3), "three messages")

    assert list(entities(store, tenant)) == [sensor(1)]
    assert entities(store, tenant)[sensor(1)].type == WATER
    reasons = sorted(d.reason for d in letters(store))
    assert len(reasons) == 2
    assert "payload id" in reasons[0] and sensor(2) in reasons[0]
    assert "payload type 'Streetlight'" in reasons[1]
    assert running.stats().dead_lettered == 2


# ---- dead letters ----------------------------------------------------------------------------
@services
def test_malformed_json_is_dead_lettered_and_the_consumer_keeps_going(
    store: DuckDBStore, consumer: Consumers, publish: Publish, root: str, tenant: str
) -> None:
    running = consumer(store)
    topic = f"{root}/{tenant}/{WATER}/{sensor(1)}"
    publish(topic, b'{"pressure": 3.5,,')
    wait_for(settled(running, 1), "the malformed message")
    publish(topic, {"pressure": 3.5})
    publish(topic, b"42")
    wait_for(settled(running, 3), "the later messages")

    assert [o.value_num for o in readings(store, tenant)] == [3.5]
    dead = sorted(letters(store), key=lambda d: d.reason)
    assert [d.reason.split(":")[0] for d in dead] == [
        "malformed JSON",
        "the payload must be a JSON object or a list of objects",
    ]
    assert dead[0].payload == '{"pressure": 3.5,,'
    assert dead[0].topic == topic
    assert dead[0].source == "mqtt"
    assert dead[0].tenant == tenant
    stats = running.stats()
    assert (stats.received, stats.accepted, stats.dead_lettered) == (3, 1, 2)
    assert (stats.dead_letters, stats.entities, stats.pending) == (2, 1, 0)


@services
def test_a_forbidden_attribute_is_refused_by_name(
    store: DuckDBStore, consumer: Consumers, publish: Publish, root: str, tenant: str
) -> None:
    running = consumer(store)
    payload = {"pressure": 2.0, "macAddress": "00:11:22:33:44:55"}
    publish(f"{root}/{tenant}/{WATER}/{sensor(1)}", payload)
    wait_for(settled(running, 1), "the message")

    assert entities(store, tenant) == {}
    [dead] = letters(store)
    assert "macAddress" in dead.reason
    assert orjson.loads(dead.payload) == payload


@services
def test_a_bad_topic_is_dead_lettered(
    store: DuckDBStore, consumer: Consumers, publish: Publish, root: str
) -> None:
    running = consumer(store)
    publish(f"{root}/not a tenant!/{WATER}/{sensor(1)}", {"pressure": 2.0})
    wait_for(settled(running, 1), "the message")

    [dead] = letters(store)
    assert "tenant 'not a tenant!'" in dead.reason
    assert dead.topic == f"{root}/not a tenant!/{WATER}/{sensor(1)}"


@services
def test_bad_entities_do_not_keep_good_ones_out(
    store: DuckDBStore, consumer: Consumers, publish: Publish, root: str, tenant: str
) -> None:
    # A long linger puts everything in one batch, so one upsert holds good and bad together.
    running = consumer(store, linger=0.5)
    topic = f"{root}/{tenant}/{WATER}"
    publish(
        f"{topic}/gw",
        [
            {"id": sensor(1), "pressure": 1.0},
            {"id": sensor(2), "pressure": 9999.0},
            {"id": sensor(3), "pressure": 3.0},
        ],
    )
    # The same sensor twice, good then out of range: the error must land on the right one.
    publish(f"{topic}/{sensor(4)}", {"pressure": 4.0})
    publish(f"{topic}/{sensor(4)}", {"pressure": -500.0})
    publish(f"{topic}/{sensor(5)}", {"pressure": 5.0})
    wait_for(settled(running, 4), "four messages")

    assert sorted(entities(store, tenant)) == [sensor(1), sensor(3), sensor(4), sensor(5)]
    values = {o.entity_id: o.value_num for o in readings(store, tenant)}
    assert values == {sensor(1): 1.0, sensor(3): 3.0, sensor(4): 4.0, sensor(5): 5.0}
    dead = sorted(letters(store), key=lambda d: d.reason)
    assert len(dead) == 2
    assert dead[0].reason.startswith("'pressure' = -500")
    assert orjson.loads(dead[0].payload) == {"pressure": -500.0}
    assert dead[1].reason.startswith("item 1: 'pressure' = 9999")
    assert orjson.loads(dead[1].payload)["id"] == sensor(2)
    stats = running.stats()
    assert (stats.accepted, stats.dead_lettered, stats.entities) == (2, 2, 4)


@services
def test_an_oversized_payload_is_dead_lettered(
    store: DuckDBStore, consumer: Consumers, publish: Publish, root: str, tenant: str
) -> None:
    running = consumer(store, max_payload=1024)
    big = {"id": sensor(1), "pressure": 1.0, "padding": "x" * 2000}
    publish(f"{root}/{tenant}/{WATER}/{sensor(1)}", big)
    publish(f"{root}/{tenant}/{WATER}/{sensor(2)}", {"pressure": 2.0})
    wait_for(settled(running, 2), "two messages")

    [dead] = letters(store)
    size = len(orjson.dumps(big))
    assert dead.reason == f"payload too large: {size} bytes, the limit is 1024"
    assert orjson.loads(dead.payload) == big
    assert list(entities(store, tenant)) == [sensor(2)]


# ---- delivery ----------------------------------------------------------------------------------
@services
def test_two_consumers_in_one_group_split_the_messages_without_loss_or_duplicates(
    store: DuckDBStore, consumer: Consumers, publish: Publish, root: str, tenant: str
) -> None:
    ingest = Ingest(store)
    first = consumer(store, ingest=ingest)
    second = consumer(store, ingest=ingest)
    start = datetime(2024, 5, 1, tzinfo=UTC)
    count = 300
    for i in range(count):
        at = (start + timedelta(seconds=i)).strftime("%Y-%m-%dT%H:%M:%SZ")
        reading = {"pressure": {"type": "Property", "value": float(i % 100), "observedAt": at}}
        publish(f"{root}/{tenant}/{WATER}/{sensor(i % 10)}", reading)

    def all_in() -> bool:
        return first.stats().accepted + second.stats().accepted >= count

    wait_for(all_in, f"{count} messages")
    time.sleep(0.2)  # a duplicate, if any, would arrive now
    rows = readings(store, tenant)
    assert len(rows) == count
    assert len({(o.entity_id, o.observed_at) for o in rows}) == count
    assert first.stats().received > 0 and second.stats().received > 0
    assert first.stats().received + second.stats().received == count


@services
def test_messages_are_acknowledged_after_their_batch(
    store: MemoryStore, consumer: Consumers, publish: Publish, root: str, tenant: str
) -> None:
    # With 5 unacknowledged messages the broker stops sending: all 60 arrive only if acks flow.
    running = consumer(MemoryStore(), receive_maximum=5, batch_size=3)
    for i in range(60):
        publish(f"{root}/{tenant}/{WATER}/{sensor(i)}", {"pressure": 1.0})
    wait_for(settled(running, 60), "60 messages")
    assert running.stats().entities == 60


class FlakyStore(MemoryStore):
    """A store whose first writes fail, as a database that is briefly unavailable does."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    def write(
        self, tenant: str, entities: Sequence[StoredEntity], observations: Sequence[Observation]
    ) -> None:
        if self.failures > 0:
            self.failures -= 1
            raise OSError("database unavailable")
        super().write(tenant, entities, observations)


@services
def test_a_failing_store_is_retried_before_anything_is_acknowledged(
    consumer: Consumers, publish: Publish, root: str, tenant: str, caplog: pytest.LogCaptureFixture
) -> None:
    flaky = FlakyStore(failures=2)
    running = consumer(flaky, retry_delay=0.01)
    publish(f"{root}/{tenant}/{WATER}/{sensor(1)}", {"pressure": 1.5})
    wait_for(settled(running, 1), "the message")

    assert [o.value_num for o in readings(flaky, tenant)] == [1.5]
    assert running.stats().store_failures == 2
    assert flaky.dead_letters() == []
    assert "database unavailable" in caplog.text


@services
def test_stop_flushes_what_was_received(
    store: DuckDBStore, consumer: Consumers, publish: Publish, root: str, tenant: str
) -> None:
    # Nothing would be shipped for 60 s: only stop() can bring these messages in.
    running = consumer(store, linger=60.0, batch_size=100_000)
    for i in range(50):
        publish(f"{root}/{tenant}/{WATER}/{sensor(i)}", {"pressure": 2.0})
    began = time.monotonic()
    running.stop()

    assert time.monotonic() - began < 10
    assert len(readings(store, tenant)) == 50
    assert running.stats().accepted == 50
    assert running.stats().pending == 0


def test_an_unreachable_broker_fails_start(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: connections are refused
        running = MqttIngest(Ingest(MemoryStore()), f"mqtt://127.0.0.1:{port}")
        with pytest.raises(ConnectionError, match="cannot reach the MQTT broker"):
            running.start()
    running.stop()  # harmless after a failed start


def test_urls_and_options_are_checked() -> None:
    ingest = Ingest(MemoryStore())
    with pytest.raises(ValueError, match="not an MQTT broker URL"):
        MqttIngest(ingest, "http://127.0.0.1:1883")
    with pytest.raises(ValueError, match="needs a client_id"):
        MqttIngest(ingest, session_expiry=60)
    secure = MqttIngest(ingest, "mqtts://ingest:s%40cret@broker.example:8884", group=None)
    assert (secure.host, secure.port, secure.tls) == ("broker.example", 8884, True)
    assert (secure.username, secure.password) == ("ingest", "s@cret")
    assert secure.subscription == "civica/+/+/+"
    assert MqttIngest(ingest, "mqtt://h").subscription == "$share/civica/civica/+/+/+"


@services
def test_a_receiver_that_dies_is_replaced(
    store: DuckDBStore, consumer: Consumers, publish: Publish, root: str, tenant: str
) -> None:
    running = consumer(store)
    publish(f"{root}/{tenant}/{WATER}/{sensor(1)}", {"pressure": 1.0})
    wait_for(settled(running, 1), "the first message")
    receiver = running._process  # the child process that runs paho
    assert receiver is not None
    receiver.kill()

    wait_for(lambda: running.stats().receiver_restarts == 1, "a new receiver")

    # Published until the new receiver has subscribed: the early ones go nowhere (no session).
    def stored_again() -> bool:
        publish(f"{root}/{tenant}/{WATER}/{sensor(2)}", {"pressure": 2.0})
        return sensor(2) in entities(store, tenant)

    wait_for(stored_again, "a message through the new receiver")
    assert running.stats().receiver_restarts == 1


class DownStore(MemoryStore):
    """A store that takes nothing: neither entities nor dead letters."""

    def write(
        self, tenant: str, entities: Sequence[StoredEntity], observations: Sequence[Observation]
    ) -> None:
        raise OSError("database down")

    def add_dead_letters(self, letters: Sequence[DeadLetter]) -> None:
        raise OSError("database down")


@services
def test_what_the_store_cannot_keep_is_not_acknowledged_and_comes_back(
    store: DuckDBStore,
    consumer: Consumers,
    publish: Publish,
    root: str,
    tenant: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A persistent session: the broker keeps what was not acknowledged for the next connection.
    session = {"client_id": f"civica-test-{uuid.uuid4().hex[:12]}", "session_expiry": 60}
    down = consumer(DownStore(), retry_delay=0.01, **session)
    publish(f"{root}/{tenant}/{WATER}/{sensor(1)}", {"pressure": 1.0})
    wait_for(lambda: down.stats().store_failures >= 4, "failed writes")
    down.stop()
    assert (down.stats().accepted, down.stats().dead_lettered, down.stats().pending) == (0, 0, 1)
    assert "stay unacknowledged" in caplog.text

    healthy = consumer(store, **session)
    wait_for(settled(healthy, 1), "the redelivered message")
    assert [o.value_num for o in readings(store, tenant)] == [1.0]


@services
def test_with_admission_workers_batches_are_stored_in_order_and_bad_messages_dead_lettered(
    with_worker: WithWorker,
    store: DuckDBStore,
    consumer: Consumers,
    publish: Publish,
    root: str,
    tenant: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What ``civica serve`` runs: batches are parsed and gated by a worker process while the
    previous batch is stored. Readings of one sensor span many batches; the stored state must
    be the last one sent, and every refused message a dead letter of its own."""
    from civica.ingest import admission

    # Batch sizes follow the publisher's pace: with the usual 32 KB threshold whether a batch
    # goes to the worker would depend on timing. At 1 KB every batch of a few messages does.
    monkeypatch.setattr(admission, "MIN_OFFLOAD_BYTES", 1024)
    ingest, bodies = with_worker
    # Batches of ~250-byte messages: all but the smallest go to the worker.
    running = consumer(store, ingest=ingest, batch_size=200, linger=0.05)
    start = datetime(2024, 5, 1, tzinfo=UTC)
    sent = 0
    for k in range(300):
        for s in (1, 2, 3):
            stamp = (start + timedelta(seconds=k)).isoformat().replace("+00:00", "Z")
            value = -500.0 if (s == 1 and k % 100 == 50) else float(k)
            doc: dict[str, Any] = {
                "pressure": {
                    "type": "Property",
                    "value": value,
                    "unitCode": "MTR",
                    "observedAt": stamp,
                },
                "flow": {"type": "Property", "value": 0.01, "unitCode": "MQS"},
            }
            if s == 3 and k == 120:
                doc["macAddress"] = "00:11:22:33:44:55"
            publish(f"{root}/{tenant}/{WATER}/{sensor(s)}", doc)
            sent += 1
    wait_for(settled(running, sent), f"{sent} messages", timeout=60)

    stats = running.stats()
    assert (stats.accepted, stats.dead_lettered) == (sent - 4, 4)
    assert stats.batches >= 4
    # The batches went to the worker (over its threshold), each one once: a batch
    # prepared ahead is the batch stored next.
    assert sum(size >= 1024 for size in bodies) >= 2
    assert len(bodies) == stats.batches
    stored = entities(store, tenant)
    assert {eid: s.entity["pressure"]["value"] for eid, s in stored.items()} == {
        sensor(1): 299.0,
        sensor(2): 299.0,
        sensor(3): 299.0,
    }
    history = readings(store, tenant)
    assert len(history) == sent - 4
    by_sensor = sorted((o.entity_id, o.observed_at) for o in history)
    assert len(set(by_sensor)) == len(by_sensor)  # nothing stored twice
    reasons = sorted(d.reason for d in letters(store))
    assert len(reasons) == 4
    assert sum("'pressure' = -500" in r for r in reasons) == 3
    assert sum("macAddress" in r for r in reasons) == 1


@services
def test_with_admission_workers_plain_readings_are_admitted_in_the_consumer(
    with_worker: WithWorker,
    store: DuckDBStore,
    consumer: Consumers,
    publish: Publish,
    root: str,
    tenant: str,
) -> None:
    """Batches of keyValues readings (numbers only) take the gate's fast path in the
    consumer: the trip to a worker and back would cost more. A batch holding anything else
    goes to the worker and gets the full gate."""
    ingest, bodies = with_worker
    running = consumer(store, ingest=ingest, batch_size=500, linger=0.05)
    publish(f"{root}/{tenant}/{WATER}/{sensor(1)}", {"pressure": -500})  # out of range
    publish(f"{root}/{tenant}/{WATER}/{sensor(2)}", {"macAddress": "00:11:22:33:44:55"})
    wait_for(settled(running, 2), "the refused messages")
    assert 1 <= len(bodies) <= 2  # not plain readings: to the worker
    reasons = sorted(d.reason for d in letters(store))
    assert any("'pressure' = -500" in r for r in reasons)
    assert any("macAddress" in r for r in reasons)

    offloaded = len(bodies)
    for k in range(200):
        publish(f"{root}/{tenant}/{WATER}/{sensor(k % 7)}", {"pressure": 2.0 + k % 3})
    wait_for(settled(running, 202), "202 messages")
    stats = running.stats()
    assert (stats.accepted, stats.dead_lettered) == (200, 2)
    assert len(bodies) == offloaded  # the plain readings stayed in the consumer
    assert len(readings(store, tenant)) == 200
    assert entities(store, tenant)[sensor(6)].entity["pressure"]["value"] == 2.0 + 195 % 3


class SlowFlakyStore(DuckDBStore):
    """A DuckDB store whose writes take a while, except the 3rd and 6th, which fail at once:
    the consumer merges the next batch while one is written, or just after it failed."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.calls = 0

    def write_prepared(self, writes: Sequence[Any]) -> None:
        self.calls += 1
        if self.calls in (3, 6):
            raise OSError("database unavailable")
        time.sleep(0.03)
        super().write_prepared(writes)


@services
def test_a_write_that_fails_while_the_next_batch_is_merged_is_stored_again_in_order(
    tmp_path: Path, consumer: Consumers, publish: Publish, root: str, tenant: str
) -> None:
    store = SlowFlakyStore(tmp_path / "flaky.duckdb")
    ingest = Ingest(store)
    states: list[tuple[str, float]] = []  # the stored states, in the order they were written
    ingest.bus.subscribe(
        lambda e: (
            states.append((e.entity["id"], e.entity["pressure"]["value"]))
            if isinstance(e, EntityChanged)
            else None
        )
    )
    try:
        running = consumer(store, ingest=ingest, batch_size=20, linger=0.02, retry_delay=0.01)
        start = datetime(2024, 5, 1, tzinfo=UTC)
        for k in range(100):
            for s in (1, 2, 3):
                stamp = (start + timedelta(seconds=k)).isoformat().replace("+00:00", "Z")
                reading = {"type": "Property", "value": float(k), "observedAt": stamp}
                publish(f"{root}/{tenant}/{WATER}/{sensor(s)}", {"pressure": reading})
        wait_for(settled(running, 300), "300 messages", timeout=60)

        stats = running.stats()
        assert (stats.accepted, stats.dead_lettered) == (300, 0)
        # Two failed transactions; one may have held two batches, each counted.
        assert stats.store_failures >= 2
        stored = entities(store, tenant)
        assert {eid: s.entity["pressure"]["value"] for eid, s in stored.items()} == {
            sensor(1): 99.0,
            sensor(2): 99.0,
            sensor(3): 99.0,
        }
        history = sorted((o.entity_id, o.observed_at) for o in readings(store, tenant))
        assert len(history) == 300 and len(set(history)) == 300  # all kept, none twice
        # No batch was written after a later one: each sensor's state only ever went up.
        for s in (1, 2, 3):
            mine = [value for eid, value in states if eid == sensor(s)]
            assert mine == sorted(mine), mine
    finally:
        store.close()


def _own_broker(port: int, conf: Path) -> subprocess.Popen[bytes]:
    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    pub = shutil.which("mosquitto_pub") or "/usr/bin/mosquitto_pub"
    if not (Path(exe).exists() and Path(pub).exists()):
        message = "mosquitto (and mosquitto_pub) are not installed: no broker to restart"
        if REQUIRE_SERVICES:
            pytest.fail(f"{message}; CIVICA_REQUIRE_SERVICES=1 demands it")
        pytest.skip(message)
    proc = subprocess.Popen([exe, "-c", str(conf)])
    wait_for(lambda: _listening(port), f"mosquitto on port {port}")
    return proc


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), 0.5):
            return True
    except OSError:
        return False


@services
def test_after_the_broker_restarts_a_new_receiver_connects_and_ingest_goes_on(
    tmp_path: Path, store: DuckDBStore, root: str, tenant: str
) -> None:
    """The receiver does not reconnect by itself: it ends and the consumer starts another."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\nlog_dest none\n")
    broker = _own_broker(port, conf)
    running = MqttIngest(Ingest(store), f"mqtt://127.0.0.1:{port}", topic_root=root, linger=0.02)
    try:
        running.start()
        pub = shutil.which("mosquitto_pub") or "/usr/bin/mosquitto_pub"

        def send(n: int) -> None:
            topic = f"{root}/{tenant}/{WATER}/{sensor(n)}"
            body = orjson.dumps({"pressure": float(n)}).decode()
            command = [pub, "-h", "127.0.0.1", "-p", str(port), "-q", "1", "-t", topic, "-m", body]
            subprocess.run(command, check=False, timeout=10, capture_output=True)

        send(1)
        wait_for(settled(running, 1), "the first message")
        broker.terminate()
        broker.wait(10)
        wait_for(lambda: running.stats().receiver_restarts >= 1, "the lost connection noticed")
        broker = _own_broker(port, conf)

        def stored_again() -> bool:  # published until a new receiver has subscribed
            send(2)
            return sensor(2) in entities(store, tenant)

        wait_for(stored_again, "a message through the new receiver", timeout=60)
        assert entities(store, tenant)[sensor(1)].entity["pressure"]["value"] == 1.0
    finally:
        running.stop()
        broker.terminate()
        broker.wait(10)


def _certificates(where: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a broker certificate for 127.0.0.1: (ca, certificate, key)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        message = "openssl is not installed: no certificates for a TLS broker"
        if REQUIRE_SERVICES:
            pytest.fail(f"{message}; CIVICA_REQUIRE_SERVICES=1 demands it")
        pytest.skip(message)
    ca, ca_key = where / "ca.pem", where / "ca.key"
    cert, key, csr = where / "broker.pem", where / "broker.key", where / "broker.csr"
    ext = where / "ext.cnf"
    ext.write_text("subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n")
    for command in (
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-keyout", str(ca_key), "-out", str(ca), "-subj", "/CN=Civica test CA"],
        [openssl, "req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
         "-out", str(csr), "-subj", "/CN=127.0.0.1"],
        [openssl, "x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
         "-CAcreateserial", "-days", "2", "-out", str(cert), "-extfile", str(ext)],
    ):  # fmt: skip
        subprocess.run(command, check=True, capture_output=True, timeout=60)
    for path in (ca, cert, key):
        path.chmod(0o644)  # mosquitto drops to its own user before reading them
    return ca, cert, key


@services
def test_mqtts_with_a_password_and_an_acl_as_in_production(
    tmp_path: Path, store: DuckDBStore, root: str, tenant: str
) -> None:
    """The production set-up the README describes: TLS, no anonymous clients, a password per
    client, and an ACL that lets the platform read and a sensor write only its own topics."""
    # Mosquitto reads these after dropping to its own user, which cannot enter pytest's
    # private temporary directory: they go to one it can read.
    files = Path(tempfile.mkdtemp(prefix="civica-tls-broker-"))
    files.chmod(0o755)
    try:
        _tls_broker_case(files, store, root, tenant)
    finally:
        shutil.rmtree(files, ignore_errors=True)


def _tls_broker_case(tmp_path: Path, store: DuckDBStore, root: str, tenant: str) -> None:
    ca, cert, key = _certificates(tmp_path)
    passwd = tmp_path / "passwd"
    mosquitto_passwd = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
    if not Path(mosquitto_passwd).exists():
        if REQUIRE_SERVICES:
            pytest.fail("mosquitto_passwd is not installed; CIVICA_REQUIRE_SERVICES=1 demands it")
        pytest.skip("mosquitto_passwd is not installed")
    for flags, user, secret in ((["-c"], "civica", "ingest-s3cret"), ([], "sensor-7", "s3")):
        command = [mosquitto_passwd, *flags, "-b", str(passwd), user, secret]
        subprocess.run(command, check=True, capture_output=True, timeout=30)
    passwd.chmod(0o644)
    acl = tmp_path / "acl"
    acl.write_text(
        f"user civica\ntopic read {root}/#\n\n"
        f"user sensor-7\ntopic write {root}/{tenant}/{WATER}/{sensor(7)}\n"
    )
    acl.chmod(0o644)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\ncafile {ca}\ncertfile {cert}\nkeyfile {key}\n"
        f"allow_anonymous false\npassword_file {passwd}\nacl_file {acl}\n"
        "persistence false\nlog_dest none\n"
    )
    broker = _own_broker(port, conf)
    url = f"mqtts://civica:ingest-s3cret@127.0.0.1:{port}?cafile={ca}"
    running = MqttIngest(Ingest(store), url, topic_root=root, linger=0.02)
    try:
        # A wrong password, or a broker certificate nobody vouches for, stops start() clearly.
        wrong = MqttIngest(Ingest(store), url.replace("ingest-s3cret", "guess"), topic_root=root)
        with pytest.raises(ConnectionError, match=r"(?i)not authori[sz]ed|bad user name"):
            wrong.start(timeout=10)
        untrusted = MqttIngest(Ingest(store), url.split("?", maxsplit=1)[0], topic_root=root)
        with pytest.raises(ConnectionError, match=r"(?i)certificate"):
            untrusted.start(timeout=10)

        running.start()
        sender = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"sensor-7-{uuid.uuid4().hex[:6]}"
        )
        sender.username_pw_set("sensor-7", "s3")
        sender.tls_set(ca_certs=str(ca))
        sender.connect("127.0.0.1", port)
        sender.loop_start()
        try:
            mine = f"{root}/{tenant}/{WATER}/{sensor(7)}"
            theirs = f"{root}/{tenant}/{WATER}/{sensor(8)}"  # not this sensor's topic: dropped
            sender.publish(theirs, orjson.dumps({"pressure": 8.0}), qos=1).wait_for_publish(10)
            sender.publish(mine, orjson.dumps({"pressure": 7.5}), qos=1).wait_for_publish(10)
            wait_for(settled(running, 1), "the sensor's reading over TLS")
            time.sleep(0.3)
        finally:
            sender.loop_stop()
            sender.disconnect()
        assert set(entities(store, tenant)) == {sensor(7)}
        assert [o.value_num for o in readings(store, tenant)] == [7.5]
    finally:
        running.stop()
        broker.terminate()
        broker.wait(10)
