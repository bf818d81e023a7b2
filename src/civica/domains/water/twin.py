"""Replay a water scenario's readings into the platform through the real ingest path.

The twin never writes to the store: every step becomes NGSI-LD fragments that go through
``Ingest.upsert`` (parsing, privacy gate, units) exactly as a sensor gateway's would, so the
live detectors see them on the event bus.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd

from civica.domains.water.entities import SensorRef, reading_entities, station_entities
from civica.ingest.pipeline import Ingest


def replay(
    readings: pd.DataFrame,
    refs: Sequence[SensorRef],
    ingest: Ingest,
    *,
    tenant: str = "",
    network: str = "network",
    steps_per_batch: int = 4,
    on_batch: Callable[[int], None] | None = None,
) -> int:
    """Send every row of ``readings`` (UTC index, one column per sensor) through ingest.

    Returns the number of readings accepted; a rejected one raises, because a scenario the
    platform cannot take is a bug in the twin, not bad field data.
    """
    out = ingest.upsert(tenant, station_entities(refs, network))
    if out.errors:
        raise ValueError(f"station entities refused: {out.errors[0][1]}")
    known = [r for r in refs if r.sensor_id in readings.columns]
    values = readings[[r.sensor_id for r in known]].to_numpy(dtype=float)
    times: list[datetime] = [t.to_pydatetime() for t in readings.index]
    accepted = 0
    for start in range(0, len(times), steps_per_batch):
        docs = []
        for i in range(start, min(start + steps_per_batch, len(times))):
            row = {r.sensor_id: values[i, j] for j, r in enumerate(known)}
            docs.extend(reading_entities(known, times[i], row))
        if docs:
            result = ingest.upsert(tenant, docs)
            if result.errors:
                raise ValueError(f"readings refused: {result.errors[0][1]}")
            accepted += sum(len(d) - 2 for d in docs)
        if on_batch is not None:
            on_batch(min(start + steps_per_batch, len(times)))
    return accepted


def run_live(
    directory: str,
    ingest: Ingest,
    *,
    tenant: str = "",
    leak_free_days: int = 2,
    quality: bool = True,
    every: timedelta = timedelta(hours=6),
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """Replay a scenario into the platform with the live leak and quality watches on.

    Returns the alerts each watch raised (they are also stored as ``Alert`` entities).
    ``every`` is how much data arrives between two leak searches: live, an hour is cheap;
    a replay squeezes days into seconds, so it searches every 6 h of data by default.
    """
    from civica.domains.water.detectors import LeakWatch, QualityWatch
    from civica.domains.water.entities import sensor_refs
    from civica.domains.water.files import load_scenario

    scenario = load_scenario(directory)
    name = Path(directory).name or "network"
    refs = sensor_refs(scenario.sensors.to_dict("records"))
    leaks = LeakWatch(
        ingest,
        scenario.network,
        scenario.sensors,
        refs,
        directory=scenario.directory,
        tenant=tenant,
        name=name,
        step_s=scenario.step_s,
        leak_free_days=leak_free_days,
        every=every,
    )
    has_quality = quality and bool(scenario.of_kind("quality"))
    quality_watch = (
        QualityWatch(ingest, scenario.sensors, refs, tenant=tenant, name=name)
        if has_quality
        else None
    )
    total = len(scenario.readings)
    try:
        replay(
            scenario.readings,
            refs,
            ingest,
            tenant=tenant,
            network=name,
            on_batch=None if progress is None else (lambda done: progress(done, total)),
        )
        leaks.drain()
        if quality_watch is not None:
            quality_watch.drain()
    finally:
        leaks.close()
        if quality_watch is not None:
            quality_watch.close()
    if leaks.errors:
        raise RuntimeError(f"leak watch failed: {leaks.errors[0]}")
    return {
        "leak": leaks.alerts,
        "quality": [] if quality_watch is None else quality_watch.alerts,
    }
