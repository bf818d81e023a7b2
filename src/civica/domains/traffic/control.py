"""Run a scenario under a signal controller and measure it; the operator's stop button.

>>> # run_control(resco_scenario("cologne1"), "max-pressure", SumoOptions(seconds=300))
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from civica.domains.traffic.controllers import CONTROLLERS, Controller
from civica.domains.traffic.engine import SumoEngine, SumoOptions
from civica.domains.traffic.junctions import Junction, approach_reading, junction_of
from civica.domains.traffic.metrics import TripMetrics, trip_metrics
from civica.domains.traffic.scenarios import Scenario
from civica.domains.traffic.signals import PhaseChange, SafeSignal, SafetyRules, Stage

FIXED = "fixed"
BEST_CONTROLLER = "queue-pressure"
# A signal's approach: its incoming lane plus the lanes feeding it through unsignalised
# junctions that lie within this distance of the stop line. SUMO stops vehicles short of a
# signal whose incoming lane is too short to hold them, so a queue can stand entirely on the
# lane before it; a detection zone of this length (a stop-bar plus an advance loop on the
# street) sees it.
APPROACH_M = 100.0


class ControlError(ValueError):
    """A control run asked for something that does not exist (controller, intersection)."""


def controller_names() -> tuple[str, ...]:
    """Every controller the CLI accepts."""
    return (FIXED, *CONTROLLERS)


@dataclass(frozen=True)
class HandBack:
    """An operator handed an intersection back to its fixed programme (the stop button)."""

    tls_id: str
    operator: str
    at_sim_s: float  # simulated time it was asked for
    requested_at: datetime  # wall-clock UTC
    reason: str = ""
    applied_at_sim_s: float | None = None  # when the programme took over (after min green)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready record."""
        return {
            "tls_id": self.tls_id,
            "operator": self.operator,
            "at_sim_s": self.at_sim_s,
            "requested_at": self.requested_at.isoformat(),
            "reason": self.reason,
            "applied_at_sim_s": self.applied_at_sim_s,
        }


@dataclass(frozen=True)
class ScheduledHandBack:
    """A stop-button press planned at a simulated time (CLI and tests)."""

    tls_id: str
    at_s: float  # seconds after the scenario's begin
    operator: str
    reason: str = ""


