"""The water domain inside the platform: manifest, twin replay through ingest, live alerts."""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from civica.core.bus import EventBus
from civica.core.query import parse_q
from civica.core.store import EntityQuery, ObservationQuery, Store
from civica.domains import MANIFESTS, domain_catalogue
from civica.domains.water.detectors import QualityWatch
from civica.domains.water.entities import sensor_refs
from civica.domains.water.twin import replay
from civica.ingest.pipeline import Ingest
from civica.privacy.gate import PrivacyGate
from civica.storage import open_store


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    db = open_store(str(tmp_path / "city.duckdb"))
    yield db
    db.close()


@pytest.fixture
def ingest(store: Store) -> Ingest:
    return Ingest(store, PrivacyGate(domain_catalogue()), EventBus())


def test_every_manifest_is_consistent() -> None:
    catalogue = domain_catalogue()
    for manifest in MANIFESTS:
        for entity_type in manifest.entity_types:
            assert entity_type in catalogue, (manifest.domain, entity_type)
        for spec in manifest.catalogue:
            merged = catalogue.get(spec.type)
            assert merged is not None and set(spec.attributes) <= set(merged.attributes)
        for detector in manifest.detectors:
            module, _, attribute = detector.target.partition(":")
            assert hasattr(importlib.import_module(module), attribute), detector.target
            assert detector.raises in manifest.alert_subcategories
            assert set(detector.reads) <= set(manifest.entity_types)


def _sensors() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "sensor_id": ["P1", "F1", "CL9", "EC9"],
            "kind": ["pressure", "flow", "quality", "quality"],
            "element": ["J2", "L1", "J9", "J9"],
            "unit": ["m", "m3/s", "mg/L", "uS/cm"],
        }
    )


def _readings(days: int, event_day: float | None, seed: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    times = pd.date_range("2026-03-01", periods=days * 96, freq="15min", tz="UTC")
    hours = np.asarray(times.hour + times.minute / 60.0)
    diurnal = np.sin(2 * np.pi * hours / 24.0)
    frame = pd.DataFrame(
        {
            "P1": 40.0 - 2.0 * diurnal + rng.normal(0, 0.05, len(times)),
            "F1": 0.05 + 0.01 * diurnal + rng.normal(0, 0.0005, len(times)),
            "CL9": 0.8 + 0.05 * diurnal + rng.normal(0, 0.01, len(times)),
            "EC9": 450.0 + 5.0 * diurnal + rng.normal(0, 2.0, len(times)),
        },
        index=times,
    )
    if event_day is not None:
        hit = slice(int(event_day * 96), int(event_day * 96) + 24)
        frame.iloc[hit, 2] -= 0.5  # chlorine consumed by a contaminant
        frame.iloc[hit, 3] += 150.0  # conductivity up
    frame.iloc[5, 0] = np.nan  # a gap: left out, not sent as a null
    return frame


def test_replay_goes_through_ingest_with_units(store: Store, ingest: Ingest) -> None:
    refs = sensor_refs(_sensors().to_dict("records"))
    frame = _readings(1, None)
    accepted = replay(frame, refs, ingest, network="Net-test")
    assert accepted == frame.notna().sum().sum()
    rows = store.query_observations(
        "", ObservationQuery(entity_ids=("urn:ngsi-ld:WaterQualityObserved:J9",))
    )
    conductivity = [r for r in rows if r.attribute == "conductivity"]
    assert len(conductivity) == 96
    # µS/cm arrive, S/m (the catalogue's canonical unit) is stored.
    assert conductivity[0].unit == "D10"
    assert conductivity[0].value_num == pytest.approx(frame["EC9"].iloc[0] * 1e-4)
    pressure = store.query_observations(
        "", ObservationQuery(entity_ids=("urn:ngsi-ld:WaterObserved:P1",), attrs=("pressure",))
    )
    assert len(pressure) == 95  # the NaN was a gap
    station = store.get_entities("", ["urn:ngsi-ld:WaterObserved:P1"])
    assert station["urn:ngsi-ld:WaterObserved:P1"].entity["networkElement"]["value"] == "J2"


def _alerts(store: Store, sub: str) -> list[dict[str, object]]:
    page = store.query_entities(
        "",
        EntityQuery(types=("Alert",), q=parse_q(f'subCategory=="{sub}"'), limit=100),
    )
    return [e.entity for e in page.items]


def test_quality_watch_raises_an_alert_for_an_event(store: Store, ingest: Ingest) -> None:
    sensors = _sensors()
    refs = sensor_refs(sensors.to_dict("records"))
    watch = QualityWatch(ingest, sensors, refs, name="Net-test")
    try:
        replay(_readings(5, event_day=4.25), refs, ingest, network="Net-test")
        watch.drain()
    finally:
        watch.close()
    alerts = _alerts(store, "waterQualityEvent")
    assert len(alerts) == 1, alerts
    alert = alerts[0]
    issued = pd.Timestamp(str(alert["dateIssued"]["value"]))  # type: ignore[index]
    start = pd.Timestamp("2026-03-05T06:00:00Z")
    assert start <= issued <= start + pd.Timedelta(hours=3)
    assert alert["candidateArea"]["value"]["node"] == "J9"  # type: ignore[index]
    assert not watch.errors


def test_quality_watch_is_quiet_without_an_event(store: Store, ingest: Ingest) -> None:
    sensors = _sensors()
    refs = sensor_refs(sensors.to_dict("records"))
    watch = QualityWatch(ingest, sensors, refs)
    try:
        replay(_readings(5, event_day=None, seed=7), refs, ingest)
        watch.drain()
    finally:
        watch.close()
    assert _alerts(store, "waterQualityEvent") == []


def test_unknown_sensor_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="no reading for kind"):
        sensor_refs([{"sensor_id": "X", "kind": "pressure", "element": "J1", "unit": "psi"}])


@pytest.mark.slow
def test_leak_watch_raises_what_the_batch_detector_finds(
    tmp_path: Path, store: Store, ingest: Ingest
) -> None:
    """Streaming = batch: the live watch's alerts are the detector's reports on the full record."""
    from datetime import timedelta

    from civica.domains.water.files import load_scenario
    from civica.domains.water.leaks import detect_leaks
    from civica.domains.water.twin import run_live
    from tests.test_water_leaks import build  # a Net3 scenario with a 30 L/s leak on day 3

    build(tmp_path / "net3", leak_m3s=0.030)
    batch = {
        (r.pipe, r.detected_at.strftime("%Y-%m-%dT%H:%M"))
        for r in detect_leaks(load_scenario(tmp_path / "net3"), 2)
    }
    alerts = run_live(str(tmp_path / "net3"), ingest, every=timedelta(hours=12))["leak"]
    live = {(a["candidateArea"]["value"]["pipe"], a["dateIssued"]["value"][:16]) for a in alerts}
    assert batch, "the scenario's leak should give the batch detector something to report"
    assert live == batch
    stored = _alerts(store, "leakSuspected")
    assert {a["id"] for a in stored} == {a["id"] for a in alerts}
    for alert in stored:
        area = alert["candidateArea"]["value"]  # type: ignore[index]
        assert area["pipe"] in area["pipes"]  # the reported pipe is inside its own area
        assert 0.25 <= area["probability"] <= 1.0  # the detector's chance it is in there
