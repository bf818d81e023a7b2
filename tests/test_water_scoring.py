"""Leak scoring: hits, misses, false alarms, duplicates, late and far reports, euros."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from civica.cli import main
from civica.domains.water import network as engine
from civica.domains.water.scoring import Detection, TrueLeak, score_detections

DAY0 = datetime(2026, 1, 3, tzinfo=UTC)


def at(hours: float) -> datetime:
    return DAY0 + timedelta(hours=hours)


# Pipes on a line, 100 m apart midpoint to midpoint: A-B 100 m, A-C 200 m, A-F 500 m.
POSITION = {"A": 0, "B": 1, "C": 2, "D": 3, "E": 4, "F": 5}


def distance(reported: str, leaking: str) -> float:
    return 100.0 * abs(POSITION[reported] - POSITION[leaking])


BIG = TrueLeak("A", at(0), at(48), 0.002)  # 2 L/s for two days
SMALL = TrueLeak("F", at(10), at(20), 0.0005)  # 0.5 L/s for ten hours


def test_a_hit_a_miss_and_the_money() -> None:
    result = score_detections([BIG, SMALL], [Detection("B", at(6))], distance)
    assert (result["true_positives"], result["false_positives"]) == (1, 0)
    assert result["false_negatives"] == 1 and result["recall"] == 0.5
    assert result["precision"] == 1.0 and result["f1"] == pytest.approx(2 / 3)
    assert result["median_delay_h"] == 6.0 and result["median_delay_h_large"] == 6.0
    assert result["median_localisation_m"] == 100.0
    # Saved: 2 L/s from hour 6 to hour 48 = 302.4 m³ at €0.80.
    assert result["savings_eur"] == pytest.approx(0.8 * 0.002 * 42 * 3600, abs=0.01)
    assert result["max_score_eur"] == pytest.approx(0.8 * (0.002 * 48 + 0.0005 * 10) * 3600)
    assert result["per_leak"][1]["detected_at"] is None


def test_false_alarm_duplicate_late_and_far_reports() -> None:
    reports = [
        Detection("A", at(2)),  # hit
        Detection("B", at(3)),  # duplicate of the hit: ignored
        Detection("C", at(-5)),  # before any leak: false alarm
        Detection("F", at(60)),  # after SMALL ended: late, a false alarm
        Detection("D", at(12)),  # in both windows, 200 m from F: hits SMALL
        Detection("E", at(30)),  # in BIG's window, BIG found already, 400 m: false alarm
    ]
    result = score_detections([BIG, SMALL], reports, distance)
    assert result["true_positives"] == 2 and result["duplicates"] == 1
    assert result["false_positives"] == 3 and result["false_negatives"] == 0
    assert result["precision"] == pytest.approx(2 / 5) and result["recall"] == 1.0
    assert result["false_alarm_cost_eur"] == 1500.0
    assert result["median_delay_h"] == pytest.approx((2 + 2) / 2)
    # Only BIG is at least 1 L/s.
    assert result["median_delay_h_large"] == 2.0
    assert result["score_eur"] == pytest.approx(result["savings_eur"] - 1500.0)


def test_far_report_is_a_false_alarm_but_counts_for_time_matched_localisation() -> None:
    result = score_detections([SMALL], [Detection("A", at(11))], distance)
    assert result["true_positives"] == 0 and result["false_positives"] == 1
    assert result["median_localisation_m"] is None
    assert result["median_localisation_time_matched_m"] == 500.0
    assert result["reported_in_window"] == 1  # seen in time, placed too far
    assert result["f1"] == 0.0
    late = score_detections([SMALL], [Detection("F", at(21))], distance)
    assert late["reported_in_window"] == 0


def test_the_nearest_undetected_leak_is_credited() -> None:
    near_f = TrueLeak("E", at(0), at(48), 0.001)
    result = score_detections([BIG, near_f], [Detection("D", at(1))], distance)
    assert [p["detected_at"] is not None for p in result["per_leak"]] == [False, True]


def test_real_outflow_sets_the_savings() -> None:
    times = pd.date_range(at(0), at(48), freq="15min", inclusive="left")
    ramp = pd.Series([min(1.0, i / 96) * 0.002 for i in range(len(times))], index=times)
    leak = TrueLeak("A", at(0), at(48), 0.002, ramp)
    volume = float(ramp[ramp.index >= at(24)].sum()) * 900
    assert leak.volume_after(at(24)) == pytest.approx(volume)
    assert leak.volume_after(at(50)) == 0.0
    assert leak.volume_after(at(-5)) == pytest.approx(float(ramp.sum()) * 900)


def test_nothing_to_score() -> None:
    result = score_detections([], [], distance)
    assert result["precision"] is None and result["recall"] is None and result["f1"] is None


def test_network_distance_is_midpoint_to_midpoint() -> None:
    graph = engine.network_graph(engine.load_network(engine.resolve_network("Net1")))
    mile = 5280 * 0.3048  # Net1's pipes 11 and 12 are 5280 ft long and share node 12
    assert engine.link_distance(graph, "11", "12") == pytest.approx(mile, rel=1e-6)
    assert engine.link_distance(graph, "11", "11") == 0.0
    far = engine.link_distance(graph, "11", "122")
    assert mile < far < math.inf


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("score")
    args = ["--network", "Net1", "--days", "3", "--leaks", "2", "--seed", "3", "--out", str(out)]
    result = CliRunner().invoke(main, ["water", "scenario", *args])
    assert result.exit_code == 0, result.output
    return out


def test_score_command_on_a_leaks_file(scenario: Path, tmp_path: Path) -> None:
    truth = json.loads((scenario / "truth.json").read_text())
    first = truth["leaks"][0]
    reports = [
        {"pipe": first["pipe"], "detected_at": first["start"], "estimated_flow": 0.001},
        {"pipe": first["pipe"], "detected_at": "2026-01-01T06:00:00Z", "estimated_flow": 0.001},
    ]
    leaks_file = tmp_path / "leaks.json"
    leaks_file.write_text(json.dumps(reports))
    result = CliRunner().invoke(main, ["water", "score", str(scenario), str(leaks_file)])
    assert result.exit_code == 0, result.output
    scored = json.loads(result.output)
    assert scored["true_positives"] == 1 and scored["false_positives"] == 1
    assert scored["median_delay_h"] == 0.0 and scored["median_localisation_m"] == 0.0
    assert scored["savings_eur"] > 0


def test_score_command_refuses_unknown_pipes(scenario: Path, tmp_path: Path) -> None:
    leaks_file = tmp_path / "leaks.json"
    leaks_file.write_text(json.dumps([{"pipe": "P999", "detected_at": "2026-01-03T00:00:00Z"}]))
    result = CliRunner().invoke(main, ["water", "score", str(scenario), str(leaks_file)])
    assert result.exit_code == 2 and "P999" in result.output
    leaks_file.write_text(json.dumps([{"pipe": "11", "detected_at": "2026-01-03T00:00:00"}]))
    result = CliRunner().invoke(main, ["water", "score", str(scenario), str(leaks_file)])
    assert result.exit_code == 2 and "timezone" in result.output


def test_score_command_runs_the_night_flow_baseline(scenario: Path) -> None:
    result = CliRunner().invoke(main, ["water", "score", str(scenario), "--method", "mnf"])
    assert result.exit_code == 0, result.output
    scored = json.loads(result.output)
    assert scored["leaks"] == 2
    assert scored["true_positives"] + scored["false_negatives"] == 2
    assert scored["reports"] >= scored["true_positives"] + scored["false_positives"]
