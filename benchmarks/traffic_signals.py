"""Signal control on the RESCO scenarios: fixed vs Webster vs max-pressure vs queue-pressure.

Prints one JSON object per run (JSON lines) and a summary object per scenario and controller
(mean over seeds) on stdout; progress goes to stderr.

    python benchmarks/traffic_signals.py                    # 5 scenarios x 3 seeds x 3600 s
    python benchmarks/traffic_signals.py --quick            # cologne1 and grid4x4, 300 s, 1 seed
    python benchmarks/traffic_signals.py --scenarios cologne1 grid4x4 --seeds 0 1 2 --jobs 4

Each run is its own SUMO process (same eclipse-sumo build for every controller); runs go in
parallel over ``--jobs`` worker processes. Metrics follow RESCO: average delay = SUMO timeLoss
+ departDelay per vehicle, vehicles still driving or never inserted at the end counted.

Per scenario it also prints the capacity floor (``civica traffic capacity --measure``, skip it
with ``--no-floor``): the share of vehicles that no controller can get through the busiest
light within the window, with saturation flows measured in the same SUMO build. Where it is
above 0 the demand exceeds what the junction can carry, and no controller can keep every
vehicle moving; ``worst_stuck_pct_where_servable`` is the worst stuck share elsewhere.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import time
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any

from civica.domains.traffic.capacity import capacity_report
from civica.domains.traffic.control import controller_names, run_control
from civica.domains.traffic.engine import SumoOptions, discharge_rates
from civica.domains.traffic.scenarios import resco_scenario

SCENARIOS = ("grid4x4", "arterial4x4", "cologne1", "cologne3", "ingolstadt1")


def _run(
    scenario: str, controller: str, seed: int, seconds: float, demand_scale: float
) -> dict[str, Any]:
    started = time.perf_counter()
    options = SumoOptions(seconds, seed=seed, demand_scale=demand_scale)
    result = run_control(resco_scenario(scenario), controller, options)
    figures = result.as_dict()
    figures.pop("hand_backs")
    figures["wall_s"] = round(time.perf_counter() - started, 1)
    return figures


def _floor(scenario: str, seconds: float, demand_scale: float) -> dict[str, Any]:
    """The capacity bound of the scenario's busiest light, saturation flows measured."""
    found = resco_scenario(scenario)
    discharge = functools.partial(discharge_rates, found.net_file)
    started = time.perf_counter()
    report = capacity_report(
        found.net_file,
        found.route_files,
        found.begin,
        seconds,
        demand_scale,
        discharge=discharge,
    )
    lights: list[dict[str, Any]] = report["lights"]  # type: ignore[assignment]
    share: float = report["unfinished_share_at_least"]  # type: ignore[assignment]
    return {
        "floor": True,
        "scenario": scenario,
        "busiest_light": lights[0]["tls"] if lights else None,
        "required_green_share": lights[0]["required_green_share"] if lights else 0.0,
        "unfinished_pct_at_least": round(100 * share, 2),
        "wall_s": round(time.perf_counter() - started, 1),
    }


