"""Water-quality event detection benchmark: generated contamination scenarios, scored.

Generates ``--per-network`` scenarios with ``--quality`` (contaminant injections at random nodes
and times) on each of ``--networks`` through the scenario generator's Python API, caches them
under ``--work``, runs the quality detector on each (it reads network.inp, sensors.csv and
readings.csv, never truth.json; one configuration for every network) and scores its events.
Prints one JSON object on stdout: per network and overall, detection rate (all injections and
observable ones only), median time to detect (h) and false alarms per week; progress on stderr.

    python benchmarks/water_quality.py                      # 3 networks x 17 scenarios x 14 days
    python benchmarks/water_quality.py --per-network 3 --days 7    # smoke run
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from civica.domains.water.quality import QualityConfig, detect_scenario
from civica.domains.water.quality_scoring import GRACE_H, QualityScore, score_scenario
from civica.domains.water.scenario import ScenarioConfig, generate, is_current

TARGET_DETECTION = 0.90
TARGET_FALSE_ALARMS_PER_WEEK = 1.0
SEED_BASE = 1000  # benchmark seeds: apart from the small seeds used while developing


@dataclass(frozen=True)
class Job:
    """One scenario of the benchmark."""

    network: str
    seed: int
    days: int
    leaks: int
    directory: Path


def run_job(job: Job) -> tuple[Job, QualityScore, float, float]:
    """Generate (unless cached) and detect one scenario; return its score and the seconds spent."""
    started = time.perf_counter()
    if not is_current(job.directory):
        partial = job.directory.with_name(job.directory.name + ".partial")
        config = ScenarioConfig(
            network=job.network, days=job.days, leaks=job.leaks, seed=job.seed, quality=True
        )
        generate(config, partial)
        if job.directory.exists():  # left over from an interrupted run, without its truth
            shutil.rmtree(job.directory)
        partial.rename(job.directory)
    generated = time.perf_counter()
    events = [e.to_json() for e in detect_scenario(job.directory, QualityConfig())]
    (job.directory / "events.json").write_text(json.dumps(events, indent=1) + "\n")
    score = score_scenario(job.directory, events, grace_h=GRACE_H)
    return job, score, generated - started, time.perf_counter() - generated


REACH_SIGMAS = (1.0, 2.0, 3.0, 5.0)


def reach(jobs: list[Job]) -> dict[str, Any]:
    """How many injections move their most reached station by at least 1, 2, 3 and 5 noise
    deviations (truth.json's ``peak_station_sigmas``): a detector cannot be expected to find
    one that no station sees above its noise, so this bounds the detection rate."""
    peaks = [
        float(injection["peak_station_sigmas"])
        for job in jobs
        for injection in json.loads((job.directory / "truth.json").read_text())["injections"]
    ]
    return {
        "injections": len(peaks),
        "share_moving_a_station_by_sigmas": {
            f"{k:g}": round(sum(p >= k for p in peaks) / len(peaks), 3) if peaks else None
            for k in REACH_SIGMAS
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path(".bench/water_quality"))
    parser.add_argument("--networks", default="Net2,Net3,ky4")
    parser.add_argument("--per-network", type=int, default=17)
    parser.add_argument("--days", type=int, default=14)
    parser.add_argument("--leaks", type=int, default=0, help="Leaks per scenario as well.")
    parser.add_argument("--jobs", type=int, default=2, help="Worker processes.")
    parser.add_argument(
        "--first-seed", type=int, default=SEED_BASE, help="Seeds used: first-seed onwards."
    )
    parser.add_argument("--details", action="store_true", help="Also print every scenario.")
    args = parser.parse_args()
    console = Console(stderr=True)
    networks = [n.strip() for n in args.networks.split(",") if n.strip()]
    args.work.mkdir(parents=True, exist_ok=True)
    jobs = [
        Job(
            net,
            args.first_seed + i,
            args.days,
            args.leaks,
            args.work / f"{net}-d{args.days}-l{args.leaks}-s{args.first_seed + i}",
        )
        for i in range(args.per_network)
        for net in networks
    ]
    results: list[tuple[Job, QualityScore, float, float]] = []
    started = time.perf_counter()
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with (
        Progress(*columns, console=console) as bar,
        multiprocessing.get_context("spawn").Pool(args.jobs) as pool,
    ):
        task = bar.add_task("Quality scenarios", total=len(jobs))
        for result in pool.imap_unordered(run_job, jobs):
            results.append(result)
            bar.advance(task)
    per_network: dict[str, QualityScore] = {}
    results.sort(key=lambda r: (r[0].network, r[0].seed))
    for job, score, _, _ in results:
        per_network[job.network] = (
            per_network[job.network] + score if job.network in per_network else score
        )
    overall = sum(per_network.values(), start=QualityScore(0, 0, 0, 0, (), 0, 0.0, GRACE_H))
    report: dict[str, Any] = {
        "benchmark": "water_quality",
        "scenarios": len(jobs),
        "reach": reach([job for job, *_ in results]),
        "networks": {n: per_network[n].to_json(details=False) for n in networks},
        "overall": overall.to_json(details=False),
        "targets": {
            "detection_rate_observable": TARGET_DETECTION,
            "false_alarms_per_week": TARGET_FALSE_ALARMS_PER_WEEK,
            "met": bool(
                (overall.detection_rate_observable or 0.0) >= TARGET_DETECTION
                and (overall.false_alarms_per_week or 0.0) <= TARGET_FALSE_ALARMS_PER_WEEK
            ),
        },
        "config": {
            "days": args.days,
            "leaks": args.leaks,
            "per_network": args.per_network,
            "grace_h": GRACE_H,
            "detector": QualityConfig().__dict__,
        },
        "seconds": {
            "wall": round(time.perf_counter() - started, 1),
            "generate": round(sum(r[2] for r in results), 1),
            "detect_and_score": round(sum(r[3] for r in results), 1),
        },
    }
    if args.details:
        report["scenarios_detail"] = [
            {"network": j.network, "seed": j.seed} | score.to_json() for j, score, _, _ in results
        ]
    json.dump(report, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
