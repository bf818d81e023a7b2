"""Signal controllers: each looks at lane readings and asks for a green phase.

Every controller answers ``choose(junction, signal, lanes, now)`` with the index of the green
phase it wants (or None to keep the current one); :class:`~civica.domains.traffic.signals.
SafeSignal` decides when the change may happen. ``fixed`` is not here: it leaves SUMO's own
programmes untouched.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from civica.domains.traffic.junctions import Junction, LaneReading
from civica.domains.traffic.signals import SafeSignal

SATURATION_VEH_S = 0.5  # saturation flow of one lane, vehicles per second (1800 veh/h)


class Controller(Protocol):
    """Chooses the green phase of each intersection, one simulation step at a time."""

    def choose(
        self, junction: Junction, signal: SafeSignal, lanes: Mapping[str, LaneReading], now: float
    ) -> int | None:
        """The green phase wanted now, or None to keep what is shown."""
        ...


def _vehicles(lanes: Mapping[str, LaneReading], lane: str) -> int:
    reading = lanes.get(lane)
    return reading.vehicles if reading else 0


class MaxPressure:
    """Varaiya (2013): serve the phase whose movements have the largest upstream-minus-
    downstream vehicle count, re-decided at the end of each time slot of ``slot_s`` seconds
    (RESCO decides every 10 s too; deciding every second wastes half the time in clearance)."""

    def __init__(self, slot_s: float = 10.0) -> None:
        self.slot_s = slot_s

    def pressures(self, junction: Junction, lanes: Mapping[str, LaneReading]) -> list[float]:
        """Per green phase, sum over its movements of vehicles upstream minus downstream."""
        return [
            float(sum(_vehicles(lanes, m.in_lane) - _vehicles(lanes, m.out_lane) for m in group))
            for group in junction.movements
        ]

    def choose(
        self, junction: Junction, signal: SafeSignal, lanes: Mapping[str, LaneReading], now: float
    ) -> int | None:
        if not signal.may_switch(now) or signal.green_for(now) % self.slot_s >= 1.0:
            return None
        pressures = self.pressures(junction, lanes)
        best = max(range(len(pressures)), key=lambda i: (pressures[i], i == signal.green))
        return best if pressures[best] > pressures[signal.green] else None


@dataclass
class _WebsterPlan:
    greens_s: list[float]
    arrivals: dict[str, int] = field(default_factory=dict)
    seen: dict[str, frozenset[str]] = field(default_factory=dict)
    window_start: float = 0.0


class Webster:
    """Webster's cycle and green splits from measured lane arrival flows, re-planned every
    ``replan_s``; phases run in programme order. Starts from the programme's own splits."""

    def __init__(self, replan_s: float = 300.0, max_cycle_s: float = 150.0) -> None:
        self.replan_s = replan_s
        self.max_cycle_s = max_cycle_s
        self._plans: dict[str, _WebsterPlan] = {}

    def _count(
        self, plan: _WebsterPlan, junction: Junction, lanes: Mapping[str, LaneReading]
    ) -> None:
        for group in junction.in_lanes:
            for lane in group:
                reading = lanes.get(lane)
                ids = frozenset(reading.vehicle_ids) if reading else frozenset()
                new = len(ids - plan.seen.get(lane, frozenset()))
                plan.arrivals[lane] = plan.arrivals.get(lane, 0) + new
                plan.seen[lane] = ids

    def _replan(
        self, plan: _WebsterPlan, junction: Junction, signal: SafeSignal, now: float
    ) -> None:
        window = max(now - plan.window_start, 1.0)
        ratios = [
            max(
                (plan.arrivals.get(lane, 0) / window / SATURATION_VEH_S for lane in group),
                default=0,
            )
            for group in junction.in_lanes
        ]
        rules = signal.rules
        lost = len(ratios) * (rules.yellow_s + rules.all_red_s)
        total = min(sum(ratios), 0.9)
        min_cycle = lost + len(ratios) * rules.min_green_s
        cycle = min(max((1.5 * lost + 5.0) / (1.0 - total), min_cycle), self.max_cycle_s)
        effective = cycle - lost
        if sum(ratios) <= 0:
            plan.greens_s = [effective / len(ratios)] * len(ratios)
        else:
            plan.greens_s = [max(rules.min_green_s, effective * r / sum(ratios)) for r in ratios]
        plan.arrivals.clear()
        plan.window_start = now

    def choose(
        self, junction: Junction, signal: SafeSignal, lanes: Mapping[str, LaneReading], now: float
    ) -> int | None:
        plan = self._plans.get(junction.tls_id)
        if plan is None:
            plan = _WebsterPlan(greens_s=list(junction.durations), window_start=now)
            self._plans[junction.tls_id] = plan
        self._count(plan, junction, lanes)
        if not signal.may_switch(now) or signal.green_for(now) < plan.greens_s[signal.green]:
            return None
        following = (signal.green + 1) % len(junction.greens)
        if following == 0 and now - plan.window_start >= self.replan_s:
            self._replan(plan, junction, signal, now)
        return following


