"""The traffic twin: run a SUMO scenario and publish its detectors as ``TrafficFlowObserved``.

Every ``interval_s`` simulated seconds each detector's steps become one reading: intensity
(vehicles per hour entering the detector), occupancy (fraction of the interval, 0..1), average
vehicle speed (km/h, left out when no vehicle passed) and, for lane detectors, the queue length
(metres of halted vehicles at the end of the interval). ``observedAt`` is the platform time the
scenario starts at plus the simulated time. The twin never writes to the store: readings go
through ``Ingest.upsert`` like a detector gateway's, so live watches see them on the bus.

Detectors are the network's own induction loops when it has some, else one virtual detector
per lane read through TraCI's lane API. All TraCI calls live in ``engine.py``.

Pacing: by default SUMO runs as fast as it can. With ``speed`` (simulated seconds per
wall-clock second: 1.0 is real time, 60 an hour a minute) the loop sleeps after each step
until the wall clock catches up, so simulated time never runs ahead of
``begin + elapsed_wall * speed`` and, at real time, ``observedAt`` stays near the platform's
now. The clock and the sleep are parameters so tests can pace without waiting.

Travel times: ``travel_times`` names pairs of detectors (origin, destination). A vehicle newly
on a paired detector becomes a :class:`~civica.domains.traffic.sightings.Sighting` in the same
call that reads the detector step: its SUMO id is hashed there and only the token goes on, to a
:class:`~civica.domains.traffic.travel_times.TravelTimeMatcher` with one segment per pair. Its
k-anonymous aggregates (5-minute intervals, at least 5 vehicles) are published through ingest
after each reading interval. Hasher and matcher run on the twin's platform time (start plus
simulated time), so the key rotates at the simulated UTC midnight; each run draws its own keys
and drops them when it ends.

Ctrl-C (``KeyboardInterrupt``) during a run ends SUMO and surfaces as :class:`TwinInterrupted`,
itself a ``KeyboardInterrupt``, which carries what was published until then.
"""

from __future__ import annotations

import re
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from civica.core.clock import Clock
from civica.core.timefmt import format_time
from civica.domains.traffic.congestion import DEFAULT, CongestionWatch, DetectorRef, Thresholds
from civica.domains.traffic.engine import (
    LANE,
    DetectorSite,
    DetectorStep,
    SumoEngine,
    SumoOptions,
    detector_readings,
    detector_sites,
    edge_successors,
    stop_vehicle_on,
    watch_detectors,
)
from civica.domains.traffic.ids import TRAFFIC_FLOW, flow_id, segment_id
from civica.domains.traffic.incidents import IncidentConfig
from civica.domains.traffic.scenarios import Scenario, resco_scenario
from civica.domains.traffic.sightings import SightingHasher
from civica.domains.traffic.travel_times import Segment, TravelTimeError, TravelTimeMatcher
from civica.ingest.pipeline import Ingest

VEHICLE_SPACE_M = 7.5  # SUMO's default passenger car: 5 m long + 2.5 m minimum gap
TRAVEL_MAX_S = 3600.0  # seen at the destination over an hour after the origin: another trip


class TwinError(ValueError):
    """A twin run that cannot be done as asked (unknown detector, bad interval, ...)."""


def check_run(seconds: float, interval_s: float, speed: float | None = None) -> None:
    """Raise TwinError when a run of this length, interval and speed cannot be done."""
    if interval_s <= 0 or interval_s != int(interval_s):
        raise TwinError("interval must be a positive whole number of seconds")
    if interval_s > seconds:
        raise TwinError("interval is longer than the run")
    if speed is not None and not speed >= 0:  # also refuses NaN
        raise TwinError("speed must be 0 (as fast as possible) or positive")


