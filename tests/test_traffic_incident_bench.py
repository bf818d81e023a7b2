"""The incident benchmark's site rule, scoring and summary (benchmarks/traffic_incidents.py)."""

from __future__ import annotations

import importlib.util
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from civica.domains.traffic.incidents import Incident, score_incidents

T0 = datetime(2026, 11, 23, 7, 0, tzinfo=UTC)
MINUTE = timedelta(minutes=1)


def _load_bench() -> ModuleType:
    path = Path(__file__).resolve().parent.parent / "benchmarks" / "traffic_incidents.py"
    spec = importlib.util.spec_from_file_location("traffic_incidents_bench", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being made
    spec.loader.exec_module(module)
    return module


bench = _load_bench()


def test_the_site_rule_keeps_only_busy_lanes_on_busy_segments() -> None:
    flows = {"A_0": 400.0, "A_1": 60.0, "B_0": 150.0, "B_1": 100.0, "C_0": 250.0, "D_0": 500.0}
    edges = {"A_0": "A", "A_1": "A", "B_0": "B", "B_1": "B", "C_0": "C", "D_0": "D"}
    sites = bench.eligible_sites(flows, edges)
    # A_1 is too quiet itself; B_0 is busy enough but its segment carries only 250 veh/h;
    # C_0 alone carries 250 veh/h, below the segment threshold
    assert [s.lane for s in sites] == ["A_0", "D_0"]
    assert all(s.lane_flow >= bench.MIN_LANE_FLOW for s in sites)
    assert all(s.segment_flow >= bench.MIN_SEGMENT_FLOW for s in sites)
    assert sites[0].segment_flow == 460.0


def test_draws_are_seeded_distinct_and_within_the_window() -> None:
    sites = [bench.Site(f"E{i}_0", f"E{i}", 300.0, 600.0) for i in range(6)]
    first = bench.draw_incidents(sites, 4, seed="x:0", earliest_s=900, latest_s=2700)
    again = bench.draw_incidents(sites, 4, seed="x:0", earliest_s=900, latest_s=2700)
    other = bench.draw_incidents(sites, 4, seed="x:1", earliest_s=900, latest_s=2700)
    assert first == again and first != other
    assert len({site.lane for site, _ in first}) == 4
    assert all(900 <= incident.at_s <= 2700 for _, incident in first)
    assert all(incident.lane == site.lane for site, incident in first)
    assert bench.draw_incidents([], 4, seed="x:0", earliest_s=900, latest_s=2700) == []
    # more draws than lanes: every lane once, then repeats
    many = bench.draw_incidents(sites[:2], 3, seed="x:0", earliest_s=900, latest_s=2700)
    assert {site.lane for site, _ in many} == {"E0_0", "E1_0"} and len(many) == 3


def test_a_neighbouring_alarm_detects_and_a_second_one_is_a_duplicate() -> None:
    near = bench.neighbours({"U": ("E",), "E": ("D",), "D": ()})
    assert near == {"U": {"E"}, "E": {"U", "D"}, "D": {"E"}}
    alarms = [
        Incident("D", ("X",), T0, T0 + 3 * MINUTE),  # just downstream: detects
        Incident("U", (), T0, T0 + 4 * MINUTE),  # just upstream, again: a duplicate
        Incident("Z", (), T0, T0 + 5 * MINUTE),  # elsewhere: false
        Incident("E", (), T0, T0 + 11 * MINUTE),  # too late: false
    ]
    score = score_incidents([(T0, "E")], alarms, hours=1.0, near=near)
    assert (score.detected, score.delays_s) == (1, (180.0,))
    assert (score.false_alarms, score.duplicates) == (3, 1)
    # without the neighbour rule only an alarm naming E (or E filling up) counts
    assert score_incidents([(T0, "E")], alarms, hours=1.0).detected == 0


def _run(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"scenario": "s", "wall_s": 1.0, "false_alarms": 0, "duplicates": 0}
    return {**base, **fields}


def test_the_summary_adds_up() -> None:
    runs = [
        _run(run="incident-free", seconds=3600.0, false_alarms=3),
        _run(run="incident-free", seconds=1800.0, false_alarms=0),
        _run(
            run="incident",
            stopped=True,
            detected=True,
            detected_by_chance=False,
            time_to_detect_s=120.0,
            hours_after_stop=0.25,
        ),
        _run(
            run="incident",
            stopped=True,
            detected=True,
            detected_by_chance=True,
            time_to_detect_s=300.0,
            hours_after_stop=0.25,
            false_alarms=1,
            duplicates=1,
        ),
        _run(
            run="incident",
            stopped=True,
            detected=False,
            detected_by_chance=False,
            time_to_detect_s=None,
            hours_after_stop=0.5,
        ),
        _run(run="incident", stopped=False),
    ]
    summary = bench.summarise(runs, None)
    assert (summary["incidents"], summary["not_stopped"], summary["detected"]) == (3, 1, 2)
    assert summary["detection_rate"] == pytest.approx(2 / 3, abs=1e-3)
    assert summary["chance_detection_rate"] == pytest.approx(1 / 3, abs=1e-3)
    assert summary["median_time_to_detect_s"] == 210.0
    assert summary["false_alarms_per_hour_incident_free"] == 2.0  # 3 in 1.5 h
    assert summary["false_alarms_per_hour_incident_runs"] == 1.0  # 1 in 1 h after the stops
    assert summary["duplicates_incident_runs"] == 1
    assert summary["wall_s"] == 6.0


@pytest.mark.slow
def test_a_short_run_blocks_only_a_lane_that_carried_traffic() -> None:
    free = bench.free_run("cologne1", 0, 1500.0, 600.0)
    assert free["eligible_lanes"] == len(free["sites"]) > 0
    assert free["false_alarms"] == len(free["alarms"])
    (planned,) = bench.plan_incidents(free, 1, warmup_s=600.0, seconds=1500.0)
    scenario, seed, _, site, at_s, free_alarms = planned
    assert (scenario, seed, at_s) == ("cologne1", 0, 600)  # the only time the window leaves
    assert free_alarms is free["alarms"]  # the chance control scores these
    assert [site.lane, site.edge] in [s[:2] for s in free["sites"]]
    assert site.lane_flow >= bench.MIN_LANE_FLOW and site.segment_flow >= bench.MIN_SEGMENT_FLOW
    blocked = bench.incident_run(*planned)
    assert blocked["stopped"] and blocked["stopped_at_s"] >= 600.0
    assert blocked["false_alarms"] == len(blocked["alarm_segments"]) - blocked["detected"]
    summary = bench.summarise([free, blocked], "cologne1")
    assert summary["incidents"] == 1 and summary["detected"] == int(blocked["detected"])