@dataclass
class ControlResult:
    """What a run produced: metrics, the stop-button record and (optionally) every change."""

    scenario: str
    controller: str
    seed: int
    seconds: float
    demand_scale: float
    metrics: TripMetrics
    intersections: int
    teleports: int
    hand_backs: list[HandBack] = field(default_factory=list)
    changes: list[PhaseChange] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready summary (phase changes left out)."""
        return {
            "scenario": self.scenario,
            "controller": self.controller,
            "seed": self.seed,
            "seconds": self.seconds,
            "demand_scale": self.demand_scale,
            "intersections": self.intersections,
            "teleports": self.teleports,
            **self.metrics.as_dict(),
            "hand_backs": [h.as_dict() for h in self.hand_backs],
        }


class SignalControl:
    """Drives every signal of a running engine with one controller, under the safety rules."""

    def __init__(
        self,
        engine: SumoEngine,
        controller: Controller | None,
        rules: SafetyRules,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.engine = engine
        self.controller = controller
        self.rules = rules
        self.clock = clock
        layouts = engine.signals()
        self.junctions: dict[str, Junction] = {}
        for layout in layouts:
            junction = junction_of(layout)
            if junction is not None:
                self.junctions[junction.tls_id] = junction
        self.all_tls = {layout.tls_id for layout in layouts}
        self.signals: dict[str, SafeSignal] = {}
        self.hand_backs: list[HandBack] = []
        self._pending: dict[str, int] = {}  # tls id -> index in hand_backs
        # incoming lane -> when it last had green (maximum red is kept per lane, see _late)
        self._lane_green: dict[str, float] = {}
        if controller is None:
            return
        now = engine.time
        for tls_id, junction in self.junctions.items():
            shown = engine.phase_index(tls_id)
            start = junction.program_index.index(shown) if shown in junction.program_index else 0
            signal = SafeSignal(tls_id, junction.greens, rules, now, green=start)
            self.signals[tls_id] = signal
            self._lane_green.update((lane, now) for group in junction.in_lanes for lane in group)
            engine.set_state(tls_id, signal.state)
        in_lanes = {lane for j in self.junctions.values() for group in j.in_lanes for lane in group}
        at_signals = {link[0] for layout in layouts for link in layout.links if link}
        self.approaches = {
            lane: upstream
            for lane, upstream in engine.upstream_lanes(in_lanes, APPROACH_M, at_signals).items()
            if upstream
        }
        watched = set().union(*(j.lanes for j in self.junctions.values()))
        engine.watch_lanes(watched.union(*self.approaches.values()))

    def hand_back(self, tls_id: str, operator: str, reason: str = "") -> HandBack:
        """The stop button: return this intersection to its fixed programme as soon as safe."""
        if tls_id not in self.all_tls:
            raise ControlError(f"no traffic light {tls_id!r} in this scenario")
        if not operator.strip():
            raise ControlError("a hand-back must name the operator")
        record = HandBack(tls_id, operator, self.engine.time, self.clock(), reason)
        if tls_id not in self.signals:  # already on its programme
            record = HandBack(**{**record.__dict__, "applied_at_sim_s": record.at_sim_s})
            self.hand_backs.append(record)
            return record
        self.hand_backs.append(record)
        self._pending[tls_id] = len(self.hand_backs) - 1
        return record

    def _apply_hand_back(self, tls_id: str, signal: SafeSignal, now: float) -> None:
        # The programme takes over on the green already shown, so nothing changes abruptly.
        junction = self.junctions[tls_id]
        self.engine.restore_program(
            tls_id, junction.program_id, junction.program_index[signal.green]
        )
        del self.signals[tls_id]
        index = self._pending.pop(tls_id)
        old = self.hand_backs[index]
        self.hand_backs[index] = HandBack(**{**old.__dict__, "applied_at_sim_s": now})

    def step(self) -> None:
        """Decide every signal for the current second, then advance SUMO one step."""
        if self.signals:
            now = self.engine.time
            lanes = self.engine.lane_readings()
            for lane, upstream in self.approaches.items():
                reading = approach_reading(lanes, lane, upstream)
                if reading is not None:
                    lanes[lane] = reading
            for tls_id, signal in list(self.signals.items()):
                changed = signal.tick(now)
                if tls_id in self._pending and signal.may_switch(now):
                    self._apply_hand_back(tls_id, signal, now)
                    continue
                # every step, so controllers that count arrivals see them all
                decided = self._decide(tls_id, signal, lanes, now)
                changed = changed or decided
                if changed is not None:
                    self.engine.set_state(tls_id, changed)
        self.engine.step()

    def _decide(self, tls_id: str, signal: SafeSignal, lanes: Any, now: float) -> str | None:
        assert self.controller is not None
        junction = self.junctions[tls_id]
        target = signal.overdue(now, self._late(junction, signal, lanes, now))
        wanted = self.controller.choose(junction, signal, lanes, now)
        if target is None:
            target = wanted
        if target is not None and signal.request(target, now):
            return signal.state
        return None

    def _late(self, junction: Junction, signal: SafeSignal, lanes: Any, now: float) -> list[bool]:
        """Per green phase, whether it holds a lane with a halted vehicle and no green for
        the maximum red.

        Maximum red is kept per lane, not per phase: where phases overlap (a protected-left
        phase and a phase giving one approach all its links both serve the left-turn lane),
        a phase whose lanes were all just served by another phase is not forced. A phase
        with a late lane has itself been red at least that long, so SafeSignal's own check
        agrees.
        """
        if signal.stage is Stage.GREEN:
            for lane in junction.in_lanes[signal.green]:
                self._lane_green[lane] = now
        late = now - self.rules.max_red_s
        return [
            any(
                (r := lanes.get(lane)) is not None
                and r.halting > 0
                and self._lane_green.get(lane, now) <= late
                for lane in group
            )
            for group in junction.in_lanes
        ]

    def changes(self) -> list[PhaseChange]:
        """Every change shown by the controlled signals, in time order."""
        found = [c for s in self.signals.values() for c in s.changes]
        return sorted(found, key=lambda c: c.time)


def run_control(
    scenario: Scenario,
    controller: str,
    options: SumoOptions,
    *,
    rules: SafetyRules | None = None,
    hand_backs: Iterable[ScheduledHandBack] = (),
    on_step: Callable[[float], None] | None = None,
    keep_changes: bool = False,
) -> ControlResult:
    """Run one scenario under one controller and return RESCO-style metrics."""
    if controller not in controller_names():
        known = ", ".join(controller_names())
        raise ControlError(f"unknown controller {controller!r}; choose one of: {known}")
    rules = rules or SafetyRules()
    planned = sorted(hand_backs, key=lambda h: h.at_s)
    with tempfile.TemporaryDirectory(prefix="civica-sumo-") as folder:
        tripinfo = Path(folder) / "tripinfo.xml"
        engine = SumoEngine(scenario, options, tripinfo)
        with engine:
            chosen = None if controller == FIXED else CONTROLLERS[controller]()
            control = SignalControl(engine, chosen, rules)
            signals = dict(control.signals)
            while engine.time < engine.end:
                elapsed = engine.time - scenario.begin
                while planned and planned[0].at_s <= elapsed:
                    press = planned.pop(0)
                    control.hand_back(press.tls_id, press.operator, press.reason)
                control.step()
                if on_step is not None:
                    on_step(engine.time - scenario.begin)
            teleports = engine.teleports
        metrics = trip_metrics(tripinfo, end=engine.end)
    changes = sorted((c for s in signals.values() for c in s.changes), key=lambda c: c.time)
    return ControlResult(
        scenario=scenario.name,
        controller=controller,
        seed=options.seed,
        seconds=options.seconds,
        demand_scale=options.demand_scale,
        metrics=metrics,
        intersections=len(control.junctions),
        teleports=teleports,
        hand_backs=control.hand_backs,
        changes=changes if keep_changes else [],
    )
