"""Private travel times: daily-keyed hashes, 24 h memory, k-anonymous aggregates only."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pytest

from civica.app import build_services
from civica.core.store import ObservationQuery
from civica.domains import domain_catalogue
from civica.domains.traffic.sightings import KEY_BYTES, Sighting, SightingError, SightingHasher
from civica.domains.traffic.travel_times import (
    Segment,
    TravelTimeError,
    TravelTimeMatcher,
    percentile,
)
from civica.storage import DuckDBStore, MemoryStore

T0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
SEGMENTS = (Segment("A-B", "loop-A", "loop-B", 600.0), Segment("B-C", "loop-B", "loop-C", 600.0))


class Clock:
    """A clock the test sets."""

    def __init__(self, now: datetime) -> None:
        self.at = now

    def now(self) -> datetime:
        return self.at


def _pass(
    clock: Clock,
    hasher: SightingHasher,
    matcher: TravelTimeMatcher,
    det: str,
    vid: str,
    at: datetime,
) -> list[float]:
    clock.at = at
    return matcher.add(hasher.sighting(det, vid, at))


def test_nothing_identifying_reaches_the_database(tmp_path: Path) -> None:
    db_path = tmp_path / "city.duckdb"
    store = DuckDBStore(db_path)
    ingest = build_services(store).ingest
    clock = Clock(T0)
    hasher = SightingHasher(clock)
    matcher = TravelTimeMatcher(SEGMENTS, clock=clock)
    ids = [f"PLATE-XK{i:04d}Q" for i in range(300)]
    events: list[tuple[datetime, str, str]] = []
    for i, vid in enumerate(ids):
        at_a = T0 + timedelta(seconds=3 * i)
        at_b = at_a + timedelta(seconds=60 + i % 40)
        events += [(at_a, "loop-A", vid), (at_b, "loop-B", vid)]
        events.append((at_b + timedelta(seconds=90 + i % 30), "loop-C", vid))
    tokens: set[str] = set()
    matched = 0
    for at, det, vid in sorted(events):
        clock.at = at
        sighting = hasher.sighting(det, vid, at)
        assert vid not in repr(sighting)
        tokens.add(sighting.token)
        matched += len(matcher.add(sighting))
    assert matched == 600
    assert len(tokens) == 300 and all(len(t) == 32 for t in tokens)
    clock.at = events[-1][0] + timedelta(minutes=10)
    outcome = matcher.publish(ingest)
    assert outcome.errors == []
    assert set(outcome.success) == {s.entity_id for s in SEGMENTS}
    rows = store.query_observations(
        "", ObservationQuery(entity_ids=(SEGMENTS[0].entity_id,), attrs=("travelTimeSamples",))
    )
    assert sum(r.value_num or 0 for r in rows) == 300
    store.close()

    # Every value of every table, as text, and the raw bytes of the file.
    con = duckdb.connect(str(db_path), read_only=True)
    text: list[str] = []
    tables = con.execute(
        "SELECT table_schema, table_name FROM information_schema.tables"
        " WHERE table_type = 'BASE TABLE'"
    ).fetchall()
    names = {t for _, t in tables}
    assert {"entities", "observations", "dead_letters"} <= names, names
    for schema, table in tables:
        for row in con.execute(
            f'SELECT CAST(COLUMNS(*) AS VARCHAR) FROM "{schema}"."{table}"'
        ).fetchall():
            text.extend(str(value) for value in row)
    con.close()
    dump = "\n".join(text)
    assert "averageTravelTime" in dump and "travel-A-B" in dump  # the scan sees the data
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.is_file())
    assert b"travel-A-B" in raw  # strings are legible in the file, so the byte scan means something
    for secret in (*ids, *tokens):
        assert secret not in dump
        assert secret.encode() not in raw
    assert "PLATE" not in dump and b"PLATE" not in raw


def test_keys_rotate_at_midnight_and_days_do_not_link() -> None:
    night = datetime(2026, 3, 2, 23, 58, tzinfo=UTC)
    clock = Clock(night)
    hasher = SightingHasher(clock)
    matcher = TravelTimeMatcher(SEGMENTS, clock=clock)
    before = hasher.token("PLATE-1", night)
    assert hasher.token("PLATE-1", night) == before  # stable within a day
    assert _pass(clock, hasher, matcher, "loop-A", "PLATE-1", night) == []
    after_midnight = night + timedelta(minutes=4)
    assert _pass(clock, hasher, matcher, "loop-B", "PLATE-1", after_midnight) == []
    assert hasher.token("PLATE-1", after_midnight) != before
    # Only today's key is held; yesterday's cannot be used again.
    assert hasher.key_days() == [after_midnight.date()]
    keys = [v for v in vars(hasher).values() if isinstance(v, bytes)]
    assert len(keys) == 1 and len(keys[0]) == KEY_BYTES
    with pytest.raises(SightingError, match="discarded"):
        hasher.token("PLATE-1", night)
    assert "key" not in repr(hasher).replace("key_", "")
    # The key goes at midnight even without a sighting, and keys are per instance.
    clock.at = datetime(2026, 3, 4, 0, 0, 1, tzinfo=UTC)
    assert hasher.key_days() == []
    assert SightingHasher(clock).token("X", clock.at) != SightingHasher(clock).token("X", clock.at)


def test_sightings_older_than_a_day_are_forgotten() -> None:
    clock = Clock(T0)
    hasher = SightingHasher(clock)
    matcher = TravelTimeMatcher([Segment("long", "loop-A", "loop-B", 86_400.0)], clock=clock)
    for i in range(50):
        _pass(clock, hasher, matcher, "loop-A", f"V{i}", T0 + timedelta(seconds=i))
    assert len(matcher) == 50
    clock.at = T0 + timedelta(hours=24, seconds=10)
    assert matcher.prune() == 10  # V0..V9 are more than 24 h old; V10 is exactly 24 h
    assert len(matcher) == 40
    clock.at = T0 + timedelta(hours=25)
    assert matcher.prune() == 40 and len(matcher) == 0
    # A later sighting at B finds nothing to match: the origin sightings are gone.
    assert _pass(clock, hasher, matcher, "loop-B", "V20", clock.at) == []
    # Pruning also happens on add.
    clock.at = T0 + timedelta(hours=50)
    matcher.add(hasher.sighting("loop-A", "V99", clock.at))
    assert len(matcher) == 1


def test_travel_times_on_a_scripted_example_and_small_groups_suppressed() -> None:
    store = MemoryStore()
    ingest = build_services(store).ingest
    clock = Clock(T0)
    hasher = SightingHasher(clock)
    matcher = TravelTimeMatcher(SEGMENTS, clock=clock, interval=timedelta(minutes=5), k=5)
    travel = [30, 40, 50, 60, 70, 80, 200]
    for i in range(len(travel)):
        _pass(clock, hasher, matcher, "loop-A", f"car{i}", T0 + timedelta(seconds=i))
    for i, secs in sorted(enumerate(travel), key=lambda p: p[0] + p[1]):
        got = _pass(clock, hasher, matcher, "loop-B", f"car{i}", T0 + timedelta(seconds=i + secs))
        assert got == [float(secs)]
    # Not plausible: longer than the segment's maximum, or B before A.
    _pass(clock, hasher, matcher, "loop-A", "slow", T0 + timedelta(seconds=10))
    assert _pass(clock, hasher, matcher, "loop-B", "slow", T0 + timedelta(seconds=700)) == []
    # Only four vehicles on B-C: suppressed.
    for i in range(4):
        _pass(clock, hasher, matcher, "loop-C", f"car{i}", T0 + timedelta(seconds=250 + i))
    assert matcher.publish(ingest, now=T0 + timedelta(minutes=4)).success == []  # still open
    clock.at = T0 + timedelta(minutes=15)
    aggs = matcher.close()
    assert [a.segment.id for a in aggs] == ["A-B"]
    agg = aggs[0]
    assert agg.count == 7
    assert agg.median_s == 60.0
    assert agg.mean_s == pytest.approx(sum(travel) / 7)
    assert agg.p85_s == pytest.approx(92.0)  # 80 + 0.1 * (200 - 80)
    assert matcher.suppressed >= 1
    # Publish a fresh group of the same data: only A-B reaches the store.
    matcher2 = TravelTimeMatcher(SEGMENTS, clock=clock, k=5)
    clock.at = T0
    for i in range(len(travel)):
        matcher2.add(Sighting("loop-A", T0, f"t{i}"))
    for i, secs in enumerate(travel):
        matcher2.add(Sighting("loop-B", T0 + timedelta(seconds=secs), f"t{i}"))
    for i in range(4):
        matcher2.add(Sighting("loop-C", T0 + timedelta(seconds=300 + i), f"t{i}"))
    clock.at = T0 + timedelta(minutes=15)
    outcome = matcher2.publish(ingest)
    assert outcome.errors == [] and outcome.success == [SEGMENTS[0].entity_id]
    stored = store.get_entities("", [s.entity_id for s in SEGMENTS])
    assert list(stored) == [SEGMENTS[0].entity_id]
    entity = stored[SEGMENTS[0].entity_id].entity
    assert entity["medianTravelTime"]["value"] == 60.0
    assert entity["travelTimeSamples"]["value"] == 7
    assert entity["averageTravelTime"]["unitCode"] == "SEC"
    assert percentile([5.0], 0.85) == 5.0


def test_catalogue_declares_travel_times_and_refuses_anything_else() -> None:
    spec = domain_catalogue().get("TrafficFlowObserved")
    assert spec is not None
    for name in ("averageTravelTime", "medianTravelTime", "travelTime85", "travelTimeSamples"):
        attr = spec.attribute(name)
        assert attr is not None and attr.person_derived and attr.extension
    assert spec.attribute("intensity") is not None  # the Smart Data Models entries stay
    ingest = build_services(MemoryStore()).ingest
    doc = {
        "id": "urn:ngsi-ld:TrafficFlowObserved:travel-x",
        "type": "TrafficFlowObserved",
        "vehicleToken": {"type": "Property", "value": "ab" * 16},
    }
    outcome = ingest.upsert("", [doc])
    assert outcome.success == [] and len(outcome.errors) == 1


def test_bad_input_is_a_clear_error() -> None:
    clock = Clock(T0)
    hasher = SightingHasher(clock)
    matcher = TravelTimeMatcher(SEGMENTS, clock=clock)
    with pytest.raises(TravelTimeError, match="unknown detector 'loop-Z'"):
        matcher.add(hasher.sighting("loop-Z", "V1", T0))
    with pytest.raises(SightingError, match="no time zone"):
        hasher.sighting("loop-A", "V1", datetime(2026, 3, 2, 8, 0))
    with pytest.raises(SightingError, match="no time zone"):
        Sighting("loop-A", datetime(2026, 3, 2, 8, 0), "t")
    with pytest.raises(SightingError, match="non-empty"):
        hasher.sighting("loop-A", "", T0)
    with pytest.raises(SightingError, match="ahead of the clock"):
        hasher.sighting("loop-A", "V1", T0 + timedelta(hours=1))
    with pytest.raises(TravelTimeError, match="two different detectors"):
        Segment("x", "loop-A", "loop-A", 60.0)
    with pytest.raises(TravelTimeError, match="max_travel_s"):
        Segment("x", "loop-A", "loop-B", 0.0)
    with pytest.raises(TravelTimeError, match="k must be"):
        TravelTimeMatcher(SEGMENTS, k=1)
    with pytest.raises(TravelTimeError, match="unique"):
        TravelTimeMatcher([SEGMENTS[0], SEGMENTS[0]])
    with pytest.raises(TypeError, match="pickled"):
        import pickle

        pickle.dumps(hasher)


def test_k_counts_distinct_vehicles_and_closed_intervals_stay_closed() -> None:
    clock = Clock(T0)
    matcher = TravelTimeMatcher(SEGMENTS[:1], clock=clock, k=3)
    # One vehicle looping A -> B five times in the interval is still one vehicle.
    for lap in range(5):
        matcher.add(Sighting("loop-A", T0 + timedelta(seconds=20 * lap), "same"))
        assert matcher.add(Sighting("loop-B", T0 + timedelta(seconds=20 * lap + 10), "same"))
    clock.at = T0 + timedelta(minutes=5)
    assert matcher.close() == [] and matcher.suppressed == 1
    # A travel time for the closed interval, arriving late, is dropped, not published alone.
    for i in range(3):
        matcher.add(Sighting("loop-A", T0 + timedelta(seconds=200), f"late{i}"))
    for i in range(3):
        matcher.add(Sighting("loop-B", T0 + timedelta(seconds=290), f"late{i}"))
    assert matcher.late == 3
    clock.at = T0 + timedelta(minutes=20)
    assert matcher.close() == []
