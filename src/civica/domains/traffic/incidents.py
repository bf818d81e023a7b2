"""Incident detection from detector patterns, and how to score it on scripted incidents.

A blocked lane shows as a pair of symptoms across a junction: upstream, the segments feeding
it fill up (occupancy or queue well above their own recent level), and the blocked segment
itself suddenly carries much less traffic than it usually does. Recurrent congestion at a
signal raises upstream occupancy too, but then the flow past it stays near its usual level.
Where drivers can go round the stopped vehicle neither symptom need show; what does is the
vehicle itself: a queue standing at the end of every interval on a segment whose queues
usually clear.

:class:`IncidentDetector` compares each segment's interval with a rolling baseline of its own
recent intervals (frozen while a segment is suspect or its flow has collapsed, for at most
``max_frozen_intervals``, so an incident does not become normal) and suspects a busy segment
(baseline flow at least ``min_baseline_flow``) when

* its flow drops below ``flow_drop`` of its baseline, and below it by ``flow_drop_sigmas``
  standard deviations of its baseline (at a signal, one-minute flows swing with the cycle),
  while some segment upstream of it rises; or
* (a stall) its queue stood at ``stall_queue_m`` or more at the end of ``stall_intervals``
  intervals in a row, which happened in at most ``stall_share`` of its baseline intervals
  before, with its flow not above ``stall_flow_rise`` times its baseline (rising demand is
  not a blockage).

``confirm_intervals`` suspect intervals in a row raise an incident, ``clear_intervals`` clear
ones end it. Pure: no SUMO, no store.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from statistics import fmean, pstdev
from typing import Any

from civica.domains.traffic.ids import traffic_alert

INCIDENT_SUSPECTED = "incidentSuspected"


@dataclass(frozen=True)
class IncidentConfig:
    baseline_intervals: int = 10
    min_baseline_intervals: int = 3
    flow_drop: float = 0.4  # the segment's flow below this share of its baseline
    flow_drop_sigmas: float = 2.0  # ... and below it by this many standard deviations
    min_baseline_flow: float = 200.0  # veh/h: quieter segments carry too little to judge
    occupancy_rise: float = 0.1  # upstream occupancy above its baseline by this much
    queue_rise_m: float = 40.0  # ... or its queue longer by this much
    stall_queue_m: float = 7.0  # a halted vehicle (the twin counts 7.5 m each) ...
    stall_intervals: int = 3  # ... at the end of this many intervals in a row
    stall_share: float = 0.1  # ... where at most this share of the baseline before it had one
    stall_flow_rise: float = 1.2  # ... and whose flow is at most this times its baseline
    confirm_intervals: int = 2
    clear_intervals: int = 3
    join_intervals: int = 3  # a suspect joins an open incident at most this many intervals old
    max_frozen_intervals: int = 10

    def __post_init__(self) -> None:
        if not 0 < self.flow_drop < 1:
            raise ValueError("flow drop must be a share between 0 and 1")
        if self.min_baseline_intervals < 1 or self.baseline_intervals < self.min_baseline_intervals:
            raise ValueError("need 1 <= min_baseline_intervals <= baseline_intervals")
        if self.confirm_intervals < 1 or self.clear_intervals < 1:
            raise ValueError("confirm and clear intervals must be at least 1")
        if self.stall_intervals < 1 or not 0 <= self.stall_share <= 1:
            raise ValueError("stall intervals must be at least 1 and stall share within 0..1")


@dataclass(frozen=True)
class SegmentSample:
    """One segment over one interval: total flow (veh/h), worst occupancy, longest queue (m)."""

    intensity: float
    occupancy: float
    queue_m: float = 0.0


@dataclass
class Incident:
    segment: str  # where the flow dropped (or the queue stood): the blocked segment
    upstream: tuple[str, ...]  # the segments that filled up (none for a stall)
    suspected_from: datetime
    detected_at: datetime
    ended_at: datetime | None = None
    members: set[str] = field(default_factory=set)  # suspect segments it stands for

    @property
    def involves(self) -> set[str]:
        return {self.segment, *self.upstream, *self.members}


@dataclass(frozen=True)
class _Baseline:
    intensity: float
    intensity_sd: float
    occupancy: float
    queue_m: float


@dataclass
class _State:
    history: deque[SegmentSample]
    suspect: int = 0
    clear: int = 0
    queued: int = 0  # intervals in a row that ended with a stall-sized queue
    frozen: int = 0  # intervals in a row its baseline was frozen
    since: datetime | None = None
    active: Incident | None = None


@dataclass
class IncidentDetector:
    """Feed every segment's sample of an interval to :meth:`update`; get incident changes."""

    successors: Mapping[str, Sequence[str]]  # segment -> segments its lanes lead to
    config: IncidentConfig = field(default_factory=IncidentConfig)
    incidents: list[Incident] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._upstream: dict[str, list[str]] = {}
        for up, downs in self.successors.items():
            for down in downs:
                self._upstream.setdefault(down, []).append(up)
        self._states: dict[str, _State] = {}
        self._interval = 0
        self._raised: dict[int, int] = {}  # id of an open incident -> interval it was raised

    def _state(self, segment: str) -> _State:
        if segment not in self._states:
            self._states[segment] = _State(deque(maxlen=self.config.baseline_intervals))
        return self._states[segment]

    def _baseline(self, segment: str) -> _Baseline | None:
        history = self._state(segment).history
        if len(history) < self.config.min_baseline_intervals:
            return None
        flows = [s.intensity for s in history]
        return _Baseline(
            intensity=fmean(flows),
            intensity_sd=pstdev(flows),
            occupancy=fmean(s.occupancy for s in history),
            queue_m=fmean(s.queue_m for s in history),
        )

    def _rose(self, segment: str, sample: SegmentSample) -> bool:
        base = self._baseline(segment)
        if base is None:
            return False
        c = self.config
        return (
            sample.occupancy - base.occupancy >= c.occupancy_rise
            or sample.queue_m - base.queue_m >= c.queue_rise_m
        )

    def _collapsed_flows(self, samples: Mapping[str, SegmentSample]) -> set[str]:
        """Busy segments whose flow fell far below their baseline this interval."""
        c = self.config
        out = set()
        for segment, sample in samples.items():
            base = self._baseline(segment)
            if base is None or base.intensity < c.min_baseline_flow:
                continue
            if (
                sample.intensity < c.flow_drop * base.intensity
                and base.intensity - sample.intensity >= c.flow_drop_sigmas * base.intensity_sd
            ):
                out.add(segment)
        return out

    def _stalled(self, segment: str, sample: SegmentSample) -> bool:
        c = self.config
        state = self._state(segment)
        base = self._baseline(segment)
        if base is None or base.intensity < c.min_baseline_flow:
            return False
        if sample.queue_m < c.stall_queue_m or state.queued + 1 < c.stall_intervals:
            return False
        # the standing queue's own first intervals are in the baseline already: leave them out
        earlier = list(state.history)[: len(state.history) - (c.stall_intervals - 1)]
        if len(earlier) < c.min_baseline_intervals:
            return False
        queued = sum(s.queue_m >= c.stall_queue_m for s in earlier)
        return (
            queued <= c.stall_share * len(earlier)
            and sample.intensity <= c.stall_flow_rise * base.intensity
        )

    def suspects(
        self, samples: Mapping[str, SegmentSample], collapsed: set[str] | None = None
    ) -> dict[str, tuple[str, ...]]:
        """Suspect segments, each with the upstream ones that rose (none for a stall)."""
        if collapsed is None:
            collapsed = self._collapsed_flows(samples)
        out: dict[str, tuple[str, ...]] = {}
        for segment, sample in samples.items():
            risen: tuple[str, ...] = ()
            if segment in collapsed:
                risen = tuple(
                    up
                    for up in sorted(self._upstream.get(segment, ()))
                    if up in samples and self._rose(up, samples[up])
                )
            if risen:
                out[segment] = risen
            elif self._stalled(segment, sample):
                out[segment] = ()
        return out

    def update(self, at: datetime, samples: Mapping[str, SegmentSample]) -> list[Incident]:
        """Incidents that started or ended with this interval.

        A blocked junction starves every exit at once; suspects confirmed together that share
        an upstream segment (or one that is part of an incident raised at most
        ``join_intervals`` ago) are one incident, named after the segment whose flow fell
        furthest, so one blockage raises one alert. An older incident takes no new members: a
        long-lived one must not swallow a new blockage nearby.
        """
        self._interval += 1
        collapsed = self._collapsed_flows(samples)
        suspects = self.suspects(samples, collapsed)
        drops = {d: samples[d].intensity / max(self._baseline_flow(d), 1e-9) for d in suspects}
        open_incidents = {id(st.active): st.active for st in self._states.values() if st.active}
        # a collapsed flow is kept out of its baseline even before anything upstream rises
        frozen = collapsed | set(suspects) | {u for ups in suspects.values() for u in ups}
        for incident in open_incidents.values():
            frozen |= incident.members | set(incident.upstream)
        confirmed: list[str] = []
        changes: list[Incident] = []
        for segment in sorted(samples):
            state = self._state(segment)
            if segment in suspects:
                state.suspect += 1
                state.clear = 0
                if state.since is None:
                    state.since = at
            else:
                state.suspect = 0
                state.since = None
                state.clear += 1
            if state.active is None and state.suspect >= self.config.confirm_intervals:
                confirmed.append(segment)
            elif state.active is not None and state.clear >= self.config.clear_intervals:
                incident, state.active = state.active, None
                incident.members.discard(segment)
                if not incident.members:
                    incident.ended_at = at
                    self._raised.pop(id(incident), None)
                    changes.append(incident)
            self._learn(state, samples[segment], segment in frozen)
        for segment in sorted(confirmed, key=lambda d: (drops[d], -len(suspects[d]), d)):
            state = self._state(segment)
            involved = {segment, *suspects[segment]}
            joined = next(
                (
                    inc
                    for inc in open_incidents.values()
                    if inc.ended_at is None
                    and involved & (inc.members | set(inc.upstream))
                    and self._interval - self._raised[id(inc)] <= self.config.join_intervals
                ),
                None,
            )
            if joined is None:
                assert state.since is not None
                joined = Incident(segment, suspects[segment], state.since, at)
                self.incidents.append(joined)
                open_incidents[id(joined)] = joined
                self._raised[id(joined)] = self._interval
                changes.append(joined)
            joined.members.add(segment)
            state.active = joined
        return changes

    def _learn(self, state: _State, sample: SegmentSample, frozen: bool) -> None:
        """Count the standing queue; the sample joins the baseline unless it is frozen."""
        state.queued = state.queued + 1 if sample.queue_m >= self.config.stall_queue_m else 0
        state.frozen = state.frozen + 1 if frozen else 0
        if state.frozen == 0 or state.frozen > self.config.max_frozen_intervals:
            state.history.append(sample)

    def _baseline_flow(self, segment: str) -> float:
        base = self._baseline(segment)
        return base.intensity if base is not None else 0.0


