"""Safe switching, junction views and trip metrics: pure Python, no SUMO."""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from pathlib import Path

import pytest

from civica.domains.traffic.control import SignalControl
from civica.domains.traffic.junctions import (
    Junction,
    LaneReading,
    ProgramPhase,
    SignalLayout,
    junction_of,
)
from civica.domains.traffic.metrics import trip_metrics
from civica.domains.traffic.signals import SafeSignal, SafetyRules, Stage, yellow_and_all_red


def test_clearance_states_keep_shared_greens_and_clear_the_rest() -> None:
    yellow, all_red = yellow_and_all_red("GGgr", "rGGG")
    assert yellow == "yGgr"
    assert all_red == "rGgr"


def test_safe_signal_waits_min_green_then_shows_yellow_then_all_red() -> None:
    rules = SafetyRules(min_green_s=5, yellow_s=3, all_red_s=2)
    signal = SafeSignal("J", ("GGrr", "rrGG"), rules, now=0.0)
    assert not signal.request(1, 4.0)  # min green not served
    assert signal.request(1, 5.0)
    assert signal.state == "yyrr" and signal.stage is Stage.YELLOW
    assert signal.tick(7.0) is None
    assert signal.tick(8.0) == "rrrr"
    assert signal.tick(9.0) is None
    assert signal.tick(10.0) == "rrGG"
    assert not signal.request(0, 12.0)  # the new green gets its minimum too
    assert [(c.time, c.stage) for c in signal.changes] == [
        (0.0, Stage.GREEN),
        (5.0, Stage.YELLOW),
        (8.0, Stage.ALL_RED),
        (10.0, Stage.GREEN),
    ]


def test_max_red_forces_a_waiting_phase() -> None:
    rules = SafetyRules(max_red_s=60)
    signal = SafeSignal("J", ("Gr", "rG"), rules, now=0.0)
    assert signal.overdue(59.0, [False, True]) is None
    assert signal.overdue(60.0, [False, True]) == 1
    assert signal.overdue(60.0, [False, False]) is None


def test_rules_refuse_nonsense() -> None:
    with pytest.raises(ValueError, match="max red"):
        SafetyRules(min_green_s=10, max_red_s=5)


def test_junction_view_takes_distinct_green_phases_of_the_programme() -> None:
    layout = SignalLayout(
        "J",
        "0",
        (
            ProgramPhase("GGrr", 30),
            ProgramPhase("yyrr", 3),
            ProgramPhase("rrGG", 20),
            ProgramPhase("rryy", 3),
            ProgramPhase("GGrr", 10),
        ),
        (("a_0", "b_0"), ("a_0", "c_0"), ("d_0", "b_0"), None),
    )
    junction = junction_of(layout)
    assert junction is not None
    assert junction.greens == ("GGrr", "rrGG")
    assert junction.program_index == (0, 2)
    assert junction.durations == (30, 20)
    assert junction.in_lanes == (("a_0",), ("d_0",))
    single = SignalLayout("K", "0", (ProgramPhase("GG", 30),), (("a_0", "b_0"), None))
    assert junction_of(single) is None