def check_pairs(pairs: Sequence[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    """The distinct travel-time pairs in order; TwinError for an empty id or a loop A:A."""
    for origin, destination in pairs:
        if not origin or not destination:
            raise TwinError(f"travel-time pair {origin}:{destination} needs two detector ids")
        if origin == destination:
            raise TwinError(f"travel-time pair {origin}:{destination} is one detector twice")
    return tuple(dict.fromkeys(pairs))


def travel_segment(scenario: str, origin: str, destination: str) -> Segment:
    """The segment of one pair, named ``<scenario>.<origin>.<destination>``.

    Characters a segment id cannot hold (SUMO's ``#``, ``:``, spaces, ...) become ``_``.
    """
    name = re.sub(r"[^A-Za-z0-9_.\-]", "_", f"{scenario}.{origin}.{destination}")
    try:
        return Segment(name, origin, destination, TRAVEL_MAX_S)
    except TravelTimeError as err:
        raise TwinError(str(err)) from err


class SimulatedClock:
    """The twin's platform time: the run's start plus the simulated seconds so far."""

    def __init__(self, start: datetime) -> None:
        self.start = start
        self.elapsed_s = 0.0

    def now(self) -> datetime:
        return self.start + timedelta(seconds=self.elapsed_s)


class TravelTimeWatch:
    """The paired detectors' vehicles, hashed as they are read and matched into travel times."""

    def __init__(
        self,
        scenario: str,
        pairs: Sequence[tuple[str, str]],
        clock: Clock,
        hasher: Callable[[Clock], SightingHasher] = SightingHasher,
    ) -> None:
        self.hasher = hasher(clock)
        try:
            self.matcher = TravelTimeMatcher(
                [travel_segment(scenario, a, b) for a, b in pairs], clock=clock
            )
        except TravelTimeError as err:  # two pairs whose ids collide once made safe
            raise TwinError(str(err)) from err
        self._tokens: dict[str, frozenset[str]] = {}  # detector -> tokens on it last step

    def observe(self, detector: str, step: DetectorStep, at: datetime) -> tuple[int, int]:
        """Sight the vehicles new on ``detector``; return (sightings, travel times matched).

        Every vehicle on it is hashed here, so what is kept between steps (and all the matcher
        ever sees) are tokens. A vehicle still on a detector at midnight is sighted again
        under the new day's token, which links to nothing.
        """
        sightings = [self.hasher.sighting(detector, vid, at) for vid in step.vehicle_ids]
        before = self._tokens.get(detector, frozenset())
        self._tokens[detector] = frozenset(s.token for s in sightings)
        new = [s for s in sightings if s.token not in before]
        return len(new), sum(len(self.matcher.add(s)) for s in new)


def _unknown_detectors(
    name: str, wanted: Sequence[str], known: dict[str, DetectorSite], what: str = "detector(s)"
) -> None:
    """TwinError naming the unknown ones and (some of) the known ones."""
    unknown = sorted(set(wanted) - set(known))
    if unknown:
        listed = ", ".join(sorted(known)[:20])
        raise TwinError(
            f"unknown {what} {', '.join(unknown)} in scenario {name}; "
            f"known: {listed}{' ...' if len(known) > 20 else ''}"
        )


def pace_delay(simulated_s: float, wall_s: float, speed: float | None) -> float:
    """Wall seconds to wait so ``simulated_s`` does not run ahead of ``wall_s * speed``.

    >>> pace_delay(60.0, 4.0, 10.0)
    2.0
    >>> pace_delay(60.0, 4.0, None)  # as fast as possible
    0.0
    """
    if not speed:
        return 0.0
    return max(simulated_s / speed - wall_s, 0.0)


@dataclass
class Accumulator:
    """One detector's steps within the current interval."""

    steps: int = 0
    entered: int = 0
    speed_sum: float = 0.0  # mean speed x vehicles, summed over steps
    speed_count: int = 0
    occupancy_sum: float = 0.0
    previous: frozenset[str] = frozenset()
    last: DetectorStep | None = None

    def add(self, step: DetectorStep) -> None:
        ids = frozenset(step.vehicle_ids)
        self.entered += len(ids - self.previous)
        self.previous = ids
        self.steps += 1
        self.occupancy_sum += step.occupancy
        if step.mean_speed_ms is not None and ids:
            self.speed_sum += step.mean_speed_ms * len(ids)
            self.speed_count += len(ids)
        self.last = step

    def reading(self, seconds: float) -> dict[str, float]:
        """Intensity veh/h, occupancy 0..1, speed km/h (if any vehicle), queue m (lanes)."""
        out = {
            "intensity": self.entered * 3600.0 / seconds,
            "occupancy": min(max(self.occupancy_sum / max(self.steps, 1), 0.0), 1.0),
        }
        if self.speed_count:
            out["averageVehicleSpeed"] = self.speed_sum / self.speed_count * 3.6
        if self.last is not None and self.last.halting is not None:
            out["queueLength"] = self.last.halting * VEHICLE_SPACE_M
        return out

    def reset(self) -> None:
        self.steps = self.entered = self.speed_count = 0
        self.speed_sum = self.occupancy_sum = 0.0


_UNITS = {"averageVehicleSpeed": "KMH", "queueLength": "MTR"}
_MEASURES = ("intensity", "occupancy", "averageVehicleSpeed", "queueLength")


def flow_entity(
    scenario: str, site: DetectorSite, at: datetime, reading: dict[str, float]
) -> dict[str, Any]:
    """The NGSI-LD fragment of one detector reading."""
    stamp = format_time(at)
    doc: dict[str, Any] = {
        "id": flow_id(scenario, site.detector_id),
        "type": TRAFFIC_FLOW,
        "laneId": {"type": "Property", "value": site.lane_index},
        "refRoadSegment": {"type": "Relationship", "object": segment_id(scenario, site.edge)},
    }
    if site.lon_lat is not None:
        doc["location"] = {
            "type": "GeoProperty",
            "value": {"type": "Point", "coordinates": list(site.lon_lat)},
        }
    for name, value in reading.items():
        attr: dict[str, Any] = {"type": "Property", "value": float(value), "observedAt": stamp}
        if name in _UNITS:
            attr["unitCode"] = _UNITS[name]
        doc[name] = attr
    return doc


@dataclass
class TwinRun:
    """What a twin run published."""

    scenario: str
    sites: tuple[DetectorSite, ...]
    intervals: int = 0
    readings: int = 0
    incidents: list[dict[str, Any]] = field(default_factory=list)
    successors: dict[str, tuple[str, ...]] = field(default_factory=dict)
    sumo_pid: int | None = None
    simulated_s: float = 0.0  # seconds after the scenario begin SUMO has reached
    pairs: tuple[tuple[str, str], ...] = ()  # travel-time detector pairs
    sightings: int = 0  # vehicles newly seen on a paired detector
    travel_times: int = 0  # of them, origin-to-destination passages matched
    travel_time_aggregates: int = 0  # segment intervals published (k or more vehicles)
    travel_time_suppressed: int = 0  # segment intervals dropped for too few vehicles


class TwinInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped a run (SUMO is closed); ``run`` is what was published before it."""

    def __init__(self, run: TwinRun) -> None:
        super().__init__(f"twin run of {run.scenario} interrupted")
        self.run = run
        self.watch: CongestionWatch | None = None  # set by run_live


@dataclass(frozen=True)
class ScriptedIncident:
    """A vehicle stopped on ``lane`` from ``at_s`` simulated seconds (after the scenario begin)."""

    lane: str
    at_s: float


Publish = Callable[[datetime, list[dict[str, Any]]], object]


def run_twin(
    scenario: Scenario | str,
    ingest: Ingest,
    *,
    seconds: float,
    interval_s: float = 60.0,
    start: datetime | None = None,
    tenant: str = "",
    detectors: Sequence[str] | None = None,
    seed: int = 0,
    demand_scale: float = 1.0,
    incidents: Sequence[ScriptedIncident] = (),
    on_interval: Publish | None = None,
    on_sites: Callable[[tuple[DetectorSite, ...], dict[str, tuple[str, ...]]], None] | None = None,
    on_step: Callable[[float], None] | None = None,
    speed: float | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    travel_times: Sequence[tuple[str, str]] = (),
    hasher: Callable[[Clock], SightingHasher] = SightingHasher,
) -> TwinRun:
    """Run ``scenario`` (a Scenario or a RESCO name) and publish its detectors through ingest.

    ``detectors`` picks some of them (all by default; an unknown one is an error); a last
    interval shorter than ``interval_s`` is not published. ``on_interval(at, docs)`` is called
    after each published interval (live watches hook in there); ``on_sites(sites, successors)``
    once the detectors and the segments they lead to are known; ``on_step(elapsed_s)`` after
    every simulated second. ``speed`` paces the run on ``clock`` (see the module docstring);
    None or 0 runs as fast as possible. SUMO is always closed, also after an error; after
    Ctrl-C, :class:`TwinInterrupted` tells what was published.

    ``travel_times`` pairs (origin, destination) detector ids for travel times; a paired
    detector is watched for sightings even when ``detectors`` leaves it out (its readings are
    then not published). ``hasher(clock)`` makes the run's SightingHasher (a seam for tests).
    """
    if isinstance(scenario, str):
        scenario = resco_scenario(scenario)
    check_run(seconds, interval_s, speed)
    pairs = check_pairs(travel_times)
    begin_at = (start or datetime.now(UTC)).astimezone(UTC)
    name = scenario.name
    run = TwinRun(name, (), pairs=pairs)
    platform_time = SimulatedClock(begin_at)
    travel: TravelTimeWatch | None = None
    options = SumoOptions(seconds=seconds, seed=seed, demand_scale=demand_scale)
    try:
        with (
            tempfile.TemporaryDirectory(prefix="civica-twin-") as tmp,
            SumoEngine(scenario, options, Path(tmp) / "tripinfo.xml") as engine,
        ):
            run.sumo_pid = engine.pid
            sites = detector_sites(engine)
            known = {s.detector_id: s for s in sites}
            if detectors is not None:
                _unknown_detectors(name, detectors, known)
                sites = tuple(known[d] for d in dict.fromkeys(detectors))
            if not sites:
                what = "no detector was selected" if detectors is not None else "it has no lanes"
                raise TwinError(f"nothing to observe in scenario {name}: {what}")
            paired = tuple(dict.fromkeys(d for pair in pairs for d in pair))
            _unknown_detectors(name, paired, known, "travel-time detector(s)")
            run.sites = sites
            run.successors = edge_successors(engine, {s.lane for s in sites})
            if on_sites is not None:
                on_sites(sites, run.successors)
            published = {s.detector_id for s in sites}
            watch_detectors(engine, sites + tuple(known[d] for d in paired if d not in published))
            if pairs:
                travel = TravelTimeWatch(name, pairs, platform_time, hasher)
            sighted = tuple((known[d], d) for d in paired)
            accumulators = {s.detector_id: Accumulator() for s in sites}
            pending = sorted(incidents, key=lambda i: i.at_s)
            since = engine.time
            wall_start = clock()
            while engine.time < engine.end:
                engine.step()
                elapsed = engine.time - scenario.begin
                delay = pace_delay(elapsed, clock() - wall_start, speed)
                if delay > 0:
                    sleep(delay)
                run.simulated_s = platform_time.elapsed_s = elapsed
                while pending and elapsed >= pending[0].at_s:
                    incident = pending.pop(0)
                    vehicle = stop_vehicle_on(engine, incident.lane)
                    if vehicle is None:  # nobody there yet: try again next step
                        pending.insert(0, ScriptedIncident(incident.lane, elapsed + 1))
                        break
                    run.incidents.append(
                        {"lane": incident.lane, "vehicle": vehicle, "at_s": elapsed}
                    )
                steps = detector_readings(engine)
                for site in sites:
                    step = steps.get(site.lane if site.kind == LANE else site.detector_id)
                    if step is not None:
                        accumulators[site.detector_id].add(step)
                if travel is not None:
                    now = platform_time.now()
                    for site, detector in sighted:
                        step = steps.get(site.lane if site.kind == LANE else detector)
                        if step is not None:
                            seen, matched = travel.observe(detector, step, now)
                            run.sightings += seen
                            run.travel_times += matched
                if engine.time - since >= interval_s:
                    at = begin_at + timedelta(seconds=elapsed)
                    docs = [
                        flow_entity(name, s, at, accumulators[s.detector_id].reading(interval_s))
                        for s in sites
                    ]
                    result = ingest.upsert(tenant, docs)
                    if result.errors:
                        raise TwinError(f"readings refused: {result.errors[0][1]}")
                    for acc in accumulators.values():
                        acc.reset()
                    run.intervals += 1
                    run.readings += sum(1 for d in docs for k in d if k in _MEASURES)
                    since = engine.time
                    if travel is not None:
                        _publish_travel_times(travel, run, ingest, tenant, at)
                    if on_interval is not None:
                        on_interval(at, docs)
                if on_step is not None:
                    on_step(elapsed)
            if travel is not None:  # travel-time intervals that ended after the last reading
                _publish_travel_times(travel, run, ingest, tenant, platform_time.now())
    except KeyboardInterrupt as err:
        raise TwinInterrupted(run) from err
    return run


def _publish_travel_times(
    travel: TravelTimeWatch, run: TwinRun, ingest: Ingest, tenant: str, at: datetime
) -> None:
    """Publish the travel-time intervals ended by ``at``; count them in ``run``."""
    result = travel.matcher.publish(ingest, tenant, now=at)
    if result.errors:
        raise TwinError(f"travel times refused: {result.errors[0][1]}")
    run.travel_time_aggregates = travel.matcher.published
    run.travel_time_suppressed = travel.matcher.suppressed


def detector_refs(scenario: str, sites: Sequence[DetectorSite]) -> dict[str, DetectorRef]:
    """Each detector's entity id -> its road segment and that segment's free-flow speed."""
    free: dict[str, float] = {}
    for site in sites:
        free[site.edge] = max(free.get(site.edge, 0.0), site.free_speed_ms * 3.6)
    return {
        flow_id(scenario, s.detector_id): DetectorRef(
            s.edge, segment_id(scenario, s.edge), free[s.edge]
        )
        for s in sites
    }


def run_live(
    scenario: Scenario | str,
    ingest: Ingest,
    *,
    seconds: float,
    interval_s: float = 60.0,
    start: datetime | None = None,
    tenant: str = "",
    thresholds: Thresholds = DEFAULT,
    incident_config: IncidentConfig | None = None,
    **twin_options: Any,
) -> tuple[TwinRun, CongestionWatch]:
    """The twin with the congestion (and, given a config, incident) watch on.

    Alerts are raised as intervals arrive. ``twin_options`` go to :func:`run_twin` (``speed``,
    ``detectors``, ``on_step``, ...); after Ctrl-C the :class:`TwinInterrupted` carries the
    watch too.
    """
    if isinstance(scenario, str):
        scenario = resco_scenario(scenario)
    watch = CongestionWatch(
        ingest,
        scenario=scenario.name,
        tenant=tenant,
        thresholds=thresholds,
        incident_config=incident_config,
    )
    name = scenario.name
    try:
        run = run_twin(
            scenario,
            ingest,
            seconds=seconds,
            interval_s=interval_s,
            start=start,
            tenant=tenant,
            on_sites=lambda sites, links: watch.add_detectors(detector_refs(name, sites), links),
            on_interval=lambda at, docs: watch.process(until=at),
            **twin_options,
        )
        watch.process()
    except TwinInterrupted as stop:
        stop.watch = watch  # its alerts so far are published: each interval was processed
        raise
    finally:
        watch.close()
    return run, watch
