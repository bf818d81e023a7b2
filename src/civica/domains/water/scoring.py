"""Score leak reports against a scenario's truth, BattLeDIM style.

Rules, applied to the reports in time order:

- A report is a **true positive** when it falls inside a leak's window [start, end] (inclusive)
  and names a pipe within 300 m of the leaking pipe, measured along the network (shortest path
  over pipe lengths from midpoint to midpoint, on the nominal network.inp). If several
  undetected leaks qualify, the nearest is taken.
- A report that would match only leaks already detected is a **duplicate**: ignored, neither a
  hit nor a false alarm.
- Every other report is a **false positive** (false alarm), including a report in a leak's
  window but farther than 300 m from it.
- A leak no report matches is a **false negative**.
- Money: each detected leak saves €0.80 per m³ it would have lost from the report to its end
  (its real outflow from leak_flows.csv; without that file, its peak flow); each false alarm
  costs €500. ``score_eur`` is the savings minus the false-alarm cost; ``max_score_eur`` is what
  reporting every leak the moment it starts would earn.
- Delay is report time minus leak start (hours); localisation error is the network distance
  (m). Besides the medians over true positives, ``median_localisation_time_matched_m`` takes
  each leak's first report inside its window, however far, and ``median_delay_h_large`` covers
  only leaks with a peak flow of at least 1 L/s. ``reported_in_window`` counts the leaks with at
  least one report inside their window, however far: detection without localisation.

>>> from datetime import datetime, UTC
>>> t = lambda h: datetime(2026, 1, 3, h, tzinfo=UTC)
>>> leak = TrueLeak("P1", t(0), t(20), 0.002)
>>> result = score_detections([leak], [Detection("P2", t(2))], lambda a, b: 120.0)
>>> result["true_positives"], result["median_delay_h"], result["median_localisation_m"]
(1, 2.0, 120.0)
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd

from civica.domains.water.network import WaterInputError, distances_from_link, network_graph

MAX_DISTANCE_M = 300.0
EUR_PER_M3 = 0.80
EUR_PER_FALSE_ALARM = 500.0
LARGE_LEAK_M3S = 0.001

Distance = Callable[[str, str], float]


@dataclass(frozen=True)
class TrueLeak:
    """A leak from truth.json; ``flow`` is its real outflow (m³/s) over time when known."""

    pipe: str
    start: datetime
    end: datetime
    peak_flow: float  # m³/s
    flow: pd.Series | None = None

    def volume_after(self, moment: datetime) -> float:
        """Water lost (m³) from ``moment`` to the leak's end."""
        if moment >= self.end:
            return 0.0
        begin = max(moment, self.start)
        if self.flow is None:
            return self.peak_flow * (self.end - begin).total_seconds()
        series = self.flow[(self.flow.index >= begin) & (self.flow.index < self.end)]
        if len(self.flow) < 2 or series.empty:
            return 0.0
        step = float((self.flow.index[1] - self.flow.index[0]).total_seconds())
        return float(series.sum()) * step


@dataclass(frozen=True)
class Detection:
    """One report from a detector's leaks.json."""

    pipe: str
    detected_at: datetime
    estimated_flow: float | None = None  # m³/s


def _median(values: Sequence[float]) -> float | None:
    return float(statistics.median(values)) if values else None


def score_detections(
    leaks: Sequence[TrueLeak], detections: Sequence[Detection], distance: Distance
) -> dict[str, Any]:
    """Apply the scoring rules of this module to reports; returns the metrics as a dict."""
    found: dict[int, tuple[Detection, float]] = {}
    first_in_window: dict[int, tuple[Detection, float]] = {}
    false_alarms = duplicates = 0
    for report in sorted(detections, key=lambda d: d.detected_at):
        active = [i for i, leak in enumerate(leaks) if leak.start <= report.detected_at <= leak.end]
        near: list[tuple[float, int]] = []
        for i in active:
            gap = distance(report.pipe, leaks[i].pipe)
            first_in_window.setdefault(i, (report, gap))
            if gap <= MAX_DISTANCE_M:
                near.append((gap, i))
        fresh = sorted((gap, i) for gap, i in near if i not in found)
        if fresh:
            gap, i = fresh[0]
            found[i] = (report, gap)
        elif near:
            duplicates += 1
        else:
            false_alarms += 1
    tp, fn = len(found), len(leaks) - len(found)
    precision = tp / (tp + false_alarms) if tp + false_alarms else None
    recall = tp / len(leaks) if leaks else None
    f1 = 2 * precision * recall / (precision + recall) if precision and recall else 0.0
    delays = {
        i: (d.detected_at - leaks[i].start).total_seconds() / 3600 for i, (d, _) in found.items()
    }
    savings = sum(
        (EUR_PER_M3 * leaks[i].volume_after(d.detected_at) for i, (d, _) in found.items()), 0.0
    )
    cost = EUR_PER_FALSE_ALARM * false_alarms
    best = sum((EUR_PER_M3 * leak.volume_after(leak.start) for leak in leaks), 0.0)
    return {
        "leaks": len(leaks),
        "reports": len(detections),
        "true_positives": tp,
        "false_positives": false_alarms,
        "false_negatives": fn,
        "duplicates": duplicates,
        "precision": precision,
        "recall": recall,
        "f1": f1 if leaks or detections else None,
        "median_delay_h": _median(list(delays.values())),
        "median_delay_h_large": _median(
            [h for i, h in delays.items() if leaks[i].peak_flow >= LARGE_LEAK_M3S]
        ),
        "median_localisation_m": _median([gap for _, gap in found.values()]),
        "reported_in_window": len(first_in_window),
        "median_localisation_time_matched_m": _median(
            [gap for _, gap in first_in_window.values() if math.isfinite(gap)]
        ),
        "savings_eur": round(savings, 2),
        "false_alarm_cost_eur": round(cost, 2),
        "score_eur": round(savings - cost, 2),
        "max_score_eur": round(best, 2),
        "per_leak": [
            {
                "pipe": leak.pipe,
                "peak_flow": leak.peak_flow,
                "detected_at": found[i][0].detected_at.isoformat() if i in found else None,
                "reported_pipe": found[i][0].pipe if i in found else None,
                "delay_h": delays.get(i),
                "distance_m": found[i][1] if i in found else None,
            }
            for i, leak in enumerate(leaks)
        ],
    }