def test_trip_metrics_count_unfinished_and_never_inserted(tmp_path: Path) -> None:
    tripinfo = tmp_path / "tripinfo.xml"
    tripinfo.write_text(
        """<tripinfos>
  <tripinfo id="a" depart="10.00" departDelay="2.00" arrival="70.00" duration="60.00"
            timeLoss="8.00"/>
  <tripinfo id="b" depart="20.00" departDelay="0.00" arrival="60.00" duration="40.00"
            timeLoss="4.00"/>
  <tripinfo id="c" depart="900.00" departDelay="1.00" arrival="-1.00" duration="10.00"
            timeLoss="5.00"/>
  <tripinfo id="d" depart="-1" departDelay="30.00" arrival="-1.00" duration="0.00"
            timeLoss="0.00"/>
  <tripinfo id="e" depart="-1" departDelay="0.00" arrival="-1.00" duration="0.00"
            timeLoss="0.00"/>
  <tripinfo id="f" depart="400.00" departDelay="300.00" arrival="-1.00" duration="600.00"
            timeLoss="500.00"/>
  <tripinfo id="g" depart="-1" departDelay="400.00" arrival="-1.00" duration="0.00"
            timeLoss="0.00"/>
</tripinfos>
"""
    )
    metrics = trip_metrics(tripinfo, end=1000.0)
    assert metrics.vehicles == 6  # e was only loaded ahead of its departure
    assert metrics.average_delay_s == pytest.approx((10 + 4 + 6 + 30 + 800 + 400) / 6)
    assert metrics.average_trip_time_s == pytest.approx(50.0)
    assert metrics.throughput == 2
    assert metrics.not_finished == 4
    assert metrics.never_inserted == 2
    # c was due at 899 s, d at 970 s: on their way; f was due at 100 s, g at 600 s: stuck
    assert metrics.stuck == 2
    assert trip_metrics(tripinfo).stuck == 0  # without the end time nothing is judged stuck


class _FakeEngine:
    """Just enough of SumoEngine for SignalControl: one light, fixed lane readings."""

    def __init__(self, layout: SignalLayout, halting: dict[str, int]) -> None:
        self.layout = layout
        self.halting = halting
        self.time = 0.0
        self.shown: list[tuple[float, str]] = []

    def signals(self) -> tuple[SignalLayout, ...]:
        return (self.layout,)

    def phase_index(self, tls_id: str) -> int:
        return 2  # the programme shows "GGr": lanes a and b

    def set_state(self, tls_id: str, state: str) -> None:
        self.shown.append((self.time, state))

    def upstream_lanes(
        self, lanes: set[str], reach_m: float, stop_at: set[str]
    ) -> dict[str, tuple[str, ...]]:
        return {}

    def watch_lanes(self, lanes: set[str]) -> None:
        pass

    def lane_readings(self) -> dict[str, LaneReading]:
        return {lane: LaneReading(n, n, 0.0) for lane, n in self.halting.items()}

    def step(self) -> None:
        self.time += 1.0


class _Always:
    """A controller that always asks for the same green: only maximum red gets the rest."""

    def __init__(self, state: str) -> None:
        self.state = state

    def choose(
        self, junction: Junction, signal: SafeSignal, lanes: Mapping[str, LaneReading], now: float
    ) -> int | None:
        return junction.greens.index(self.state)


def test_max_red_is_kept_per_lane_so_overlapping_phases_are_not_forced() -> None:
    # "Grr" serves lane a alone (a protected turn), "GGr" serves a and b, "rrG" serves c.
    # a and c always have a halted vehicle and the controller always wants "GGr". a is
    # green whenever "GGr" is, so "Grr" must never be forced (a rule per phase would force
    # it every max red); c must be served within max red every time.
    layout = SignalLayout(
        "J",
        "0",
        (ProgramPhase("Grr", 10), ProgramPhase("rrG", 10), ProgramPhase("GGr", 10)),
        (("a", "x"), ("b", "y"), ("c", "z")),
    )
    engine = _FakeEngine(layout, {"a": 1, "b": 0, "c": 1})
    rules = SafetyRules(min_green_s=5, yellow_s=3, all_red_s=2, max_red_s=30)
    control = SignalControl(engine, _Always("GGr"), rules)  # type: ignore[arg-type]
    while engine.time < 300:
        control.step()
    changes = control.changes()
    assert "Grr" not in {c.state for c in changes if c.stage is Stage.GREEN}
    # c's red spells: from the start (or the end of its green) to its next green
    red_from, spells = 0.0, []
    for change, following in itertools.pairwise(changes):
        if change.stage is Stage.GREEN and change.state == "rrG":
            spells.append(change.time - red_from)
            red_from = following.time
    assert len(spells) >= 5
    assert max(spells) <= rules.max_red_s + rules.yellow_s + rules.all_red_s
