"""Live water detectors: the leak and quality detectors fed by readings arriving through ingest.

Both listen on the event bus for ``ObservationsAdded`` (every stored reading, none skipped),
keep what they need, and raise NGSI-LD ``Alert`` entities through the same ingest path, so an
operator finds them with an ordinary query (``type=Alert&q=category=="water"``).

The bus calls handlers on the writer's thread while it holds the ingest lock, so handlers only
file readings away; the leak search runs on a worker thread of its own.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd

from civica.core.bus import ObservationsAdded
from civica.domains.water.entities import (
    QUALITY_OBSERVED,
    STORED_SCALE,
    WATER_OBSERVED,
    SensorRef,
    leak_alert,
    quality_alert,
)
from civica.domains.water.files import Scenario
from civica.domains.water.network import Model, distances_from_link, network_graph
from civica.domains.water.quality import QualityConfig, StationWatch, quality_stations
from civica.ingest.pipeline import Ingest

log = logging.getLogger(__name__)

Detect = Callable[[Scenario, int], list[dict[str, Any]]]
CANDIDATE_RADIUS_M = 300.0


def pipes_within(graph: Any, pipe: str, radius_m: float) -> list[str]:
    """Links with midpoints within ``radius_m`` of ``pipe``'s along the network, nearest first."""
    table = distances_from_link(graph, pipe, radius_m) if pipe in graph.graph["links"] else {}
    return [name for name, _ in sorted(table.items(), key=lambda kv: kv[1])]


def _default_detect(scenario: Scenario, leak_free_days: int) -> list[dict[str, Any]]:
    from civica.domains.water.leaks import detect_leaks

    return [r.to_json() for r in detect_leaks(scenario, leak_free_days=leak_free_days)]


class LeakWatch:
    """Runs the leak detector over the readings received so far, once per ``every`` of data.

    The detector is causal (a decision at time t uses readings up to t), so an alarm whose
    ``detected_at`` is later than the data end of the previous run is new; older ones were
    raised already. Each new alarm becomes an ``Alert`` with the pipes within 300 m.
    """

    def __init__(
        self,
        ingest: Ingest,
        network: Model,
        sensors: pd.DataFrame,
        refs: Sequence[SensorRef],
        *,
        directory: Path,
        tenant: str = "",
        name: str = "network",
        step_s: int = 900,
        leak_free_days: int = 2,
        every: timedelta = timedelta(hours=1),
        detect: Detect = _default_detect,
    ) -> None:
        self.ingest, self.network, self.sensors = ingest, network, sensors
        self.directory = directory  # holds the network.inp the model-based search runs on
        self.tenant, self.name, self.step_s = tenant, name, step_s
        self.leak_free_days, self.every, self.detect = leak_free_days, every, detect
        self._sensor_of = {
            (r.entity_id, r.reading.attribute): r.sensor_id
            for r in refs
            if r.reading.entity_type == WATER_OBSERVED
        }
        self._values: dict[datetime, dict[str, float]] = {}
        self._lock = threading.Lock()
        self._checked_to: datetime | None = None  # data end of the last detector run
        self._next_check: datetime | None = None
        self._jobs: queue.Queue[datetime | None] = queue.Queue()
        self._graph = network_graph(network)
        self.alerts: list[dict[str, Any]] = []
        self.errors: list[str] = []
        self._worker = threading.Thread(target=self._run, name="leak-watch", daemon=True)
        self._worker.start()
        ingest.bus.subscribe(self.on_event)

    def on_event(self, event: object) -> None:
        """Bus handler: file the readings of our sensors; queue a run when an hour has passed."""
        if not isinstance(event, ObservationsAdded) or event.tenant != self.tenant:
            return
        latest = None
        with self._lock:
            for row in event.rows:
                if row.entity_type != WATER_OBSERVED or row.value_num is None:
                    continue
                sensor = self._sensor_of.get((row.entity_id, row.attribute))
                if sensor is None:
                    continue
                self._values.setdefault(row.observed_at, {})[sensor] = row.value_num
                latest = row.observed_at if latest is None else max(latest, row.observed_at)
            if latest is None:
                return
            if self._next_check is None:
                first = min(self._values)
                self._next_check = first + timedelta(days=self.leak_free_days)
            if latest >= self._next_check:
                self._next_check = latest + self.every
                self._jobs.put(latest)

    def drain(self, timeout: float = 300.0) -> None:
        """Run the detector on everything received and wait until its alerts are raised."""
        with self._lock:
            if self._values:
                self._jobs.put(max(self._values))
        done = threading.Event()
        self._jobs.put(None)
        self._jobs.put(_Marker(done))  # type: ignore[arg-type]
        if not done.wait(timeout):
            raise TimeoutError("leak detector did not finish in time")

    def close(self) -> None:
        self._jobs.put(_STOP)  # type: ignore[arg-type]
        self._worker.join(timeout=30)

    # ---- worker ------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            job: Any = self._jobs.get()
            if job is _STOP:
                return
            if isinstance(job, _Marker):
                job.done.set()
                continue
            if job is None or (self._checked_to is not None and job <= self._checked_to):
                continue
            try:
                self._check(job)
            except Exception as err:  # a detector failure must not stop the watch
                log.exception("leak detector failed")
                self.errors.append(f"{type(err).__name__}: {err}")

    def _check(self, until: datetime) -> None:
        with self._lock:
            rows = {t: dict(v) for t, v in self._values.items() if t <= until}
        frame = pd.DataFrame.from_dict(rows, orient="index").sort_index()
        frame = frame.reindex(columns=[str(s) for s in self.sensors["sensor_id"]])
        grid = pd.date_range(frame.index[0], frame.index[-1], freq=f"{self.step_s}s")
        frame = frame.reindex(grid)
        scenario = Scenario(self.directory, self.network, self.sensors, frame, self.step_s, ())
        alarms = self.detect(scenario, self.leak_free_days)
        since = self._checked_to
        self._checked_to = until
        fresh = []
        for alarm in alarms:
            at = pd.Timestamp(alarm["detected_at"]).to_pydatetime()
            if since is None or at > since:
                fresh.append(self._alert(alarm, at))
        if fresh:
            out = self.ingest.upsert(self.tenant, fresh)
            for eid, problem in out.errors:
                self.errors.append(f"{eid}: {problem.detail}")
            self.alerts.extend(a for a in fresh if a["id"] not in {e for e, _ in out.errors})

    def _alert(self, alarm: dict[str, Any], at: datetime) -> dict[str, Any]:
        pipe = str(alarm["pipe"])
        nearby = pipes_within(self._graph, pipe, CANDIDATE_RADIUS_M)
        flow = float(alarm.get("estimated_flow") or 0.0)
        chance = alarm.get("confidence")
        return leak_alert(
            self.name,
            pipe,
            at,
            flow,
            nearby,
            CANDIDATE_RADIUS_M,
            float(chance) if isinstance(chance, int | float) else None,
        )