def main(argv: list[str] | None = None) -> None:
    """Run the grid of scenarios x controllers x seeds and print JSON lines."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 scenarios, 300 s")
    parser.add_argument("--scenarios", nargs="+", default=list(SCENARIOS))
    parser.add_argument("--controllers", nargs="+", default=list(controller_names()))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--seconds", type=float, default=3600.0)
    parser.add_argument("--demand-scale", type=float, default=1.0, help="SUMO --scale")
    parser.add_argument("--jobs", type=int, default=4)
    parser.add_argument("--no-floor", action="store_true", help="skip the capacity floors")
    args = parser.parse_args(argv)
    if args.quick:
        args.scenarios, args.seeds, args.seconds = ["cologne1", "grid4x4"], [0], 300.0

    delays: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    runs = [
        (scenario, controller, seed)
        for scenario in args.scenarios
        for seed in args.seeds
        for controller in args.controllers
    ]
    floors: dict[str, float] = {}
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        futures = {pool.submit(_run, *run, args.seconds, args.demand_scale): run for run in runs}
        if not args.no_floor:
            for scenario in args.scenarios:
                task = pool.submit(_floor, scenario, args.seconds, args.demand_scale)
                futures[task] = (scenario, "capacity floor", 0)
        for done, future in enumerate(as_completed(futures), 1):
            figures = future.result()
            print(json.dumps(figures), flush=True)
            if figures.get("floor"):
                floors[figures["scenario"]] = figures["unfinished_pct_at_least"]
            else:
                delays[(figures["scenario"], figures["controller"])].append(figures)
            print(f"[{done}/{len(futures)}] {futures[future]}", file=sys.stderr, flush=True)

    summaries: dict[tuple[str, str], dict[str, Any]] = {}
    for scenario in args.scenarios:
        fixed = delays.get((scenario, "fixed"))
        for controller in args.controllers:
            found = delays[(scenario, controller)]
            mean = statistics.fmean(f["average_delay_s"] for f in found)
            summary: dict[str, Any] = {
                "summary": True,
                "scenario": scenario,
                "controller": controller,
                "seeds": len(found),
                "seconds": args.seconds,
                "demand_scale": args.demand_scale,
                "average_delay_s": round(mean, 2),
                "delay_stdev_s": round(statistics.pstdev(f["average_delay_s"] for f in found), 2),
                "average_trip_time_s": round(
                    statistics.fmean(f["average_trip_time_s"] for f in found), 2
                ),
                "throughput": round(statistics.fmean(f["throughput"] for f in found), 1),
                "not_finished_pct": round(
                    100
                    * sum(f["not_finished"] for f in found)
                    / max(sum(f["vehicles"] for f in found), 1),
                    2,
                ),
                "stuck_pct": round(
                    100
                    * sum(f["stuck"] for f in found)
                    / max(sum(f["vehicles"] for f in found), 1),
                    2,
                ),
            }
            if scenario in floors:
                summary["unfinished_floor_pct"] = floors[scenario]
            if fixed:
                base = statistics.fmean(f["average_delay_s"] for f in fixed)
                summary["vs_fixed_pct"] = round(100 * (mean - base) / base, 1) if base else None
            summaries[(scenario, controller)] = summary
            print(json.dumps(summary), flush=True)
    for line in overall(summaries, args.scenarios, args.controllers):
        print(json.dumps(line), flush=True)


def overall(
    summaries: dict[tuple[str, str], dict[str, Any]],
    scenarios: list[str],
    controllers: list[str],
) -> list[dict[str, Any]]:
    """Per controller over all scenarios: the issue's targets in one line each.

    ``vs_fixed_pct`` is the mean over scenarios of each scenario's change against fixed time;
    ``at_or_below_max_pressure`` whether its delay is <= max-pressure's on every scenario.
    """
    lines = []
    for controller in controllers:
        rows = [summaries[(s, controller)] for s in scenarios]
        line: dict[str, Any] = {"overall": True, "controller": controller}
        changes = [r["vs_fixed_pct"] for r in rows if r.get("vs_fixed_pct") is not None]
        if len(changes) == len(rows):
            line["vs_fixed_pct"] = round(statistics.fmean(changes), 1)
        if "max-pressure" in controllers:
            line["at_or_below_max_pressure"] = all(
                r["average_delay_s"] <= summaries[(s, "max-pressure")]["average_delay_s"]
                for s, r in zip(scenarios, rows, strict=True)
            )
        line["worst_not_finished_pct"] = max(r["not_finished_pct"] for r in rows)
        line["worst_stuck_pct"] = max(r["stuck_pct"] for r in rows)
        servable = [r["stuck_pct"] for r in rows if r.get("unfinished_floor_pct", 0) == 0]
        if len(servable) < len(rows):
            line["worst_stuck_pct_where_servable"] = max(servable, default=None)
        lines.append(line)
    return lines


if __name__ == "__main__":
    main()
