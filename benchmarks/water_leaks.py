"""Leak detection benchmark: generated leak scenarios, the model-based detector against MNF.

Generates ``--scenarios`` scenarios (1-3 leaks each, ``--days`` long) spread over ``--networks``
through the scenario generator's Python API, caches them under ``--work``, runs the leak
detector (``civica water detect``: reads network.inp, sensors.csv and readings.csv, never
truth.json; one configuration for every network) and the minimum-night-flow baseline on each,
and scores both with the BattLeDIM-style rules of ``civica water score`` (a hit must name a pipe
within 300 m while the leak runs). Then it times the detector alone on a 30-day ky10 scenario.

Prints one JSON object on stdout: per network and overall F1, precision, recall, median
localisation error (m), median detection delay for leaks of at least 1 L/s (h) and the € score,
the same for MNF, the targets, and ``ky10_30day_detect_seconds``. Two diagnostic figures split
"when" from "where": ``reported_in_window`` (leaks with a report inside their window, however
far) and ``localisation_given_time`` (the share of leaks the detector places within 300 m when
told when the leak runs, and the median distance). Progress goes to stderr.

    python benchmarks/water_leaks.py                              # 54 scenarios x 14 days
    python benchmarks/water_leaks.py --scenarios 6 --days 7 --no-timing   # smoke run
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from civica.domains.water.files import Scenario, load_scenario
from civica.domains.water.leaks import (
    DetectorSettings,
    Evidence,
    detect_leaks,
    gather_evidence,
    localise_at,
    scan,
)
from civica.domains.water.network import link_distance, network_graph
from civica.domains.water.night_flow import detect_mnf
from civica.domains.water.scenario import ScenarioConfig, generate, is_current
from civica.domains.water.scoring import score_files

SEED_BASE = 5000  # benchmark seeds: apart from the small seeds used while developing
TARGETS = {
    "f1": 0.85,
    "median_localisation_m": 300.0,
    "median_delay_h_large": 6.0,
    "f1_margin_over_mnf": 0.25,
    "ky10_30day_detect_seconds": 60.0,
}


@dataclass(frozen=True)
class Job:
    """One scenario of the benchmark."""

    network: str
    seed: int
    days: int
    leaks: int
    work: Path
    sensors: int | None = None  # pressure loggers; None: the generator's default

    @property
    def directory(self) -> Path:
        loggers = "" if self.sensors is None else f"_p{self.sensors}"
        name = f"{Path(self.network).stem}_d{self.days}_l{self.leaks}_s{self.seed}{loggers}"
        return self.work / name


def ensure(job: Job) -> Path:
    """Generate the scenario unless a complete copy by the current generator is cached."""
    if not is_current(job.directory):
        config = ScenarioConfig(
            network=job.network,
            days=job.days,
            leaks=job.leaks,
            seed=job.seed,
            sensors=job.sensors,
        )
        generate(config, job.directory)
    return job.directory


def run(job: Job) -> dict[str, Any]:
    """Generate (or reuse) a scenario, run both detectors and score them."""
    directory = ensure(job)
    scenario = load_scenario(directory)
    settings = DetectorSettings()
    started = time.perf_counter()
    # What detect_leaks does, in its two steps: the evidence serves the figure below too.
    evidence = gather_evidence(scenario, 2, settings)
    reports = [r.to_json() for r in scan(evidence, scenario.network, settings)]
    seconds = time.perf_counter() - started
    return {
        "network": job.network,
        "scenario": directory.name,
        "detect_seconds": seconds,
        "detector": score_files(directory, None, reports),
        "mnf": score_files(directory, None, detect_mnf(scenario)),
        "localisation_given_time_m": localisation_given_time(directory, scenario, evidence),
    }


def localisation_given_time(directory: Path, scenario: Scenario, evidence: Evidence) -> list[float]:
    """Per leak, how far (m) the pipe the detector names is when told the leak runs (see
    :func:`given_times`). This separates "where" from "when": a leak can only count as found
    if this is within 300 m."""
    pipes, times = given_times(directory)
    named = localise_at(evidence, scenario.network, times)
    graph = network_graph(scenario.network)
    return [link_distance(graph, p, n) for p, n in zip(pipes, named, strict=True)]


def given_times(directory: Path) -> tuple[list[str], list[datetime]]:
    """Each leak that delivers water and when to ask where it is: at the end of the first day
    after its outflow reaches 80 % of its peak (or at its end)."""
    truth = json.loads((directory / "truth.json").read_text())
    flows = pd.read_csv(directory / "leak_flows.csv", index_col=0, parse_dates=True)
    pipes, times = [], []
    for leak in truth["leaks"]:
        flow = flows[leak["pipe"]].fillna(0.0)
        if flow.max() <= 0:
            continue
        developed = flow.index[int(np.argmax(flow.to_numpy() >= 0.8 * flow.max()))]
        pipes.append(leak["pipe"])
        when = min(developed + pd.Timedelta(days=1), pd.Timestamp(leak["end"]))
        times.append(when.to_pydatetime())
    return pipes, times


def summary(results: list[dict[str, Any]], method: str) -> dict[str, Any]:
    """Pooled figures over scenarios: counts summed, medians over all matched leaks."""
    scores = [r[method] for r in results]
    tp = sum(s["true_positives"] for s in scores)
    fp = sum(s["false_positives"] for s in scores)
    fn = sum(s["false_negatives"] for s in scores)
    precision = tp / (tp + fp) if tp + fp else None
    recall = tp / (tp + fn) if tp + fn else None
    f1 = 2 * precision * recall / (precision + recall) if precision and recall else 0.0
    found = [leak for s in scores for leak in s["per_leak"] if leak["detected_at"] is not None]
    distances = [leak["distance_m"] for leak in found]
    delays = [leak["delay_h"] for leak in found if leak["peak_flow"] >= 0.001]
    return {
        "scenarios": len(scores),
        "leaks": tp + fn,
        "true_positives": tp,
        "false_positives": fp,
        "false_negatives": fn,
        "f1": round(f1, 3),
        "precision": None if precision is None else round(precision, 3),
        "recall": None if recall is None else round(recall, 3),
        "median_localisation_m": _median(distances),
        "median_delay_h_large": _median(delays),
        "reported_in_window": sum(s["reported_in_window"] for s in scores),
        "score_eur": round(sum(s["score_eur"] for s in scores), 2),
        "max_score_eur": round(sum(s["max_score_eur"] for s in scores), 2),
    }


def given_time(
    results: list[dict[str, Any]], key: str = "localisation_given_time_m"
) -> dict[str, Any]:
    """Localisation with the leak's time given (distances, m, under ``key`` in each result):
    share within 300 m and the median distance."""
    distances = [d for r in results for d in r[key]]
    finite = [d for d in distances if math.isfinite(d)]
    return {
        "leaks": len(distances),
        "within_300m": round(sum(d <= 300.0 for d in distances) / len(distances), 3)
        if distances
        else None,
        "median_m": _median(finite),
    }


def _median(values: list[float]) -> float | None:
    return round(float(statistics.median(values)), 2) if values else None


def timing(work: Path, console: Console) -> dict[str, Any]:
    """Time the detector alone on a 30-day ky10 scenario (generated once, cached)."""
    job = Job("ky10", SEED_BASE - 1, 30, 3, work)
    with console.status("Generating the 30-day ky10 scenario (once; about 2 minutes)"):
        ensure(job)
    scenario = load_scenario(job.directory)
    with console.status("Timing the detector on 30 days of ky10"):
        started = time.perf_counter()
        reports = [r.to_json() for r in detect_leaks(scenario)]
        seconds = time.perf_counter() - started
    return {
        "ky10_30day_detect_seconds": round(seconds, 1),
        "ky10_30day": {
            "detector": summary(
                [{"detector": score_files(job.directory, None, reports)}], "detector"
            ),
        },
    }


def scenario_plan(
    networks: list[str], count: int, days: int, work: Path, sensors: int | None = None
) -> list[Job]:
    """The benchmark's scenarios: networks in turn, seeds from ``SEED_BASE``, 1-3 leaks."""
    return [
        Job(
            networks[i % len(networks)],
            SEED_BASE + i,
            days,
            1 + (i // len(networks)) % 3,
            work,
            sensors,
        )
        for i in range(count)
    ]


def run_all(
    work: Callable[[Any], dict[str, Any]], items: list[Any], description: str, jobs: int
) -> list[dict[str, Any]]:
    """``work`` on every item over ``jobs`` processes, with a progress bar on stderr."""
    results: list[dict[str, Any]] = []
    with (
        Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=Console(stderr=True),
        ) as bar,
        multiprocessing.get_context("spawn").Pool(jobs) as pool,
    ):
        task = bar.add_task(description, total=len(items))
        for result in pool.imap_unordered(work, items):
            results.append(result)
            bar.advance(task)
    return results


