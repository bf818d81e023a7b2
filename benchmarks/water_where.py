"""What limits leak localisation: the detector's residual error, or its model of a leak?

For each scenario of the leak benchmark (same networks and seeds as ``water_leaks.py``) this
also generates its leak-free twin: the same seed with no leak, so the same demands, sensor
noise and lost readings. Told when each leak runs (the benchmark's ``localisation_given_time``
rule), the detector localises five versions of the evidence, its residual medians over the
longest window (24 h) at that step:

* ``actual``: the scenario's own (what ``water_leaks.py`` reports);
* ``true_effect_no_noise``: scenario minus twin, the leak's real effect on every sensor as
  the detector's pipeline sees it, without any residual error;
* ``linear_with_noise``: the detector's own linearised model of a leak on the true pipe, at
  the leak's true mean outflow, plus the twin's residuals (the real residual error);
* ``linear_half_noise`` and ``linear_tenth_noise``: the same with the residual error halved
  or cut to a tenth (and the detector told so: its noise estimates scaled alike).

The share of leaks placed within 300 m under each version bounds what better modelling
(``true_effect_no_noise``: perfect noise, the real physics) or better sensors (the linear
versions: a perfect leak model, real noise) could gain. ``--sensors N`` places N pressure
loggers instead of the generator's default (a few dozen), for the question "how many loggers
would a utility need?". Prints one JSON object on stdout; progress on stderr.

    python benchmarks/water_where.py                        # 54 scenarios, 14 days
    python benchmarks/water_where.py --only ky4 --sensors 100   # its ky4 scenarios, 100 loggers
    python benchmarks/water_where.py --networks my_town.inp --sensors 60   # your own model
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from civica.domains.water.files import load_scenario
from civica.domains.water.leaks import (
    DetectorSettings,
    decision_step,
    gather_evidence,
    localise_at,
    window_medians,
)
from civica.domains.water.network import link_distance, network_graph
from water_leaks import (  # the sibling script (run from benchmarks/)
    Job,
    ensure,
    given_time,
    given_times,
    run_all,
    scenario_arguments,
    scenario_plan,
)

VERSIONS = (
    "actual",
    "true_effect_no_noise",
    "linear_with_noise",
    "linear_half_noise",
    "linear_tenth_noise",
)


def run(job: Job) -> dict[str, Any]:
    """Distances (m) from each leak to the pipe named under every version of the evidence."""
    settings = DetectorSettings()
    hours = max(settings.windows_h)
    leaky_dir, twin_dir = ensure(job), ensure(replace(job, leaks=0))
    leaky, twin = load_scenario(leaky_dir), load_scenario(twin_dir)
    evidence = gather_evidence(leaky, 2, settings)
    calm = gather_evidence(twin, 2, settings)
    if evidence.loggers != calm.loggers or len(evidence.times) != len(calm.times):
        raise RuntimeError(f"{twin_dir.name} is not the twin of {leaky_dir.name}")
    per_hour = evidence.per_hour
    own = np.nan_to_num(window_medians(evidence, evidence.residual, hours))
    noise = np.nan_to_num(window_medians(evidence, calm.residual, hours))
    signature = evidence.signature.mean(axis=0)  # a full day's window: every hour alike
    flows = pd.read_csv(leaky_dir / "leak_flows.csv", index_col=0, parse_dates=True)
    pipes, times = given_times(leaky_dir)
    steps = [decision_step(evidence, when, settings) for when in times]
    outflow = [
        float(np.nanmean(flows[pipe].to_numpy()[max(0, t - hours * per_hour + 1) : t + 1]))
        for pipe, t in zip(pipes, steps, strict=True)
    ]
    linear = [
        q * signature[:, evidence.pipes.index(pipe)] for pipe, q in zip(pipes, outflow, strict=True)
    ]
    # (medians, how much of the residual error is left): the detector is told the smaller
    # error too, or it would not trust the cleaner evidence any more than the real one
    versions: dict[str, tuple[list[np.ndarray] | None, float]] = {
        "actual": (None, 1.0),
        "true_effect_no_noise": ([own[t] - noise[t] for t in steps], 1.0),
    }
    for name, k in (("with", 1.0), ("half", 0.5), ("tenth", 0.1)):
        versions[f"linear_{name}_noise"] = (
            [s + k * noise[t] for s, t in zip(linear, steps, strict=True)],
            k,
        )
    graph = network_graph(leaky.network)
    found: dict[str, Any] = {"network": job.network, "scenario": leaky_dir.name}
    # The studies drop the detector's cap on pressure rises (a guard against outliers, which
    # they do not have): it would clip a clean signature's rises.
    uncapped = replace(settings, positive_cap=float("inf"))
    for name, (medians, k) in versions.items():
        told = replace(evidence, sigma=evidence.sigma * k, slow=evidence.slow * k)
        chosen = settings if medians is None else uncapped
        named = localise_at(told, leaky.network, times, chosen, medians)
        found[name] = [link_distance(graph, p, n) for p, n in zip(pipes, named, strict=True)]
    found["outflow_l_s"] = [round(1000 * q, 3) for q in outflow]
    return found


def shares(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Per version: the share of leaks placed within 300 m and the median distance (m)."""
    out: dict[str, Any] = {"leaks": sum(len(r["actual"]) for r in results)}
    for name in VERSIONS:
        placed = given_time(results, name)
        out[name] = {k: placed[k] for k in ("within_300m", "median_m")}
    return out


