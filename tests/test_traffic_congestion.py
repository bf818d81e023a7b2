"""Congestion levels, alert hysteresis on scripted series, and the live watch in the twin."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from civica.api.services import Services
from civica.app import build_services
from civica.core.query import parse_q
from civica.core.store import EntityQuery
from civica.domains.traffic.congestion import (
    Condition,
    CongestionWatch,
    DetectorReading,
    DetectorRef,
    EpisodeTracker,
    Level,
    Thresholds,
    congestion_level,
    segment_condition,
)
from civica.domains.traffic.ids import flow_id, segment_id
from civica.domains.traffic.incidents import (
    Incident,
    IncidentConfig,
    IncidentDetector,
    SegmentSample,
    score_incidents,
)
from civica.domains.traffic.scenarios import Scenario
from civica.domains.traffic.twin import ScriptedIncident, run_live
from civica.storage import DuckDBStore

T0 = datetime(2026, 11, 23, 7, 0, tzinfo=UTC)
MINUTE = timedelta(minutes=1)


def _alerts(services: Services) -> list[dict[str, object]]:
    page = services.store.query_entities(
        "",
        EntityQuery(types=("Alert",), q=parse_q('subCategory=="trafficJam"'), limit=100),
    )
    return sorted((e.entity for e in page.items), key=lambda e: str(e["id"]))


@pytest.mark.parametrize(
    ("ratio", "occupancy", "level"),
    [
        (0.9, 0.05, Level.FREE),
        (None, 0.0, Level.FREE),  # nobody passed: free, not unknown-as-jammed
        (0.5, 0.05, Level.HEAVY),
        (0.9, 0.2, Level.HEAVY),
        (0.2, 0.05, Level.CONGESTED),
        (0.9, 0.35, Level.CONGESTED),  # occupancy alone can raise the level
        (0.1, 0.05, Level.JAMMED),
        (None, 0.6, Level.JAMMED),
    ],
)
def test_levels_take_the_worse_of_speed_and_occupancy(
    ratio: float | None, occupancy: float, level: Level
) -> None:
    assert congestion_level(ratio, occupancy) is level


def test_bad_thresholds_and_readings_are_refused() -> None:
    with pytest.raises(ValueError, match="must not be easier"):
        Thresholds(enter_ratio=0.5, leave_ratio=0.4)
    with pytest.raises(ValueError, match="fall"):
        Thresholds(heavy_ratio=0.2)
    with pytest.raises(ValueError, match="at least 1"):
        Thresholds(enter_intervals=0)
    with pytest.raises(ValueError, match="negative"):
        congestion_level(-0.1, 0.0)
    with pytest.raises(ValueError, match="free-flow"):
        segment_condition([DetectorReading()], 0.0)
    with pytest.raises(ValueError, match="at least one"):
        segment_condition([], 50.0)


def test_segment_condition_weights_lanes_by_flow_and_takes_the_worst_occupancy() -> None:
    condition = segment_condition(
        [
            DetectorReading(intensity=900, occupancy=0.1, speed_kmh=40, queue_m=0),
            DetectorReading(intensity=100, occupancy=0.4, speed_kmh=10, queue_m=30),
            DetectorReading(intensity=0, occupancy=0.0, speed_kmh=None),
        ],
        free_flow_kmh=50.0,
    )
    assert condition.speed_ratio == pytest.approx((900 * 40 + 100 * 10) / 1000 / 50)
    assert condition.occupancy == 0.4
    assert condition.level is Level.CONGESTED
    assert condition.queue_m == 30


def _series(ratios: list[float]) -> list[tuple[datetime, Condition]]:
    return [
        (T0 + i * MINUTE, Condition(r, 0.05, congestion_level(r, 0.05)))
        for i, r in enumerate(ratios)
    ]


def test_hysteresis_one_episode_no_flapping_on_a_scripted_speed_series() -> None:
    # free, a dip too short to count, a real jam that wobbles around the entry threshold
    # (0.3) without reaching the exit one (0.35) for 3 intervals, then free flow again
    ratios = [0.9, 0.9, 0.2, 0.2, 0.9]  # 2 bad intervals: not enough
    ratios += [0.25, 0.2, 0.1, 0.32, 0.28, 0.34, 0.2, 0.5, 0.33, 0.6, 0.7, 0.8]
    ratios += [0.9] * 5 + [0.1] * 3 + [0.9] * 3  # a second, separate episode
    tracker = EpisodeTracker("WC")
    changes = [(at, tracker.update(at, c)) for at, c in _series(ratios)]
    events = [(at, change) for at, change in changes if change is not None]
    assert [c for _, c in events] == ["opened", "closed", "opened", "closed"]
    first, second = tracker.episodes
    assert first.started_at == T0 + 5 * MINUTE  # the first of the three bad intervals
    assert first.detected_at == T0 + 7 * MINUTE  # k = 3 intervals later
    assert first.ended_at == T0 + 16 * MINUTE  # 0.6, 0.7, 0.8: 3 good intervals
    assert first.worst is Level.JAMMED
    assert second.started_at == T0 + 22 * MINUTE and second.ended_at == T0 + 27 * MINUTE
    assert tracker.active is None


def test_a_segment_hovering_at_the_threshold_raises_no_alert() -> None:
    tracker = EpisodeTracker("EC")
    ratios = [0.29, 0.31, 0.29, 0.31, 0.28, 0.4, 0.29, 0.29, 0.36] * 5
    assert all(tracker.update(at, c) is None for at, c in _series(ratios))
    assert tracker.episodes == []


def test_watch_raises_and_resolves_one_alert_per_episode_through_ingest(
    services: Services,
) -> None:
    refs = {
        flow_id("town", lane): DetectorRef("main", segment_id("town", "main"), 50.0)
        for lane in ("main_0", "main_1")
    }
    watch = CongestionWatch(services.ingest, scenario="town", detectors=refs)
    speeds = [45, 45, 10, 8, 5, 5, 12, 30, 40, 45, 45, 45]
    for i, speed in enumerate(speeds):
        at = T0 + (i + 1) * MINUTE
        docs = [
            {
                "id": entity,
                "type": "TrafficFlowObserved",
                "intensity": {"type": "Property", "value": 600.0, "observedAt": _z(at)},
                "occupancy": {"type": "Property", "value": 0.1, "observedAt": _z(at)},
                "averageVehicleSpeed": {
                    "type": "Property",
                    "value": float(speed),
                    "unitCode": "KMH",
                    "observedAt": _z(at),
                },
            }
            for entity in refs
        ]
        assert not services.ingest.upsert("", docs).errors
        watch.process(until=at)
    watch.close()
    (alert,) = _alerts(services)
    assert alert["id"] == "urn:ngsi-ld:Alert:traffic:trafficJam:town:main:2026-11-23T07:03:00.000Z"
    assert _v(alert, "category") == "traffic"
    assert _v(alert, "status") == "resolved"
    assert _v(alert, "severity") == "high"  # 5 km/h of 50 is jammed
    assert _v(alert, "validTo") == "2026-11-23T07:10:00.000Z"
    assert alert["alertSource"]["object"] == segment_id("town", "main")  # type: ignore[index]
    assert [d["status"]["value"] for d in watch.alerts] == ["open", "resolved"]


def _z(at: datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%SZ")


def _v(entity: dict[str, object], name: str) -> object:
    attr = entity[name]
    assert isinstance(attr, dict)
    return attr["value"]


def test_normal_traffic_raises_no_alert(crossroads: Scenario, services: Services) -> None:
    run, watch = run_live(crossroads, services.ingest, seconds=600, start=T0)
    assert run.intervals == 10
    assert len(watch.conditions) == 10 * 8  # 8 edges a minute
    assert not watch.alerts and not _alerts(services)


def test_a_blocked_exit_raises_jam_alerts_upstream(
    crossroads: Scenario, services: Services
) -> None:
    blocked = (ScriptedIncident("CE_0", 120), ScriptedIncident("CE_1", 120))
    run, _ = run_live(crossroads, services.ingest, seconds=420, start=T0, incidents=blocked)
    assert {i["lane"] for i in run.incidents} == {"CE_0", "CE_1"}
    stopped_at = T0 + timedelta(seconds=max(i["at_s"] for i in run.incidents))
    stored = _alerts(services)
    segments = {a["alertSource"]["object"] for a in stored}  # type: ignore[index]
    assert segment_id("crossroads", "CE") in segments  # the blocked segment itself
    assert segment_id("crossroads", "WC") in segments  # the queue behind it
    first = min(str(_v(a, "dateIssued")) for a in stored)
    detected = datetime.fromisoformat(first)
    assert timedelta(0) < detected - stopped_at <= timedelta(minutes=4)
    assert len(stored) == len({a["alertSource"]["object"] for a in stored})  # type: ignore[index]


# ---- incidents ---------------------------------------------------------------------------
LINKS = {"A": ("B", "C"), "B": (), "C": ()}  # A feeds B and C across one junction
NORMAL = {
    "A": SegmentSample(600, 0.08, 15),
    "B": SegmentSample(400, 0.05, 0),
    "C": SegmentSample(200, 0.03, 0),
}


def _feed(detector: IncidentDetector, samples: list[dict[str, SegmentSample]]) -> list[str]:
    events = []
    for i, interval in enumerate(samples):
        for incident in detector.update(T0 + i * MINUTE, interval):
            events.append(f"{i}:{incident.segment}:{'end' if incident.ended_at else 'start'}")
    return events


def test_flow_drop_below_a_filling_segment_is_one_incident_until_it_clears() -> None:
    blocked = {
        "A": SegmentSample(300, 0.3, 120),
        "B": SegmentSample(20, 0.01, 0),
        "C": SegmentSample(190, 0.03, 0),
    }
    detector = IncidentDetector(LINKS)
    events = _feed(detector, [NORMAL] * 6 + [blocked] * 5 + [NORMAL] * 4)
    assert events == ["7:B:start", "13:B:end"]  # confirmed on the 2nd bad interval
    (incident,) = detector.incidents
    assert incident.upstream == ("A",) and incident.suspected_from == T0 + 6 * MINUTE


def test_recurrent_congestion_and_quiet_periods_are_not_incidents() -> None:
    # upstream fills but the flow past it holds: a busy signal, not a blockage
    busy = {**NORMAL, "A": SegmentSample(700, 0.35, 150)}
    # flow falls everywhere (night) with nothing filling up
    quiet = {k: SegmentSample(v.intensity * 0.2, 0.01, 0) for k, v in NORMAL.items()}
    detector = IncidentDetector(LINKS)
    assert _feed(detector, [NORMAL] * 5 + [busy] * 5 + [quiet] * 5 + [NORMAL] * 3) == []


def test_a_starved_junction_raises_one_incident_not_one_per_exit() -> None:
    gridlock = {
        "A": SegmentSample(100, 0.5, 180),
        "B": SegmentSample(0, 0.0, 0),
        "C": SegmentSample(10, 0.0, 0),
    }
    detector = IncidentDetector(LINKS)
    assert _feed(detector, [NORMAL] * 5 + [gridlock] * 3) == ["6:B:start"]
    assert detector.incidents[0].members == {"B", "C"}


def test_a_queue_standing_where_queues_clear_is_a_stalled_vehicle() -> None:
    # traffic goes round a vehicle stopped on B: flow holds, nothing fills upstream, but one
    # halted vehicle is there at the end of every interval where B's queues used to clear
    stalled = {**NORMAL, "B": SegmentSample(380, 0.06, 7.5)}
    detector = IncidentDetector(LINKS)
    events = _feed(detector, [NORMAL] * 5 + [stalled] * 5 + [NORMAL] * 4)
    assert events == ["8:B:start", "12:B:end"]  # 3 queued intervals, then confirmed
    assert detector.incidents[0].upstream == ()
    # A ends every interval with a queue (a signal): a longer standing queue is its normal
    queued = {**NORMAL, "A": SegmentSample(600, 0.08, 30)}
    assert _feed(IncidentDetector(LINKS), [NORMAL] * 5 + [queued] * 6) == []


def test_scores_count_detections_delays_and_false_alarms() -> None:
    def alarm(segment: str, minutes: int, upstream: tuple[str, ...] = ()) -> Incident:
        return Incident(segment, upstream, T0, T0 + minutes * MINUTE)

    score = score_incidents(
        [(T0, "B"), (T0 + 30 * MINUTE, "A"), (T0 + 60 * MINUTE, "C")],
        [alarm("B", 2), alarm("B", 3), alarm("B", 33, ("A",)), alarm("C", 90)],
        hours=2.0,
    )
    assert (score.scripted, score.detected) == (3, 2)
    assert score.detection_rate == pytest.approx(2 / 3)
    assert score.mean_time_to_detect_s == 150.0
    assert score.false_alarms == 2 and score.false_alarms_per_hour == 1.0
    with pytest.raises(ValueError, match="hours"):
        score_incidents([], [], hours=0)
    with pytest.raises(ValueError, match="flow drop"):
        IncidentConfig(flow_drop=1.5)


def test_scripted_blockages_in_the_twin_are_detected_without_false_alarms(
    crossroads: Scenario, tmp_path: Path
) -> None:
    """Three blockages (both lanes of a segment, 5 min in) and two incident-free runs."""
    runs = [(1, None), (2, None), (4, "WC"), (5, "EC"), (0, "CE")]
    scripted: list[tuple[datetime, str]] = []
    alarms: list[Incident] = []
    seconds = 900
    for n, (seed, edge) in enumerate(runs):
        store = DuckDBStore(tmp_path / f"run{n}.duckdb")
        services = build_services(store)
        blocked = (
            () if edge is None else tuple(ScriptedIncident(f"{edge}_{i}", 300) for i in (0, 1))
        )
        start = T0 + n * timedelta(hours=1)  # runs never overlap in time
        run, watch = run_live(
            crossroads,
            services.ingest,
            seconds=seconds,
            start=start,
            seed=seed,
            incidents=blocked,
            incident_config=IncidentConfig(),
        )
        assert watch.incidents is not None
        alarms += watch.incidents.incidents
        if edge is not None:
            assert len(run.incidents) == 2
            stopped = min(i["at_s"] for i in run.incidents)
            scripted.append((start + timedelta(seconds=stopped), edge))
            page = services.store.query_entities(
                "",
                EntityQuery(types=("Alert",), q=parse_q('subCategory=="incidentSuspected"')),
            )
            assert len(page.items) == 1  # one blockage, one alert
        store.close()
    score = score_incidents(scripted, alarms, hours=len(runs) * seconds / 3600)
    print(score)  # benchmark figures for the README: pytest -s shows them
    assert score.detection_rate == 1.0
    assert score.mean_time_to_detect_s is not None and score.mean_time_to_detect_s <= 240
    assert score.false_alarms == 0
