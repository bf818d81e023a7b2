"""Quality event detection (CANARY-style) and its scoring, on synthetic station series."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from civica.core.problems import Problem
from civica.domains.water.commands import water
from civica.domains.water.quality import (
    PARAMETERS,
    QualityConfig,
    StationWatch,
    detect_events,
    event_probability,
)
from civica.domains.water.quality_scoring import (
    Injection,
    events_from_json,
    injections_from_truth,
    score_events,
)
from civica.domains.water.quality_signals import DailyAnalogs, RecentRange
from civica.domains.water.scenario import ScenarioConfig, generate

START = datetime(2026, 1, 1, tzinfo=UTC)
STEP_S = 900
PER_DAY = 86_400 // STEP_S


def stations(
    days: float,
    count: int = 3,
    seed: int = 0,
    event: tuple[int, int, int, float] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Chlorine (mg/L), conductivity (uS/cm), turbidity (NTU) at ``count`` stations: a diurnal
    cycle whose timing and size wander from day to day, sensor noise, and an optional
    contaminant ``event = (station, first step, last step, size)`` (size 1: -0.3 mg/L chlorine,
    +30 uS/cm, +0.3 NTU)."""
    rng = np.random.default_rng(seed)
    steps = int(days * PER_DAY)
    t = np.arange(steps) * float(STEP_S)
    day = (t // 86_400).astype(int)
    n_days = int(day[-1]) + 1
    columns: dict[str, np.ndarray] = {}
    rows = []
    for s in range(count):
        shift = rng.normal(0, 900, n_days)[day]  # the cycle wanders ~15 min from day to day
        size = rng.normal(1, 0.05, n_days)[day]
        w = 2 * np.pi * (t + shift) / 86_400 + rng.uniform(0, 2 * np.pi)
        series = {
            "cl": (0.8 + 0.15 * size * np.sin(w) + rng.normal(0, 0.02, steps), "mg/L"),
            "ec": (450 + 20 * size * np.sin(w + 1) + rng.normal(0, 3, steps), "uS/cm"),
            "tu": (0.3 + 0.05 * size * np.sin(w + 2) + abs(rng.normal(0, 0.03, steps)), "NTU"),
        }
        if event is not None and event[0] == s:
            first, last, k = event[1], event[2], event[3]
            series["cl"][0][first:last] -= 0.3 * k
            series["ec"][0][first:last] += 30 * k
            series["tu"][0][first:last] += 0.3 * k
        for name, (values, unit) in series.items():
            columns[f"Q{s}-{name}"] = values
            rows.append((f"Q{s}-{name}", "quality", f"N{s}", unit))
    rows.append(("P1", "pressure", "N0", "m"))  # other sensors are ignored
    columns["P1"] = np.full(steps, 30.0)
    index = pd.date_range(START, periods=steps, freq=f"{STEP_S}s")
    sensors = pd.DataFrame(rows, columns=["sensor_id", "kind", "element", "unit"])
    return pd.DataFrame(columns, index=index), sensors


def test_a_contaminant_step_is_detected_quickly_at_its_station() -> None:
    first = 4 * PER_DAY + 30
    readings, sensors = stations(6, event=(1, first, first + 24, 1.0))
    events = detect_events(readings, sensors)
    assert len(events) == 1
    event = events[0]
    assert event.node == "N1"
    delay = event.detected_at - readings.index[first].to_pydatetime()
    assert timedelta(0) <= delay <= timedelta(hours=1)
    assert set(event.parameters) == {"chlorine", "conductivity", "turbidity"}
    assert event.probability >= QualityConfig().level
    assert event.ended_at >= event.detected_at


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_quiet_week_raises_at_most_one_false_alarm(seed: int) -> None:
    readings, sensors = stations(9, seed=seed)  # 2 learning days, then a week watched
    assert len(detect_events(readings, sensors)) <= 1


def test_rising_chlorine_and_falling_conductivity_are_not_contamination() -> None:
    first = 4 * PER_DAY
    readings, sensors = stations(6, event=(0, first, first + 24, -1.0))
    assert detect_events(readings, sensors) == []


def test_gaps_and_outages_do_not_crash_and_the_event_is_still_found() -> None:
    first = 4 * PER_DAY + 10
    readings, sensors = stations(6, event=(2, first, first + 30, 1.0), seed=5)
    rng = np.random.default_rng(0)
    readings = readings.mask(rng.random(readings.shape) < 0.05)
    readings.iloc[first - 20 : first + 2, :] = np.nan  # every sensor down just before it
    readings.iloc[2 * PER_DAY : 2 * PER_DAY + 40, 0] = np.nan  # one sensor out for 10 h
    events = detect_events(readings, sensors)
    assert [e.node for e in events] == ["N2"]
    assert events[0].detected_at - readings.index[first].to_pydatetime() <= timedelta(hours=1)


def test_all_missing_station_raises_nothing() -> None:
    readings, sensors = stations(4)
    readings.loc[:, :] = np.nan
    assert detect_events(readings, sensors) == []


def test_stations_alarming_together_make_one_event() -> None:
    first = 4 * PER_DAY
    a, sensors = stations(6, count=2, event=(0, first, first + 24, 1.0))
    b, _ = stations(6, count=2, event=(1, first + 4, first + 28, 1.0))
    readings = a.copy()
    readings[[c for c in b.columns if c.startswith("Q1")]] = b[
        [c for c in b.columns if c.startswith("Q1")]
    ]
    events = detect_events(readings, sensors)
    assert len(events) == 1
    assert events[0].node == "N0"
    assert events[0].stations == ("N0", "N1")


def test_recent_range_edges_and_noise() -> None:
    chlorine = RecentRange(direction=-1, resolution=0.01)
    assert chlorine.score_one({"time": 0.0, "value": 0.1}) == 0.0  # nothing learned yet
    for step in range(2 * PER_DAY):  # 0.5 / 0.7 mg/L alternating: a station fed by two sources
        chlorine.learn_one({"time": step * 900.0, "value": 0.5 if step % 8 < 4 else 0.7})
    later = 2 * 86_400.0
    assert chlorine.ready(later)
    assert chlorine.edge() == pytest.approx(0.5)
    assert chlorine.noise() == pytest.approx(0.01)  # most changes are 0: the resolution floor
    assert chlorine.score_one({"time": later, "value": 0.6}) < 0  # inside the range
    assert chlorine.score_one({"time": later, "value": 0.3}) == pytest.approx(20.0)
    assert chlorine.score_one({"time": later, "value": math.nan}) == 0.0
    # Older than range_days: forgotten.
    chlorine.learn_one({"time": later + 8 * 86_400.0, "value": 0.9})
    assert chlorine.edge() == pytest.approx(0.9)


def test_daily_analogs_look_at_the_same_hour_on_previous_days_only() -> None:
    analogs = DailyAnalogs(direction=+1)  # conductivity: a contaminant raises it
    for day in range(3):
        for hour in range(24):
            value = 500.0 if hour == 12 else 400.0  # a daily routine at noon
            analogs.learn_one({"time": day * 86_400.0 + hour * 3600.0, "value": value})
    today = 3 * 86_400.0
    assert analogs.edge(today + 12 * 3600.0) == 500.0
    assert analogs.edge(today + 6 * 3600.0) == 400.0
    assert analogs.score_one({"time": today + 12 * 3600.0, "value": 490.0}) < 0
    assert analogs.score_one({"time": today + 6 * 3600.0, "value": 490.0}) == 90.0
    analogs.learn_one({"time": today + 6 * 3600.0, "value": 900.0})  # today does not count
    assert analogs.edge(today + 6 * 3600.0) == 400.0
    # Just after midnight, the hour before midnight of previous days is near.
    analogs.learn_one({"time": today - 900.0, "value": 700.0})
    assert analogs.edge(today + 1800.0) == 400.0  # the 3rd highest: one reading is no routine


def test_a_new_daily_routine_alarms_once() -> None:
    readings, sensors = stations(9, count=1, seed=4)
    for day in range(4, 9):  # from day 4, chlorine dips for 2 h every evening
        first = day * PER_DAY + 80
        readings.iloc[first : first + 8, 0] -= 0.5
    events = detect_events(readings, sensors)
    assert len(events) <= 1


def test_the_watch_does_not_learn_from_an_event() -> None:
    first = 4 * PER_DAY + 40
    readings, sensors = stations(6, count=1, event=(0, first, first + 24, 2.0))
    signals = {s.sensor_id: PARAMETERS[s.unit] for s in sensors.itertuples() if s.kind == "quality"}
    watch = StationWatch("N0", signals)
    raised = []
    for i, time in enumerate(readings.index[: first + 40]):
        x = {"time": time.timestamp()} | {c: float(readings[c].iloc[i]) for c in signals}
        watch.update(x)
        raised.append(watch.in_event)
    assert any(raised[first : first + 8]) and not any(raised[:first])
    # Six hours of chlorine 0.6 mg/L lower, then 4 h clean: the recent range still ends
    # around the clean low (0.8 - 0.15 mg/L minus noise), not at the contaminated level.
    assert watch.scorer.models["Q0-cl"].range.edge() > 0.5


def test_event_probability_is_a_binomial_confidence() -> None:
    assert event_probability(0, 10, 0.02) == 0.0
    assert event_probability(1, 1, 0.02) == pytest.approx(0.98)
    assert event_probability(2, 2, 0.5) == pytest.approx(0.75)
    assert event_probability(3, 8, 0.02) > 0.999 > event_probability(2, 8, 0.02)


def test_a_quality_sensor_with_an_unknown_unit_is_refused() -> None:
    readings, sensors = stations(1)
    sensors.loc[0, "unit"] = "ppm"
    with pytest.raises(Problem, match="ppm"):
        detect_events(readings, sensors)


def test_events_json_round_trips_into_the_scorer() -> None:
    first = 4 * PER_DAY + 30
    readings, sensors = stations(6, event=(1, first, first + 24, 1.0))
    body = [e.to_json() for e in detect_events(readings, sensors)]
    assert body[0]["node"] == "N1"
    assert body[0]["detected_at"].endswith("Z")
    assert events_from_json(body) == [("N1", detect_events(readings, sensors)[0].detected_at)]


def _at(hours: float) -> datetime:
    return START + timedelta(hours=hours)


def test_scoring_by_hand() -> None:
    injections = [
        Injection("A", _at(50), _at(52), "x", 1.0),  # seen at +3 h (inside the 6 h grace)
        Injection("B", _at(80), _at(81), "x", 1.0),  # seen twice: one detection, no alarm
        Injection("C", _at(100), _at(101), "x", 1.0),  # first event 8 h after its end: missed
        Injection("D", _at(120), _at(121), "x", 1.0, observable=False),  # never seen
    ]
    events = [
        ("S1", _at(49)),  # before A started: a false alarm
        ("S2", _at(53)),
        ("S1", _at(81)),
        ("S3", _at(82)),
        ("S1", _at(109)),  # false alarm
    ]
    score = score_events(events, injections, days=14, grace_h=6.0)
    assert (score.injections, score.observable, score.unobservable) == (4, 3, 1)
    assert (score.detected, score.detected_observable) == (2, 2)
    assert score.detection_rate == pytest.approx(0.5)
    assert score.detection_rate_observable == pytest.approx(2 / 3)
    assert score.median_time_to_detect_h == pytest.approx(2.0)  # delays 3 h and 1 h
    assert score.false_alarms == 2
    assert score.false_alarms_per_week == pytest.approx(1.0)
    assert [m["detected_by"] for m in score.matches] == ["S2", "S1", None, None]
    pooled = score + score_events([], [], days=7, grace_h=6.0)
    assert pooled.weeks == pytest.approx(3.0)
    assert pooled.to_json(details=False)["false_alarms_per_week"] == pytest.approx(2 / 3, abs=1e-4)


def test_scoring_with_nothing_to_find() -> None:
    score = score_events([], [], days=7)
    assert score.detection_rate is None
    assert score.median_time_to_detect_h is None
    assert score.false_alarms_per_week == 0.0


def test_injections_are_read_from_truth() -> None:
    truth = {
        "injections": [
            {
                "node": "J1",
                "start": "2026-01-03T01:00:00Z",
                "end": "2026-01-03T05:00:00Z",
                "contaminant": "arsenic",
                "mass_rate": 12.5,
                "observable": False,
            }
        ]
    }
    (injection,) = injections_from_truth(truth)
    assert injection.node == "J1"
    assert injection.end - injection.start == timedelta(hours=4)
    assert injection.observable is False


@pytest.fixture(scope="module")
def net3_quality(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Five days of Net3 with two contaminant injections (about 2 s to simulate)."""
    out = tmp_path_factory.mktemp("net3-quality")
    generate(ScenarioConfig("Net3", days=5, leaks=0, seed=0, quality=True, injections=2), out)
    return out


def test_net3_scenario_end_to_end_through_the_cli(net3_quality: Path) -> None:
    runner = CliRunner()
    events_file = net3_quality / "events.json"
    detected = runner.invoke(
        water, ["quality-detect", str(net3_quality), "--out", str(events_file)]
    )
    assert detected.exit_code == 0, detected.output
    events = json.loads(events_file.read_text())
    stations = set(
        pd.read_csv(net3_quality / "sensors.csv", dtype=str).query("kind == 'quality'")["element"]
    )
    assert events and all(str(e["node"]) in stations for e in events)
    scored = runner.invoke(water, ["quality-score", str(net3_quality), str(events_file)])
    assert scored.exit_code == 0, scored.output
    score = json.loads(scored.output)
    truth = json.loads((net3_quality / "truth.json").read_text())
    assert score["injections"] == len(truth["injections"]) == 2
    assert score["detected_observable"] >= 1
    assert score["false_alarms"] <= 1


def test_cli_refuses_bad_events_with_one_line(net3_quality: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    broken = tmp_path / "events.json"
    broken.write_text("[{")
    result = runner.invoke(water, ["quality-score", str(net3_quality), str(broken)])
    assert result.exit_code == 2
    assert "not valid JSON" in result.output and "Traceback" not in result.output
    broken.write_text('[{"node": "15"}]')
    result = runner.invoke(water, ["quality-score", str(net3_quality), str(broken)])
    assert result.exit_code == 2
    assert "detected_at" in result.output
    result = runner.invoke(water, ["quality-detect", str(tmp_path)])
    assert result.exit_code == 2
    assert "network.inp" in result.output
