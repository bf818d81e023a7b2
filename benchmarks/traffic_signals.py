"""Signal control on the RESCO scenarios: fixed vs Webster vs max-pressure vs queue-pressure.

Prints one JSON object per run (JSON lines) and a summary object per scenario and controller
(mean over seeds) on stdout; progress goes to stderr.

    python benchmarks/traffic_signals.py                    # 5 scenarios x 3 seeds x 3600 s
    python benchmarks/traffic_signals.py --quick            # cologne1 and grid4x4, 300 s, 1 seed
    python benchmarks/traffic_signals.py --scenarios cologne1 grid4x4 --seeds 0 1 2 --jobs 4

Each run is its own SUMO process (same eclipse-sumo build for every controller); runs go in
parallel over ``--jobs`` worker processes. Metrics follow RESCO: average delay = SUMO timeLoss
+ departDelay per vehicle, vehicles still driving or never inserted at the end counted.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any

from civica.domains.traffic.control import controller_names, run_control
from civica.domains.traffic.engine import SumoOptions
from civica.domains.traffic.scenarios import resco_scenario

SCENARIOS = ("grid4x4", "arterial4x4", "cologne1", "cologne3", "ingolstadt1")


def _run(scenario: str, controller: str, seed: int, seconds: float) -> dict[str, Any]:
    started = time.perf_counter()
    result = run_control(resco_scenario(scenario), controller, SumoOptions(seconds, seed=seed))
    figures = result.as_dict()
    figures.pop("hand_backs")
    figures["wall_s"] = round(time.perf_counter() - started, 1)
    return figures


def main(argv: list[str] | None = None) -> None:
    """Run the grid of scenarios x controllers x seeds and print JSON lines."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 scenarios, 300 s")
    parser.add_argument("--scenarios", nargs="+", default=list(SCENARIOS))
    parser.add_argument("--controllers", nargs="+", default=list(controller_names()))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--seconds", type=float, default=3600.0)
    parser.add_argument("--jobs", type=int, default=4)
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
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        futures = {pool.submit(_run, *run, args.seconds): run for run in runs}
        for done, future in enumerate(as_completed(futures), 1):
            figures = future.result()
            print(json.dumps(figures), flush=True)
            delays[(figures["scenario"], figures["controller"])].append(figures)
            print(f"[{done}/{len(runs)}] {futures[future]}", file=sys.stderr, flush=True)

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
            }
            if fixed:
                base = statistics.fmean(f["average_delay_s"] for f in fixed)
                summary["vs_fixed_pct"] = round(100 * (mean - base) / base, 1) if base else None
            print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
