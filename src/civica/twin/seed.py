"""A small seeded city for the demo: assets with a day of history, written through ``Ingest``.

Readings follow simple diurnal shapes with noise (seeded, so every demo looks the same):
water pressure dips at the morning and evening demand peaks, traffic has two rush hours,
NO2 follows traffic, crowds peak at lunch.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from civica.core.store import DEFAULT_TENANT
from civica.core.timefmt import format_time
from civica.ingest.pipeline import Ingest

CENTRE = (4.3517, 50.8466)  # lon, lat of the demo city's centre
STEP = timedelta(minutes=15)


@dataclass(frozen=True)
class SeedReport:
    entities: int
    observations: int
    rejected: int


def _double_peak(hour: float, first: float, second: float) -> float:
    """0..1 demand shape with peaks at two hours of the day."""
    return max(math.exp(-((hour - first) ** 2) / 3.0), math.exp(-((hour - second) ** 2) / 4.0))


def _point(rng: random.Random, spread: float = 0.03) -> dict[str, Any]:
    return {
        "type": "Point",
        "coordinates": [
            round(CENTRE[0] + rng.uniform(-spread, spread) * 1.6, 6),
            round(CENTRE[1] + rng.uniform(-spread, spread), 6),
        ],
    }


def _prop(value: Any, at: datetime, unit: str | None = None) -> dict[str, Any]:
    attr: dict[str, Any] = {"type": "Property", "value": value, "observedAt": format_time(at)}
    if unit:
        attr["unitCode"] = unit
    return attr


Reading = Callable[[random.Random, datetime], dict[str, Any]]


def _water(rng: random.Random, at: datetime) -> dict[str, Any]:
    hour = at.hour + at.minute / 60
    demand = _double_peak(hour, 7.5, 19.5)
    return {"pressure": _prop(round(52 - 9 * demand + rng.gauss(0, 0.4), 2), at, "MTR")}


def _flow(rng: random.Random, at: datetime) -> dict[str, Any]:
    hour = at.hour + at.minute / 60
    demand = 0.2 + _double_peak(hour, 7.5, 19.5)
    return {"flow": _prop(round(0.08 * demand + rng.gauss(0, 0.002), 4), at, "MQS")}


def _air(rng: random.Random, at: datetime) -> dict[str, Any]:
    traffic = _double_peak(at.hour + at.minute / 60, 8.0, 17.5)
    return {
        "no2": _prop(round(18 + 40 * traffic + rng.gauss(0, 3), 1), at, "GQ"),
        "pm25": _prop(round(max(1.0, 8 + 10 * traffic + rng.gauss(0, 2)), 1), at, "GQ"),
        "temperature": _prop(
            round(9 + 5 * math.sin((at.hour - 9) / 24 * 2 * math.pi), 1), at, "CEL"
        ),
    }


def _traffic(rng: random.Random, at: datetime) -> dict[str, Any]:
    load = 0.1 + _double_peak(at.hour + at.minute / 60, 8.0, 17.5)
    occupancy = min(0.95, 0.05 + 0.5 * load + rng.gauss(0, 0.02))
    return {
        "intensity": _prop(int(max(0, 900 * load + rng.gauss(0, 30))), at),
        "occupancy": _prop(round(max(0.0, occupancy), 3), at),
        "averageVehicleSpeed": _prop(
            round(max(5.0, 50 - 35 * occupancy + rng.gauss(0, 2)), 1), at, "KMH"
        ),
    }


def _crowd(rng: random.Random, at: datetime) -> dict[str, Any]:
    lunch = math.exp(-((at.hour + at.minute / 60 - 12.5) ** 2) / 6.0)
    return {"peopleCount": _prop(int(max(0, 40 + 400 * lunch + rng.gauss(0, 15))), at)}


def _light(rng: random.Random, at: datetime) -> dict[str, Any]:
    dark = at.hour >= 17 or at.hour < 8
    return {
        "powerState": _prop("on" if dark else "off", at),
        "illuminanceLevel": _prop(1.0 if dark else 0.0, at),
    }


# (type, id prefix, how many, reading, spread)
_FLEET: tuple[tuple[str, str, int, Reading, float], ...] = (
    ("WaterObserved", "pressure", 30, _water, 0.03),
    ("WaterObserved", "flowmeter", 5, _flow, 0.02),
    ("AirQualityObserved", "air", 10, _air, 0.03),
    ("TrafficFlowObserved", "loop", 20, _traffic, 0.03),
    ("CrowdFlowObserved", "zone", 5, _crowd, 0.01),
    ("Streetlight", "lamp", 200, _light, 0.03),
)


def _batches(end: datetime, hours: int, rng: random.Random) -> Iterator[list[dict[str, Any]]]:
    assets = []
    for etype, prefix, count, reading, spread in _FLEET:
        for n in range(count):
            eid = f"urn:ngsi-ld:{etype}:demo-{prefix}-{n:03d}"
            assets.append((eid, etype, reading, _point(rng, spread)))
    steps = int(hours * 3600 / STEP.total_seconds())
    start = end - steps * STEP
    for step in range(steps + 1):
        at = start + step * STEP
        batch = []
        for eid, etype, reading, location in assets:
            doc = {"id": eid, "type": etype, **reading(rng, at)}
            if step == 0:
                doc["location"] = {"type": "GeoProperty", "value": location}
                doc["name"] = {"type": "Property", "value": eid.rsplit(":", 1)[-1]}
            if etype == "Streetlight":
                failed = rng.random() < 0.02 and step == steps
                doc["status"] = _prop("defectiveLamp" if failed else "ok", at)
            batch.append(doc)
        yield batch


def seed_city(
    ingest: Ingest,
    end: datetime,
    hours: int = 24,
    seed: int = 7,
    tenant: str = DEFAULT_TENANT,
    progress: Callable[[int, int], None] | None = None,
) -> SeedReport:
    """Write a small city with ``hours`` of 15-minute history ending at ``end``."""
    rng = random.Random(seed)
    total_steps = int(hours * 3600 / STEP.total_seconds()) + 1
    entities: set[str] = set()
    observations = rejected = 0
    for done, batch in enumerate(_batches(end, hours, rng), start=1):
        out = ingest.upsert(tenant, batch)
        rejected += len(out.errors)
        entities.update(out.success)
        observations += sum(
            1
            for doc in batch
            for k, v in doc.items()
            if isinstance(v, dict) and v.get("type") == "Property"
        )
        if progress:
            progress(done, total_steps)
    return SeedReport(len(entities), observations, rejected)
