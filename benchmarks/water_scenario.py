"""Scenario generator benchmark: wall time and size of a generated scenario per shipped network.

Generates one scenario per network (``--days``, ``--leaks``, optionally ``--quality``) into
``--work`` and prints one JSON object on stdout: per network the seconds taken, sensors, rows,
leaks with their peak flows (L/s) and EPANET's unbalanced steps. Progress goes to stderr.

    python benchmarks/water_scenario.py                              # 6 networks, 30 days
    python benchmarks/water_scenario.py --networks ky10 --quality    # the big case
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from civica.domains.water.network import SHIPPED_NETWORKS
from civica.domains.water.scenario import ScenarioConfig, generate

console = Console(stderr=True)


def run(name: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Generate one scenario and describe it."""
    config = ScenarioConfig(
        name, days=args.days, leaks=args.leaks, seed=args.seed, quality=args.quality
    )
    out = work / name
    started = time.perf_counter()
    truth = generate(config, out)
    seconds = time.perf_counter() - started
    with (out / "readings.csv").open() as handle:
        header = handle.readline().rstrip("\n").split(",")
        rows = sum(1 for _ in handle)
    return {
        "seconds": round(seconds, 1),
        "sensors": len(header) - 1,
        "rows": rows,
        "leak_peak_lps": [round(leak["peak_flow"] * 1000, 2) for leak in truth["leaks"]],
        "injections": len(truth["injections"]),
        "unbalanced_steps": truth["unbalanced_steps"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--networks", nargs="+", default=list(SHIPPED_NETWORKS))
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--leaks", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--quality", action="store_true")
    parser.add_argument("--work", type=Path, default=None, help="Keep scenarios here.")
    args = parser.parse_args()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        for name in args.networks:
            console.print(f"{name}: {args.days} days ...")
            results[name] = run(name, args, work)
            console.print(f"{name}: {results[name]['seconds']} s")
    print(json.dumps({"days": args.days, "quality": args.quality, "networks": results}, indent=2))


if __name__ == "__main__":
    main()