class _Marker:
    def __init__(self, done: threading.Event) -> None:
        self.done = done


_STOP = object()


class QualityWatch:
    """One CANARY-style ``StationWatch`` per quality station; an Alert when one raises an event.

    Readings of a station arrive together (one entity, one ``observedAt``), so each time step
    is one ``update``. Stored values are in canonical units; conductivity is turned back into
    the µS/cm the detector was configured in.
    """

    def __init__(
        self,
        ingest: Ingest,
        sensors: pd.DataFrame,
        refs: Sequence[SensorRef],
        *,
        tenant: str = "",
        name: str = "network",
        config: QualityConfig | None = None,
    ) -> None:
        self.ingest, self.tenant, self.name = ingest, tenant, name
        self._watches = {
            node: StationWatch(node, signals, config)
            for node, signals in quality_stations(sensors).items()
        }
        self._sensor_of = {
            (r.entity_id, r.reading.attribute): (r.element, r.sensor_id)
            for r in refs
            if r.reading.entity_type == QUALITY_OBSERVED
        }
        self._active: set[str] = set()
        self._outbox: queue.Queue[Any] = queue.Queue()
        self.alerts: list[dict[str, Any]] = []
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._writer = threading.Thread(target=self._write, name="quality-watch", daemon=True)
        self._writer.start()
        ingest.bus.subscribe(self.on_event)

    def on_event(self, event: object) -> None:
        if not isinstance(event, ObservationsAdded) or event.tenant != self.tenant:
            return
        steps: dict[tuple[str, datetime], dict[str, float]] = {}
        for row in event.rows:
            if row.entity_type != QUALITY_OBSERVED or row.value_num is None:
                continue
            found = self._sensor_of.get((row.entity_id, row.attribute))
            if found is None:
                continue
            node, sensor = found
            value = row.value_num * STORED_SCALE.get(row.attribute, 1.0)
            steps.setdefault((node, row.observed_at), {})[sensor] = value
        if not steps:
            return
        with self._lock:
            for (node, at), values in sorted(steps.items(), key=lambda kv: kv[0][1]):
                self._step(node, at, values)

    def _step(self, node: str, at: datetime, values: dict[str, float]) -> None:
        watch = self._watches.get(node)
        if watch is None:
            return
        watch.update({"time": at.timestamp(), **values})
        if watch.in_event and node not in self._active:
            self._active.add(node)  # one alert per event, however long it lasts
            flagged = sorted(values)
            self._outbox.put(quality_alert(self.name, node, at, watch.probability, flagged))
        elif not watch.in_event:
            self._active.discard(node)

    def drain(self, timeout: float = 60.0) -> None:
        """Wait until every alert raised so far is stored."""
        done = threading.Event()
        self._outbox.put(_Marker(done))
        if not done.wait(timeout):
            raise TimeoutError("quality alerts were not stored in time")

    def close(self) -> None:
        self._outbox.put(_STOP)
        self._writer.join(timeout=30)

    def _write(self) -> None:
        # Alerts go through ingest, whose lock the bus thread may hold: write them from here.
        while True:
            item = self._outbox.get()
            if item is _STOP:
                return
            if isinstance(item, _Marker):
                item.done.set()
                continue
            out = self.ingest.upsert(self.tenant, [item])
            if out.errors:
                self.errors.extend(f"{e}: {p.detail}" for e, p in out.errors)
            else:
                self.alerts.append(item)