LABELS = {
    "actual": "the detector",
    "true_effect_no_noise": "real leak effect,\nno residual error",
    "linear_with_noise": "perfect leak model,\nreal error",
    "linear_half_noise": "perfect model,\nhalf the error",
    "linear_tenth_noise": "perfect model,\na tenth of the error",
}
RECALL_FOR_F1_085 = 0.85 / (2 - 0.85)  # F1 = 2PR/(P+R) with P = 1


def chart(output: dict[str, Any], groups: list[str], path: Path) -> None:
    """Grouped bars: per network, the share placed within 300 m under each version, against
    the recall F1 0.85 needs even without a false alarm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 4.8))
    width = 0.8 / len(VERSIONS)
    for k, name in enumerate(VERSIONS):
        heights = [output[g][name]["within_300m"] or 0.0 for g in groups]
        xs = [i + (k - (len(VERSIONS) - 1) / 2) * width for i in range(len(groups))]
        ax.bar(xs, heights, width, label=LABELS[name])
    ax.axhline(RECALL_FOR_F1_085, color="black", linestyle="--", linewidth=1)
    ax.text(len(groups) - 0.5, RECALL_FOR_F1_085 + 0.02, "recall F1 0.85 needs", ha="right")
    ax.set_xticks(range(len(groups)), [f"{g}\n({output[g]['leaks']} leaks)" for g in groups])
    ax.set_ylim(0, 1)
    ax.set_ylabel("leaks placed within 300 m, told when")
    loggers = output["pressure_loggers"]
    ax.set_title(f"What limits leak localisation ({output['scenarios']} scenarios, {loggers})")
    ax.legend(fontsize=8, ncols=3, loc="upper left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = scenario_arguments(__doc__)
    parser.add_argument("--sensors", type=int, default=None, help="pressure loggers")
    parser.add_argument("--only", default=None, help="of the scenarios, only this network's")
    parser.add_argument("--png", type=Path, default=None, help="also draw the shares here")
    args = parser.parse_args(argv)
    networks = [n.strip() for n in args.networks.split(",") if n.strip()]
    args.work.mkdir(parents=True, exist_ok=True)
    # The leak benchmark's scenarios (same seeds, networks and leak counts) when --networks
    # is its default; --only keeps one network's of them.
    jobs = [
        job
        for job in scenario_plan(networks, args.scenarios, args.days, args.work, args.sensors)
        if args.only in (None, job.network)
    ]
    if args.only is not None:
        networks = [args.only]
    started = time.perf_counter()
    results = run_all(run, jobs, "Scenarios and their leak-free twins", args.jobs)
    output: dict[str, Any] = {
        "scenarios": len(results),
        "days": args.days,
        "pressure_loggers": f"{args.sensors} loggers" if args.sensors else "default loggers",
        "overall": shares(results),
    }
    for net in networks:
        output[net] = shares([r for r in results if r["network"] == net])
    output["wall_seconds"] = round(time.perf_counter() - started, 1)
    if args.png is not None:
        chart(output, [*networks, "overall"], args.png)
    json.dump(output, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