def incident_alert(scenario: str, incident: Incident, segment_urn: str) -> dict[str, Any]:
    """An ``Alert`` for a suspected incident on a segment (resolved once it has cleared)."""
    return traffic_alert(
        INCIDENT_SUSPECTED,
        scenario,
        incident.segment,
        segment_urn,
        since=incident.suspected_from,
        detected_at=incident.detected_at,
        ended_at=incident.ended_at,
        severity="high",
        description=(
            f"flow on {incident.segment} collapsed while "
            f"{', '.join(incident.upstream)} filled up: lane blocked?"
            if incident.upstream
            else f"a queue stands on {incident.segment} and does not clear: vehicle stopped?"
        ),
    )


@dataclass(frozen=True)
class IncidentScore:
    scripted: int
    detected: int
    mean_time_to_detect_s: float | None
    false_alarms: int
    false_alarms_per_hour: float
    delays_s: tuple[float, ...] = ()  # time to detect of each detected incident, s
    duplicates: int = 0  # false alarms that named a detected incident's place in its window

    @property
    def detection_rate(self) -> float:
        return self.detected / self.scripted if self.scripted else 1.0


def score_incidents(
    scripted: Sequence[tuple[datetime, str]],
    alarms: Sequence[Incident],
    *,
    hours: float,
    window: timedelta = timedelta(minutes=10),
    near: Mapping[str, Collection[str]] | None = None,
) -> IncidentScore:
    """Detection rate, time to detect and false alarms per hour against scripted incidents.

    A scripted incident (its start and blocked segment) is detected by the first alarm raised
    within ``window`` after it started that names that segment, as the one whose flow fell or
    as one that filled up (edge-level detectors see a blockage between the two), or that is
    raised on one of ``near[segment]`` (e.g. the segments just upstream and downstream); every
    alarm that detects none is false. Those that named a detected incident's place within its
    window (a second alert for one blockage) are also counted as ``duplicates``.
    """
    if hours <= 0:
        raise ValueError("hours must be positive")
    near = near or {}

    def names(alarm: Incident, start: datetime, segment: str) -> bool:
        place = alarm.segment in near.get(segment, ()) or segment in {
            alarm.segment,
            *alarm.upstream,
        }
        return place and start <= alarm.detected_at <= start + window

    used: set[int] = set()
    delays: list[float] = []
    for start, segment in sorted(scripted):
        for i, alarm in enumerate(alarms):
            if i not in used and names(alarm, start, segment):
                used.add(i)
                delays.append((alarm.detected_at - start).total_seconds())
                break
    false = len(alarms) - len(used)
    duplicates = sum(
        1
        for i, alarm in enumerate(alarms)
        if i not in used and any(names(alarm, start, segment) for start, segment in scripted)
    )
    return IncidentScore(
        scripted=len(scripted),
        detected=len(delays),
        mean_time_to_detect_s=fmean(delays) if delays else None,
        false_alarms=false,
        false_alarms_per_hour=false / hours,
        delays_s=tuple(delays),
        duplicates=duplicates,
    )