class QueuePressure:
    """Civica's controller: serve a green until it gaps out, then the highest queue pressure.

    Differences from :class:`MaxPressure`, none tuned to a scenario:

    * pressure counts *queued* vehicles (halting) plus half the moving ones upstream, and only
      queued vehicles downstream: a moving platoon on the exit does not block anything;
    * an incoming lane feeding several movements is split between them, so a phase is not
      favoured just because its lanes have many turning links;
    * a movement whose exit is a standing queue (spillback) has no pressure;
    * a green is held while vehicles still leave its lanes, like an actuated controller: every
      switch costs yellow + all-red in which nobody moves, so a discharging queue is never cut
      off. Once nobody has left for ``gap_s`` (the gap-out, which also catches a shared lane
      blocked by a vehicle waiting for another phase) it serves the highest-pressure phase.
      Other phases are protected by the safety rules' maximum red, not by the controller.

    The constants are the same on every network. An earlier version also switched away from a
    discharging green when another phase had twice its pressure; dropping that rule cut the
    delay on four of the five benchmark scenarios and on the held-out ones (see
    benchmarks/README.md).
    """

    def __init__(
        self,
        moving_weight: float = 0.5,
        full_exit: float = 0.8,
        gap_s: float = 3.0,
    ) -> None:
        self.moving_weight = moving_weight
        self.full_exit = full_exit
        self.gap_s = gap_s
        self._seen: dict[str, dict[str, frozenset[str]]] = {}
        self._last_left: dict[str, float] = {}

    def pressures(self, junction: Junction, lanes: Mapping[str, LaneReading]) -> list[float]:
        """Per green phase, queue-based pressure (vehicles)."""
        result = []
        for group in junction.movements:
            fan: dict[str, int] = {}
            for m in group:
                fan[m.in_lane] = fan.get(m.in_lane, 0) + 1
            total = 0.0
            for m in group:
                up = lanes.get(m.in_lane)
                down = lanes.get(m.out_lane)
                if up is None:
                    continue
                queued = up.halting + self.moving_weight * (up.vehicles - up.halting)
                blocked = down.halting if down else 0
                if blocked > 3 and down is not None and blocked >= self.full_exit * down.vehicles:
                    continue  # the exit is a standing queue: a green here moves nobody
                total += (queued - blocked) / fan[m.in_lane]
            result.append(total)
        return result

    def _discharging(
        self, junction: Junction, signal: SafeSignal, lanes: Mapping[str, LaneReading], now: float
    ) -> bool:
        """Whether a vehicle left a lane of the current green within the last gap_s."""
        seen = self._seen.setdefault(junction.tls_id, {})
        left = False
        for group in junction.in_lanes:
            for lane in group:
                reading = lanes.get(lane)
                ids = frozenset(reading.vehicle_ids) if reading else frozenset()
                if lane in junction.in_lanes[signal.green] and seen.get(lane, frozenset()) - ids:
                    left = True
                seen[lane] = ids
        if left or signal.green_for(now) <= 1.0:
            self._last_left[junction.tls_id] = now
        return now - self._last_left.get(junction.tls_id, now) < self.gap_s

    def choose(
        self, junction: Junction, signal: SafeSignal, lanes: Mapping[str, LaneReading], now: float
    ) -> int | None:
        discharging = self._discharging(junction, signal, lanes, now)
        if discharging or not signal.may_switch(now):
            return None
        pressures = self.pressures(junction, lanes)
        others = [i for i in range(len(pressures)) if i != signal.green]
        best = max(others, key=lambda i: pressures[i])
        return best if pressures[best] > 0 else None


CONTROLLERS: dict[str, Callable[[], Controller]] = {
    "webster": Webster,
    "max-pressure": MaxPressure,
    "queue-pressure": QueuePressure,
}
