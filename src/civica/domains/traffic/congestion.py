"""Road-segment conditions and congestion alerts with hysteresis.

A segment's (a SUMO edge's) condition comes from its detectors' readings of one interval:
the speed ratio (average speed over the free-flow speed) and the occupancy. Its level is
``free`` / ``heavy`` / ``congested`` / ``jammed``, the worse of what the two say.

An alert is an episode, not a reading: it opens when the segment is bad (speed ratio below
``enter_ratio`` or occupancy at least ``enter_occupancy``) for ``enter_intervals`` intervals in
a row, and closes when it is good (ratio at least ``leave_ratio`` and occupancy below
``leave_occupancy``, both easier thresholds than the entry ones) for ``leave_intervals`` in a
row. Readings in between keep the current state, so a segment near one threshold does not
flap, and each episode is one NGSI-LD ``Alert`` (category traffic, subCategory trafficJam):
status ``open`` when raised, ``resolved`` with ``validTo`` when it ends.

The pure part (levels, conditions, :class:`EpisodeTracker`) needs neither SUMO nor a store;
:class:`CongestionWatch` listens for readings on the ingest bus and raises the alerts through
``Ingest.upsert``, like the water watches do.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import IntEnum
from typing import Any

from civica.core.bus import ObservationsAdded
from civica.domains.traffic.ids import TRAFFIC_FLOW, traffic_alert
from civica.domains.traffic.incidents import (
    IncidentConfig,
    IncidentDetector,
    SegmentSample,
    incident_alert,
)
from civica.ingest.pipeline import Ingest

TRAFFIC_JAM = "trafficJam"


class Level(IntEnum):
    FREE = 0
    HEAVY = 1
    CONGESTED = 2
    JAMMED = 3

    @property
    def label(self) -> str:
        return self.name.lower()


@dataclass(frozen=True)
class Thresholds:
    """Level boundaries (speed ratio below / occupancy at least) and the alert hysteresis.

    The speed ratio is over the segment's speed limit, and a lane detector averages the whole
    lane, so an approach to a signal runs at 0.35-0.8 in normal operation (red phases stop
    its vehicles): the defaults only call a ratio below 0.3 congested. Sites with a measured
    free-flow speed can use stricter thresholds.
    """

    heavy_ratio: float = 0.6
    congested_ratio: float = 0.3
    jammed_ratio: float = 0.15
    heavy_occupancy: float = 0.15
    congested_occupancy: float = 0.3
    jammed_occupancy: float = 0.5
    enter_ratio: float = 0.3
    enter_occupancy: float = 0.3
    leave_ratio: float = 0.35
    leave_occupancy: float = 0.2
    enter_intervals: int = 3
    leave_intervals: int = 3

    def __post_init__(self) -> None:
        if not self.jammed_ratio <= self.congested_ratio <= self.heavy_ratio:
            raise ValueError("speed-ratio thresholds must fall: heavy >= congested >= jammed")
        if not self.heavy_occupancy <= self.congested_occupancy <= self.jammed_occupancy:
            raise ValueError("occupancy thresholds must rise: heavy <= congested <= jammed")
        if self.leave_ratio < self.enter_ratio or self.leave_occupancy > self.enter_occupancy:
            raise ValueError("leaving congestion must not be easier to meet than entering it")
        if self.enter_intervals < 1 or self.leave_intervals < 1:
            raise ValueError("enter and leave intervals must be at least 1")


DEFAULT = Thresholds()


def congestion_level(
    speed_ratio: float | None, occupancy: float, thresholds: Thresholds = DEFAULT
) -> Level:
    """The level of one interval; ``speed_ratio`` None means no vehicle passed (speed unknown)."""
    if occupancy < 0 or (speed_ratio is not None and speed_ratio < 0):
        raise ValueError("speed ratio and occupancy cannot be negative")
    t = thresholds
    by_speed = Level.FREE
    if speed_ratio is not None:
        if speed_ratio < t.jammed_ratio:
            by_speed = Level.JAMMED
        elif speed_ratio < t.congested_ratio:
            by_speed = Level.CONGESTED
        elif speed_ratio < t.heavy_ratio:
            by_speed = Level.HEAVY
    if occupancy >= t.jammed_occupancy:
        by_occupancy = Level.JAMMED
    elif occupancy >= t.congested_occupancy:
        by_occupancy = Level.CONGESTED
    elif occupancy >= t.heavy_occupancy:
        by_occupancy = Level.HEAVY
    else:
        by_occupancy = Level.FREE
    return max(by_speed, by_occupancy)


@dataclass(frozen=True)
class Condition:
    """One segment over one interval."""

    speed_ratio: float | None
    occupancy: float
    level: Level
    queue_m: float | None = None


@dataclass(frozen=True)
class DetectorReading:
    """What one detector said for one interval (speed in km/h, None if nobody passed)."""

    intensity: float = 0.0
    occupancy: float = 0.0
    speed_kmh: float | None = None
    queue_m: float | None = None


def segment_condition(
    readings: list[DetectorReading], free_flow_kmh: float, thresholds: Thresholds = DEFAULT
) -> Condition:
    """A segment's condition from its detectors (lanes): speed weighted by each one's flow."""
    if free_flow_kmh <= 0:
        raise ValueError("free-flow speed must be positive")
    if not readings:
        raise ValueError("a segment condition needs at least one detector reading")
    weighted = [(r.speed_kmh, max(r.intensity, 1.0)) for r in readings if r.speed_kmh is not None]
    ratio = None
    if weighted:
        speed = sum(s * w for s, w in weighted) / sum(w for _, w in weighted)
        ratio = speed / free_flow_kmh
    occupancy = max(r.occupancy for r in readings)  # the worst lane is what drivers see
    queues = [r.queue_m for r in readings if r.queue_m is not None]
    return Condition(
        speed_ratio=ratio,
        occupancy=occupancy,
        level=congestion_level(ratio, occupancy, thresholds),
        queue_m=max(queues) if queues else None,
    )


@dataclass
class Episode:
    """One congestion episode of a segment."""

    segment: str
    started_at: datetime  # first bad interval of the run that opened it
    detected_at: datetime
    worst: Level
    ended_at: datetime | None = None


@dataclass
class EpisodeTracker:
    """Hysteresis for one segment: feed one condition per interval, get the episode changes."""

    segment: str
    thresholds: Thresholds = DEFAULT
    active: Episode | None = None
    _bad: int = 0
    _good: int = 0
    _bad_since: datetime | None = None
    episodes: list[Episode] = field(default_factory=list)

    def bad(self, c: Condition) -> bool:
        t = self.thresholds
        slow = c.speed_ratio is not None and c.speed_ratio < t.enter_ratio
        return slow or c.occupancy >= t.enter_occupancy

    def good(self, c: Condition) -> bool:
        t = self.thresholds
        fast = c.speed_ratio is None or c.speed_ratio >= t.leave_ratio
        return fast and c.occupancy < t.leave_occupancy

    def update(self, at: datetime, condition: Condition) -> str | None:
        """``"opened"`` / ``"closed"`` when an episode starts / ends with this interval."""
        if self.bad(condition):
            if self._bad == 0:
                self._bad_since = at
            self._bad += 1
        else:
            self._bad = 0
        self._good = self._good + 1 if self.good(condition) else 0
        if self.active is None:
            if self._bad >= self.thresholds.enter_intervals:
                assert self._bad_since is not None
                self.active = Episode(self.segment, self._bad_since, at, condition.level)
                self.episodes.append(self.active)
                return "opened"
            return None
        self.active.worst = max(self.active.worst, condition.level)
        if self._good >= self.thresholds.leave_intervals:
            self.active.ended_at = at
            self.active = None
            return "closed"
        return None


def jam_alert(scenario: str, segment: str, segment_urn: str, episode: Episode) -> dict[str, Any]:
    """The ``Alert`` of one episode: open while it lasts, resolved with ``validTo`` after."""
    return traffic_alert(
        TRAFFIC_JAM,
        scenario,
        segment,
        segment_urn,
        since=episode.started_at,
        detected_at=episode.detected_at,
        ended_at=episode.ended_at,
        severity="high" if episode.worst >= Level.JAMMED else "medium",
        description=f"{episode.worst.label} traffic on segment {segment} of {scenario}",
    )


@dataclass(frozen=True)
class DetectorRef:
    """Which segment a ``TrafficFlowObserved`` entity reports on, and its free-flow speed."""

    segment: str  # the edge id
    segment_urn: str
    free_flow_kmh: float


_ATTRS = {"intensity", "occupancy", "averageVehicleSpeed", "queueLength"}


class CongestionWatch:
    """Turns ``TrafficFlowObserved`` readings arriving on the bus into congestion alerts.

    The bus calls :meth:`on_event` on the writer's thread under the ingest lock, so it only
    files readings away; :meth:`process` (called by whoever feeds the readings, after each
    interval, or by a timer) evaluates the complete intervals and upserts alerts.
    """

    def __init__(
        self,
        ingest: Ingest,
        *,
        scenario: str,
        tenant: str = "",
        thresholds: Thresholds = DEFAULT,
        detectors: Mapping[str, DetectorRef] | None = None,
        incident_config: IncidentConfig | None = None,
    ) -> None:
        self.ingest, self.scenario, self.tenant = ingest, scenario, tenant
        self.thresholds = thresholds
        self._refs: dict[str, DetectorRef] = dict(detectors or {})
        self._pending: dict[datetime, dict[str, dict[str, float]]] = {}
        self._lock = threading.Lock()
        self._closed = False
        self.trackers: dict[str, EpisodeTracker] = {}
        self.conditions: list[tuple[datetime, str, Condition]] = []
        self.alerts: list[dict[str, Any]] = []
        self.incident_config = incident_config
        self.incidents: IncidentDetector | None = None
        ingest.bus.subscribe(self.on_event)

    def add_detectors(
        self,
        detectors: Mapping[str, DetectorRef],
        successors: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        """Detectors to watch; with ``successors`` (segment -> next segments) and an
        incident config, incidents are looked for too."""
        with self._lock:
            self._refs.update(detectors)
            if successors is not None and self.incident_config is not None:
                self.incidents = IncidentDetector(successors, self.incident_config)

    def on_event(self, event: object) -> None:
        if self._closed or not isinstance(event, ObservationsAdded):
            return
        if event.tenant != self.tenant:
            return
        with self._lock:
            for row in event.rows:
                if row.entity_type != TRAFFIC_FLOW or row.attribute not in _ATTRS:
                    continue
                if row.entity_id not in self._refs or row.value_num is None:
                    continue
                at = self._pending.setdefault(row.observed_at, {})
                at.setdefault(row.entity_id, {})[row.attribute] = row.value_num

    def process(self, until: datetime | None = None) -> list[dict[str, Any]]:
        """Evaluate the intervals received up to ``until`` (all if None); new alert changes."""
        with self._lock:
            times = sorted(t for t in self._pending if until is None or t <= until)
            batches = [(t, self._pending.pop(t)) for t in times]
            refs = dict(self._refs)
        docs: list[dict[str, Any]] = []
        for at, by_detector in batches:
            per_segment: dict[str, list[DetectorReading]] = {}
            for entity_id, values in by_detector.items():
                per_segment.setdefault(refs[entity_id].segment, []).append(
                    DetectorReading(
                        intensity=values.get("intensity", 0.0),
                        occupancy=values.get("occupancy", 0.0),
                        speed_kmh=values.get("averageVehicleSpeed"),
                        queue_m=values.get("queueLength"),
                    )
                )
            free = {r.segment: (r.free_flow_kmh, r.segment_urn) for r in refs.values()}
            samples: dict[str, SegmentSample] = {}
            for segment in sorted(per_segment):
                free_kmh, urn = free[segment]
                condition = segment_condition(per_segment[segment], free_kmh, self.thresholds)
                self.conditions.append((at, segment, condition))
                samples[segment] = SegmentSample(
                    intensity=sum(r.intensity for r in per_segment[segment]),
                    occupancy=condition.occupancy,
                    queue_m=condition.queue_m or 0.0,
                )
                tracker = self.trackers.setdefault(
                    segment, EpisodeTracker(segment, self.thresholds)
                )
                change = tracker.update(at, condition)
                if change is not None:
                    episode = tracker.episodes[-1]
                    docs.append(jam_alert(self.scenario, segment, urn, episode))
            if self.incidents is not None:
                for incident in self.incidents.update(at, samples):
                    urn = free[incident.segment][1]
                    docs.append(incident_alert(self.scenario, incident, urn))
        if docs:
            out = self.ingest.upsert(self.tenant, docs)
            if out.errors:
                raise ValueError(f"congestion alerts refused: {out.errors[0][1]}")
            self.alerts.extend(docs)
        return docs

    def close(self) -> None:
        """Stop listening (the bus has no unsubscribe; events are ignored from now on)."""
        self._closed = True
