"""Minimum night flow (MNF): the classic leak-detection baseline the detector must beat.

At night almost nobody draws water, so the smallest inflow of the night is mostly leakage; a
new leak raises it. Per day: the consumption the inlet meters show (flow out of reservoirs and
tanks, plus the model's unmetered injections such as wells; hourly mean), its minimum between
02:00 and 04:00 UTC. The leak-free days give the normal level and spread (spread floored at
5 % of the level: two or three nights cannot estimate it). A night more than ``k`` spreads
above normal raises an alarm at 04:00 for the excess flow; that night's level then becomes the
new normal, so a second leak needs a second step.

MNF cannot say where a leak is. The report names the pipe at the network's centre of demand
(the pipe nearest the demand-weighted centroid of the junctions), the guess that is on average
closest to a leak that could be anywhere; it will rarely be within 300 m. That is the point of
the baseline: it shows what inflow alone can and cannot do.

>>> detect_mnf(load_scenario("scenario"))  # doctest: +SKIP
[{'pipe': '123', 'detected_at': '2026-01-08T04:00:00Z', 'estimated_flow': 0.0123}]
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from civica.domains.water import network as engine
from civica.domains.water.files import Scenario
from civica.domains.water.network import WaterInputError

NIGHT_HOURS = (2, 4)  # UTC hours [start, end) of the night window
SPREAD_FLOOR = 0.05  # of the normal night flow


def metered_consumption(scenario: Scenario) -> pd.Series:
    """Consumption (m³/s) per step: metered flow out of every reservoir and tank into the
    network, short gaps interpolated. Every link touching a source needs a meter."""
    wn = scenario.network
    meters = {scenario.element(s): s for s in scenario.of_kind("flow")}
    inlets = [
        name
        for name in wn.link_name_list
        if {wn.get_link(name).start_node_name, wn.get_link(name).end_node_name}
        & set(engine.source_nodes(wn))
    ]
    signs = engine.inlet_signs(wn, inlets)
    counted = [link for link, sign in signs.items() if sign]
    missing = [link for link in counted if link not in meters]
    if not counted or missing:
        where = missing[0] if missing else "any inlet"
        raise WaterInputError(
            f"{scenario.directory}: no flow meter on inlet link {where}; the water balance "
            "(inflow from reservoirs and tanks) cannot be closed"
        )
    consumption = pd.Series(0.0, index=scenario.readings.index)
    for link in counted:
        flow = scenario.readings[meters[link]]
        if flow.isna().all():
            raise WaterInputError(
                f"{scenario.directory}: flow meter {meters[link]} has no readings"
            )
        consumption += signs[link] * flow.interpolate(limit_direction="both")
    return consumption


def consumption_and_model(scenario: Scenario) -> tuple[pd.Series, np.ndarray]:
    """The town's consumption (m³/s) per step: metered inflow plus the model's own unmetered
    injections (negative demands such as Net2's well, which run as modelled), and the model's
    own consumption (its positive demands, m³/s) at the same steps."""
    metered = metered_consumption(scenario)
    seconds = np.arange(len(metered)) * scenario.step_s
    demand = np.asarray(engine.expected_demand(scenario.network, seconds), dtype=float)
    injected = -np.clip(demand, None, 0.0).sum(axis=1)
    return metered + injected, np.clip(demand, 0.0, None).sum(axis=1)


def night_minima(scenario: Scenario) -> pd.Series:
    """Minimum hourly-mean consumption (m³/s) in the night window, per day."""
    consumption, _ = consumption_and_model(scenario)
    hourly = consumption.rolling(max(1, 3600 // scenario.step_s), min_periods=1).mean()
    night = hourly[(hourly.index.hour >= NIGHT_HOURS[0]) & (hourly.index.hour < NIGHT_HOURS[1])]
    return night.groupby(night.index.normalize()).min().dropna()


def detect_mnf(scenario: Scenario, leak_free_days: int = 2, k: float = 3.0) -> list[dict[str, Any]]:
    """Leak reports from the minimum night flow (see the module docstring)."""
    minima = night_minima(scenario)
    first = scenario.readings.index[0].normalize()
    learn = minima[minima.index < first + pd.Timedelta(days=leak_free_days)]
    if learn.empty:
        raise WaterInputError(f"{scenario.directory}: no night flow on the leak-free days")
    normal = float(learn.mean())
    spread = max(float(learn.std(ddof=1)) if len(learn) > 1 else 0.0, SPREAD_FLOOR * normal)
    pipe = engine.demand_centre_pipe(scenario.network)
    reports = []
    for day, value in minima[minima.index >= first + pd.Timedelta(days=leak_free_days)].items():
        if value > normal + k * spread:
            at = day + pd.Timedelta(hours=NIGHT_HOURS[1])
            reports.append(
                {
                    "pipe": pipe,
                    "detected_at": at.strftime("%Y-%m-%dT%H:%M:%SZ"),
                    "estimated_flow": round(float(value - normal), 6),
                }
            )
            normal = float(value)
    return reports