def scenario_arguments(doc: str) -> argparse.ArgumentParser:
    """The options every leak study shares: where to cache, how many scenarios, how long,
    on which networks, over how many processes."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path(".bench/water"))
    parser.add_argument("--scenarios", type=int, default=54)
    parser.add_argument("--days", type=int, default=14)
    parser.add_argument("--networks", default="Net2,Net3,ky4")
    parser.add_argument("--jobs", type=int, default=2)
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = scenario_arguments(__doc__)
    parser.add_argument("--no-timing", action="store_true", help="skip the 30-day ky10 run")
    args = parser.parse_args(argv)
    networks = [n.strip() for n in args.networks.split(",") if n.strip()]
    args.work.mkdir(parents=True, exist_ok=True)
    jobs = scenario_plan(networks, args.scenarios, args.days, args.work)
    started = time.perf_counter()
    results = run_all(run, jobs, "Leak scenarios (generate, detect, score)", args.jobs)
    console = Console(stderr=True)
    output: dict[str, Any] = {
        "scenarios": len(results),
        "days": args.days,
        "networks": networks,
        "detector": {"overall": summary(results, "detector")},
        "mnf": {"overall": summary(results, "mnf")},
    }
    output["localisation_given_time"] = {"overall": given_time(results)}
    for net in networks:
        mine = [r for r in results if r["network"] == net]
        output["detector"][net] = summary(mine, "detector")
        output["mnf"][net] = summary(mine, "mnf")
        output["localisation_given_time"][net] = given_time(mine)
    output["median_detect_seconds"] = _median([r["detect_seconds"] for r in results])
    if not args.no_timing:
        output.update(timing(args.work, console))
    output["targets"] = TARGETS
    output["wall_seconds"] = round(time.perf_counter() - started, 1)
    json.dump(output, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
