"""Incident detection on scripted blockages in the traffic twin: rate, time to detect, false alarms.

Prints one JSON object per run (JSON lines), then a summary per scenario and one overall, on
stdout; progress goes to stderr.

    python benchmarks/traffic_incidents.py               # 4 scenarios x 3 seeds x 6 blockages
    python benchmarks/traffic_incidents.py --quick       # cologne1, one seed, 2400 s, 2 blockages
    python benchmarks/traffic_incidents.py --scenarios cologne8 --seeds 10 11 --jobs 2

For every scenario and seed, the live twin (congestion and incident watch, 60 s intervals)
first runs incident-free into a fresh DuckDB platform: its alarms are false alarms, and its
first ``--warmup`` seconds say which lanes carry traffic. Then ``--incidents`` runs of the same
scenario and seed each block one lane (the lead vehicle on it stops where it is; SUMO teleports
it away once it has waited 300 s, its default time-to-teleport, which the twin keeps), drawn
at random from a seeded RNG:

* the lane: any lane whose detector counted at least ``MIN_LANE_FLOW`` veh/h, on a segment
  (edge) that counted at least ``MIN_SEGMENT_FLOW`` veh/h, over the warm-up of the
  incident-free run (so the draw never looks at what the detector did);
* the time: uniform between the end of the warm-up and ``AFTER_S`` before the end of the run.

An incident run stops ``AFTER_S`` after its blockage. A blockage is detected by the first
``incidentSuspected`` alarm raised within ``WINDOW_S`` after the vehicle stopped on the blocked
segment, on a segment just upstream or downstream of it (a lane detector on the segment the
blocked lane leads to is what sees its flow drop), or naming it among the segments that
filled up; time to detect is that alarm's time minus the stop. Every other alarm is false.
In an incident run only the alarms from the stop on count: up to it the run is the
incident-free one (same seed), whose alarms are already counted. As a control, the
incident-free run's alarms are scored against the same place and time: what "detects" a
blockage there would have been raised without it (``chance_detection_rate``).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from civica.app import build_services
from civica.core.bus import ObservationsAdded
from civica.domains.traffic.ids import TRAFFIC_FLOW, flow_id
from civica.domains.traffic.incidents import Incident, IncidentConfig, score_incidents
from civica.domains.traffic.twin import ScriptedIncident, TwinRun, run_live
from civica.storage import DuckDBStore

SCENARIOS = ("cologne1", "cologne3", "ingolstadt1", "grid4x4")
T0 = datetime(2026, 11, 23, 7, 0, tzinfo=UTC)
INTERVAL_S = 60.0
WINDOW_S = 600.0  # an alarm later than this after the stop does not detect it
AFTER_S = 900.0  # an incident run goes on this long after its blockage
MIN_LANE_FLOW = 120.0  # veh/h through the blocked lane's detector in the warm-up
MIN_SEGMENT_FLOW = 300.0  # veh/h through its segment (all lanes) in the warm-up


@dataclass(frozen=True)
class Site:
    """A lane that may be blocked, and what it and its segment carried in the warm-up (veh/h)."""

    lane: str
    edge: str
    lane_flow: float
    segment_flow: float


def eligible_sites(lane_flows: Mapping[str, float], lane_edges: Mapping[str, str]) -> list[Site]:
    """The lanes that carry traffic (the site rule above), in lane order."""
    per_edge: dict[str, float] = defaultdict(float)
    for lane, flow in lane_flows.items():
        per_edge[lane_edges[lane]] += flow
    return [
        Site(lane, lane_edges[lane], flow, per_edge[lane_edges[lane]])
        for lane, flow in sorted(lane_flows.items())
        if flow >= MIN_LANE_FLOW and per_edge[lane_edges[lane]] >= MIN_SEGMENT_FLOW
    ]


def draw_incidents(
    sites: Sequence[Site], count: int, *, seed: str, earliest_s: float, latest_s: float
) -> list[tuple[Site, ScriptedIncident]]:
    """``count`` blockages: distinct lanes while there are enough, uniform start times."""
    if not sites or latest_s < earliest_s:
        return []
    rng = random.Random(seed)
    lanes = rng.sample(list(sites), min(count, len(sites)))
    while len(lanes) < count:
        lanes.append(rng.choice(list(sites)))
    return [
        (site, ScriptedIncident(site.lane, round(rng.uniform(earliest_s, latest_s))))
        for site in lanes
    ]


def neighbours(successors: Mapping[str, Sequence[str]]) -> dict[str, set[str]]:
    """Each segment -> the segments just downstream and just upstream of it."""
    out: dict[str, set[str]] = defaultdict(set)
    for up, downs in successors.items():
        for down in downs:
            out[up].add(down)
            out[down].add(up)
    return dict(out)


@dataclass
class LiveResult:
    run: TwinRun
    alarms: list[Incident]
    lane_flows: dict[str, float]  # mean veh/h of each lane detector up to the warm-up's end
    wall_s: float


def _live(
    scenario: str,
    seed: int,
    seconds: float,
    incidents: Sequence[ScriptedIncident] = (),
    warmup_s: float = 0.0,
) -> LiveResult:
    """One live twin run into a fresh DuckDB file; lane flows over the first ``warmup_s``."""
    started = time.perf_counter()
    warmup_end = T0 + timedelta(seconds=warmup_s)
    sums: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)

    def count_flows(event: object) -> None:
        if not isinstance(event, ObservationsAdded):
            return
        for row in event.rows:
            if (
                row.entity_type == TRAFFIC_FLOW
                and row.attribute == "intensity"
                and row.value_num is not None
                and row.observed_at <= warmup_end
            ):
                sums[row.entity_id] += row.value_num
                counts[row.entity_id] += 1

    with tempfile.TemporaryDirectory(prefix="civica-bench-") as tmp:
        store = DuckDBStore(Path(tmp) / "city.duckdb")
        try:
            services = build_services(store)
            services.ingest.bus.subscribe(count_flows)
            run, watch = run_live(
                scenario,
                services.ingest,
                seconds=seconds,
                interval_s=INTERVAL_S,
                start=T0,
                seed=seed,
                incidents=incidents,
                incident_config=IncidentConfig(),
            )
        finally:
            store.close()
    by_entity = {flow_id(run.scenario, s.detector_id): s.lane for s in run.sites}
    lane_flows = {by_entity[e]: sums[e] / counts[e] for e in counts if e in by_entity}
    alarms = list(watch.incidents.incidents) if watch.incidents is not None else []
    return LiveResult(run, alarms, lane_flows, time.perf_counter() - started)


def free_run(scenario: str, seed: int, seconds: float, warmup_s: float) -> dict[str, Any]:
    """The incident-free run: its false alarms and the lanes that may be blocked."""
    live = _live(scenario, seed, seconds, warmup_s=warmup_s)
    hours = seconds / 3600.0
    score = score_incidents([], live.alarms, hours=hours)
    edges = {s.lane: s.edge for s in live.run.sites}
    sites = eligible_sites(live.lane_flows, edges)
    return {
        "run": "incident-free",
        "scenario": scenario,
        "seed": seed,
        "seconds": seconds,
        "segments": len(live.run.successors),
        "lanes": len(live.run.sites),
        "eligible_lanes": len(sites),
        "false_alarms": score.false_alarms,
        "false_alarms_per_hour": round(score.false_alarms_per_hour, 2),
        "alarm_segments": [a.segment for a in live.alarms],
        "wall_s": round(live.wall_s, 1),
        "alarms": [[a.segment, list(a.upstream), _seconds(a.detected_at)] for a in live.alarms],
        "sites": [[s.lane, s.edge, round(s.lane_flow), round(s.segment_flow)] for s in sites],
    }


def _seconds(at: datetime) -> float:
    return (at - T0).total_seconds()


def incident_run(
    scenario: str,
    seed: int,
    index: int,
    site: Site,
    at_s: float,
    free_alarms: Sequence[tuple[str, Sequence[str], float]] = (),
) -> dict[str, Any]:
    """One run with one blockage, scored from the moment the vehicle stopped.

    ``free_alarms`` (segment, upstream, seconds) are the incident-free run's: scored against
    the same place and time, they say how often an alarm would have "detected" it by chance.
    """
    live = _live(scenario, seed, at_s + AFTER_S, (ScriptedIncident(site.lane, at_s),))
    out: dict[str, Any] = {
        "run": "incident",
        "scenario": scenario,
        "seed": seed,
        "index": index,
        "lane": site.lane,
        "segment": site.edge,
        "lane_flow": round(site.lane_flow),
        "segment_flow": round(site.segment_flow),
        "drawn_at_s": at_s,
    }
    if not live.run.incidents:  # the lane stayed empty to the end: nothing was blocked
        return {**out, "stopped": False, "wall_s": round(live.wall_s, 1)}
    stopped_s = float(live.run.incidents[0]["at_s"])
    stopped = T0 + timedelta(seconds=stopped_s)
    after = [a for a in live.alarms if a.detected_at >= stopped]
    hours = (at_s + AFTER_S - stopped_s) / 3600.0
    near = neighbours(live.run.successors)
    window = timedelta(seconds=WINDOW_S)
    score = score_incidents([(stopped, site.edge)], after, hours=hours, window=window, near=near)
    unblocked = [
        Incident(segment, tuple(upstream), T0, T0 + timedelta(seconds=detected_s))
        for segment, upstream, detected_s in free_alarms
        if detected_s >= stopped_s
    ]
    chance = score_incidents(
        [(stopped, site.edge)], unblocked, hours=hours, window=window, near=near
    )
    return {
        **out,
        "stopped": True,
        "stopped_at_s": stopped_s,
        "detected": bool(score.detected),
        "detected_by_chance": bool(chance.detected),
        "time_to_detect_s": score.delays_s[0] if score.delays_s else None,
        "alarm_segments": [a.segment for a in after],
        "false_alarms": score.false_alarms,
        "duplicates": score.duplicates,
        "hours_after_stop": round(hours, 4),
        "wall_s": round(live.wall_s, 1),
    }


def _quantile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[round(q * 100) - 1]


def summarise(runs: Sequence[dict[str, Any]], scenario: str | None) -> dict[str, Any]:
    """Counts, rates and time to detect over some runs (a scenario's, or all of them)."""
    free = [r for r in runs if r["run"] == "incident-free"]
    blocked = [r for r in runs if r["run"] == "incident" and r["stopped"]]
    delays = sorted(r["time_to_detect_s"] for r in blocked if r["detected"])
    by_chance = sum(1 for r in blocked if r["detected_by_chance"])
    free_hours = sum(r["seconds"] for r in free) / 3600.0
    blocked_hours = sum(r["hours_after_stop"] for r in blocked)
    false_free = sum(r["false_alarms"] for r in free)
    false_blocked = sum(r["false_alarms"] for r in blocked)
    return {
        "summary": True,
        "scenario": scenario or "all",
        "incidents": len(blocked),
        "not_stopped": sum(1 for r in runs if r["run"] == "incident" and not r["stopped"]),
        "detected": len(delays),
        "detection_rate": round(len(delays) / len(blocked), 3) if blocked else None,
        "chance_detection_rate": round(by_chance / len(blocked), 3) if blocked else None,
        "median_time_to_detect_s": _quantile(delays, 0.5),
        "p90_time_to_detect_s": _quantile(delays, 0.9),
        "false_alarms_incident_free": false_free,
        "incident_free_hours": round(free_hours, 2),
        "false_alarms_per_hour_incident_free": (
            round(false_free / free_hours, 2) if free_hours else None
        ),
        "false_alarms_incident_runs": false_blocked,
        "duplicates_incident_runs": sum(r["duplicates"] for r in blocked),
        "incident_run_hours_after_stop": round(blocked_hours, 2),
        "false_alarms_per_hour_incident_runs": (
            round(false_blocked / blocked_hours, 2) if blocked_hours else None
        ),
        "wall_s": round(sum(r["wall_s"] for r in runs), 1),
    }


def plan_incidents(
    free: Mapping[str, Any], count: int, *, warmup_s: float, seconds: float
) -> list[tuple[Any, ...]]:
    """The arguments of :func:`incident_run` for the blockages drawn after an incident-free run."""
    drawn = draw_incidents(
        [Site(*s) for s in free["sites"]],
        count,
        seed=f"{free['scenario']}:{free['seed']}",
        earliest_s=warmup_s,
        latest_s=seconds - AFTER_S,
    )
    return [
        (free["scenario"], free["seed"], index, site, incident.at_s, free["alarms"])
        for index, (site, incident) in enumerate(drawn)
    ]


def run_all(
    scenarios: Sequence[str],
    seeds: Sequence[int],
    *,
    seconds: float,
    warmup_s: float,
    incidents: int,
    jobs: int,
    emit: Callable[[dict[str, Any]], None],
) -> list[dict[str, Any]]:
    """Every incident-free run, then (as each ends) its incident runs; each result emitted."""
    if seconds < warmup_s + AFTER_S:
        raise SystemExit(f"--seconds must be at least the warm-up + {AFTER_S:.0f} s")
    results: list[dict[str, Any]] = []
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        pending: set[Future[dict[str, Any]]] = {
            pool.submit(free_run, scenario, seed, seconds, warmup_s)
            for scenario in scenarios
            for seed in seeds
        }
        total = len(pending) * (1 + incidents)
        while pending:
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                result = future.result()
                results.append(result)
                emit(result)
                print(
                    f"[{len(results)}/{total}] {result['run']} {result['scenario']} "
                    f"seed {result['seed']} {result['wall_s']} s",
                    file=sys.stderr,
                    flush=True,
                )
                if result["run"] != "incident-free":
                    continue
                planned = plan_incidents(result, incidents, warmup_s=warmup_s, seconds=seconds)
                if len(planned) < incidents:
                    total -= incidents - len(planned)
                    print(
                        f"  only {len(result['sites'])} eligible lanes",
                        file=sys.stderr,
                        flush=True,
                    )
                for arguments in planned:
                    pending.add(pool.submit(incident_run, *arguments))
    return results


def main(argv: list[str] | None = None) -> None:
    """Run the incident-free and incident runs and print JSON lines."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: cologne1, 1 seed, 2400 s")
    parser.add_argument("--scenarios", nargs="+", default=list(SCENARIOS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--seconds", type=float, default=3600.0, help="incident-free run length")
    parser.add_argument("--warmup", type=float, default=900.0, help="s before any blockage")
    parser.add_argument("--incidents", type=int, default=6, help="incident runs per seed")
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args(argv)
    if args.quick:
        args.scenarios, args.seeds, args.seconds, args.incidents = ["cologne1"], [0], 2400.0, 2

    def emit(result: dict[str, Any]) -> None:
        shown = {k: v for k, v in result.items() if k not in ("sites", "alarms")}
        print(json.dumps(shown), flush=True)

    runs = run_all(
        args.scenarios,
        args.seeds,
        seconds=args.seconds,
        warmup_s=args.warmup,
        incidents=args.incidents,
        jobs=args.jobs,
        emit=emit,
    )
    for scenario in args.scenarios:
        print(json.dumps(summarise([r for r in runs if r["scenario"] == scenario], scenario)))
    print(json.dumps(summarise(runs, None)), flush=True)


if __name__ == "__main__":
    main()