def _time(text: object, where: str) -> datetime:
    if not isinstance(text, str):
        raise WaterInputError(f"{where}: expected an ISO 8601 UTC time, got {text!r}")
    try:
        value = pd.Timestamp(text)
    except ValueError as err:
        raise WaterInputError(f"{where}: {text!r} is not an ISO 8601 time") from err
    if value.tzinfo is None:
        raise WaterInputError(f"{where}: {text!r} has no timezone (write UTC with 'Z')")
    moment: datetime = value.tz_convert("UTC").to_pydatetime()
    return moment


def parse_detections(raw: object, where: str, links: set[str]) -> list[Detection]:
    """Check a leaks.json document (a list of {pipe, detected_at, estimated_flow})."""
    if not isinstance(raw, list):
        raise WaterInputError(f"{where}: expected a JSON list of leak reports")
    reports = []
    for n, item in enumerate(raw):
        at = f"{where}[{n}]"
        if not isinstance(item, dict) or "pipe" not in item or "detected_at" not in item:
            raise WaterInputError(f"{at}: a report needs 'pipe' and 'detected_at'")
        pipe = str(item["pipe"])
        if pipe not in links:
            raise WaterInputError(f"{at}: pipe {pipe!r} is not a link in network.inp")
        flow = item.get("estimated_flow")
        if flow is not None and not isinstance(flow, int | float):
            raise WaterInputError(f"{at}: estimated_flow must be a number (m3/s)")
        reports.append(Detection(pipe, _time(item["detected_at"], at), flow))
    return reports


def true_leaks(directory: Path, truth: dict[str, Any]) -> list[TrueLeak]:
    """The leaks of truth.json, with their outflow series from leak_flows.csv when present."""
    flows = None
    flows_path = directory / "leak_flows.csv"
    if flows_path.is_file():
        flows = pd.read_csv(flows_path, index_col="timestamp")
        flows.index = pd.to_datetime(flows.index, utc=True, format="ISO8601")
    leaks = []
    for n, item in enumerate(truth["leaks"]):
        at = f"{directory / 'truth.json'}: leaks[{n}]"
        try:
            pipe, peak = str(item["pipe"]), float(item["peak_flow"])
        except (KeyError, TypeError, ValueError) as err:
            raise WaterInputError(f"{at}: needs pipe and peak_flow") from err
        series = flows[pipe] if flows is not None and pipe in flows.columns else None
        leaks.append(
            TrueLeak(pipe, _time(item.get("start"), at), _time(item.get("end"), at), peak, series)
        )
    return leaks


def score_files(
    directory: Path, leaks_file: Path | None, detections: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """Score a leaks.json (or reports already in hand) against ``directory``'s truth."""
    from civica.domains.water.files import load_truth
    from civica.domains.water.network import load_network

    truth = load_truth(directory)
    wn = load_network(directory / "network.inp")
    graph = network_graph(wn)
    links = set(graph.graph["links"])
    if detections is None:
        if leaks_file is None:
            raise WaterInputError("no leak reports to score")
        try:
            raw: object = json.loads(leaks_file.read_text(encoding="utf-8"))
        except FileNotFoundError as err:
            raise WaterInputError(f"{leaks_file}: no such file") from err
        except (OSError, ValueError) as err:
            raise WaterInputError(f"{leaks_file}: not valid JSON: {err}") from err
        where = str(leaks_file)
    else:
        raw, where = detections, "baseline"
    reports = parse_detections(raw, where, links)
    tables: dict[str, dict[str, float]] = {}

    def distance(reported: str, leaking: str) -> float:
        if leaking not in tables:  # few leaks, many reports: one table per leak
            tables[leaking] = distances_from_link(graph, leaking)
        return tables[leaking].get(reported, math.inf)

    return score_detections(true_leaks(directory, truth), reports, distance)


def run_baseline(method: str, directory: Path, leak_free_days: int = 2) -> list[dict[str, Any]]:
    """Reports from a built-in baseline detector run on the scenario's input files."""
    from civica.domains.water.files import load_scenario

    if method != "mnf":
        raise WaterInputError(f"unknown baseline {method!r}")
    from civica.domains.water.night_flow import detect_mnf  # the detector's module, lazily

    return detect_mnf(load_scenario(directory), leak_free_days=leak_free_days)
