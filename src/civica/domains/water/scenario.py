"""Leak scenarios: a pressure-driven EPANET run of a network with hidden leaks, as sensors see it.

The generator writes ``network.inp`` (the nominal model, without leaks), ``readings.csv``,
``sensors.csv``, ``truth.json`` and ``leak_flows.csv`` (the real outflow of every leak per step,
m³/s, for scoring). Everything is reproducible from the seed.

How the "real" network differs from the utility's model (all documented figures):

- Demand: the model's own patterns and demand categories, then per junction a multiplicative
  AR(1) factor (stationary sd 7 %, correlation time 2 h), a per-day factor (sd 3 %), a slow
  weather drift over days (AR(1), phi 0.8, sd 2 %) and weekends at 95 %. Inflows (negative base
  demands) are kept as modelled.
- Pipes: roughness coefficients differ from the model by a factor N(1, 2 %) per pipe.
- Leaks: on pipes chosen with probability proportional to length (not the pipes at tanks or
  reservoirs), never in the first ``leak_free_days``. Size log-uniform between
  max(0.5 L/s, 0.2 % of mean demand) and max(4 x that, 4 % of mean demand). Half abrupt (a
  step), half incipient (a linear ramp over 6 h to 5 days, log-uniform). Half are repaired after
  1-10 days (log-uniform), the rest run to the end. A leak is a demand at a junction splitting
  the pipe at its midpoint; under PDD its outflow falls where pressure falls below the required
  pressure, and the truth records the outflow EPANET delivered.
- Sensors: pressure sd 0.1 m plus a fixed offset per sensor sd 0.1 m, quantised to 0.01 m; flow
  sd 1 % quantised to 0.00001 m³/s (0.01 L/s); tank level sd 0.01 m quantised to 0.001 m. 0.2 % of
  readings are lost at random and each sensor has outages of 1-6 h (about one per 30 days).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from civica.domains.water import network as engine

DAY_S = 86400
DEFAULT_START = datetime(2026, 1, 1, tzinfo=UTC)

# Demand uncertainty (see the module docstring).
NODE_SIGMA = 0.07
NODE_TAU_S = 7200.0
DAY_SIGMA = 0.03
DRIFT_PHI, DRIFT_SIGMA = 0.8, 0.02
WEEKEND_FACTOR = 0.95
ROUGHNESS_SIGMA = 0.02

# Leak sizes and timing.
LEAK_MIN_M3S, LEAK_MIN_SHARE, LEAK_MAX_SHARE = 0.0005, 0.002, 0.04
RAMP_S = (6 * 3600.0, 5 * DAY_S)
REPAIR_S = (1 * DAY_S, 10 * DAY_S)

# Sensor noise: (kind, unit, sigma, relative?, quantum).
PRESSURE_SIGMA, PRESSURE_OFFSET_SIGMA, PRESSURE_QUANTUM = 0.1, 0.1, 0.01
FLOW_REL_SIGMA, FLOW_QUANTUM = 0.01, 1e-5
LEVEL_SIGMA, LEVEL_QUANTUM = 0.01, 0.001
LOSS_RATE, OUTAGES_PER_DAY, OUTAGE_S = 0.002, 1 / 30, (3600, 6 * 3600)


@dataclass(frozen=True)
class ScenarioConfig:
    """What to generate: network (path or shipped name), horizon and leaks."""

    network: str
    days: int = 7
    leaks: int = 2
    seed: int = 0
    step_s: int = 900
    leak_free_days: int = 2
    sensors: int | None = None  # pressure sensors; None scales with the network
    quality: bool = False
    start: datetime = DEFAULT_START

    def check(self) -> None:
        """Raise WaterInputError for settings the generator cannot honour."""
        if self.days < 1:
            raise engine.WaterInputError("--days must be at least 1")
        if not 300 <= self.step_s <= 900 or DAY_S % self.step_s:
            raise engine.WaterInputError("--step must be 300-900 s and divide a day")
        if self.leaks < 0 or self.leak_free_days < 0:
            raise engine.WaterInputError("--leaks and --leak-free-days cannot be negative")
        if self.leaks and self.leak_free_days >= self.days:
            raise engine.WaterInputError("--leak-free-days must be shorter than --days")
        if self.sensors is not None and self.sensors < 1:
            raise engine.WaterInputError("--sensors must be at least 1")


@dataclass(frozen=True)
class Sensor:
    """One sensor as written to sensors.csv."""

    sensor_id: str
    kind: str  # pressure | flow | level | quality
    element: str
    unit: str


@dataclass(frozen=True)
class Leak:
    """A leak to simulate: the pipe, its junction and its requested outflow per step (m³/s)."""

    pipe: str
    node: str
    kind: str
    start_s: int
    end_s: int
    flow: np.ndarray = field(repr=False)


# Called with (stage description, steps done, steps in the stage).
ProgressFn = Callable[[str, float, float], None]


def _silent(stage: str, done: float, total: float) -> None:
    """Progress that goes nowhere."""


def generate(config: ScenarioConfig, out: Path, progress: ProgressFn = _silent) -> dict[str, Any]:
    """Simulate the scenario, write its files to ``out`` and return the truth."""
    config.check()
    path = engine.resolve_network(config.network)
    nominal = engine.load_network(path)
    seeds = np.random.SeedSequence(config.seed).spawn(5)
    rng_demand, rng_pipes, rng_leaks, rng_sensors, rng_quality = (
        np.random.default_rng(s) for s in seeds
    )
    del rng_quality  # reserved so --quality never shifts the other streams
    duration = config.days * DAY_S
    times = np.arange(0, duration, config.step_s)
    progress("Checking the network", 0, 1)
    required = engine.pick_required_pressure(nominal)
    facts = engine.network_facts(nominal)
    demand = realistic_demand(nominal, times, config.start, rng_demand)
    progress("Checking the network", 1, 1)

    truth_model = engine.copy_network(nominal)
    engine.set_timing(truth_model, duration, config.step_s)
    engine.set_pressure_driven(truth_model, required)
    engine.set_demands(truth_model, demand, config.step_s)
    engine.scale_roughness(
        truth_model,
        {p: float(max(0.5, rng_pipes.normal(1, ROUGHNESS_SIGMA))) for p in facts.pipes},
    )
    leaks = draw_leaks(facts, config, demand, rng_leaks)
    for leak in leaks:
        engine.add_leak(truth_model, leak.pipe, leak.node, leak.flow, config.step_s)

    stage = f"Simulating {config.days} days of {path.stem}"
    results = engine.simulate(truth_model, lambda t: progress(stage, t, duration))
    progress(stage, duration, duration)

    sensors = place_sensors(nominal, facts, config.sensors, rng_sensors)
    clean = sensor_values(sensors, results, times)
    readings = add_sensor_noise(clean, sensors, config.step_s, rng_sensors)

    progress("Writing files", 0, 1)
    out.mkdir(parents=True, exist_ok=True)
    written = engine.copy_network(nominal)
    engine.set_timing(written, duration, config.step_s)
    engine.set_pressure_driven(written, required)
    engine.write_network(written, out / "network.inp")
    write_readings(readings, config.start, out / "readings.csv")
    pd.DataFrame([s.__dict__ for s in sensors]).to_csv(out / "sensors.csv", index=False)
    outflow = results.demand.reindex(index=times)[[leak.node for leak in leaks]]
    outflow.columns = pd.Index([leak.pipe for leak in leaks])
    write_readings(outflow.clip(lower=0.0), config.start, out / "leak_flows.csv")
    truth = truth_record(config, path.stem, leaks, outflow)
    (out / "truth.json").write_text(json.dumps(truth, indent=2) + "\n")
    progress("Writing files", 1, 1)
    return truth


def iso(start: datetime, seconds: float) -> str:
    """ISO 8601 UTC with ``Z`` for ``start`` plus ``seconds``."""
    return (start + timedelta(seconds=float(seconds))).strftime("%Y-%m-%dT%H:%M:%SZ")


def realistic_demand(
    wn: engine.Model, times: np.ndarray, start: datetime, rng: np.random.Generator
) -> pd.DataFrame:
    """The model's expected demand (m³/s) times day, drift and per-junction AR(1) factors."""
    base = engine.expected_demand(wn, times)
    days = math.ceil(times[-1] / DAY_S) + 1 if len(times) else 1
    drift = np.zeros(days)
    for d in range(1, days):
        drift[d] = DRIFT_PHI * drift[d - 1] + rng.normal(0, DRIFT_SIGMA)
    weekday = np.array([(start + timedelta(days=d)).weekday() for d in range(days)])
    day_factor = (1 + drift + rng.normal(0, DAY_SIGMA, days)) * np.where(
        weekday >= 5, WEEKEND_FACTOR, 1.0
    )
    step = float(times[1] - times[0]) if len(times) > 1 else 900.0
    phi = math.exp(-step / NODE_TAU_S)
    shocks = rng.normal(0, NODE_SIGMA * math.sqrt(1 - phi**2), (len(times), base.shape[1]))
    noise = np.empty_like(shocks)
    noise[0] = rng.normal(0, NODE_SIGMA, base.shape[1])
    for i in range(1, len(times)):
        noise[i] = phi * noise[i - 1] + shocks[i]
    factor = np.clip(1 + noise, 0, None) * day_factor[(times // DAY_S).astype(int)][:, None]
    values = base.to_numpy()
    # Only consumption varies; negative base demands are inflows the operator controls.
    return pd.DataFrame(
        np.where(values > 0, values * factor, values), index=base.index, columns=base.columns
    )


def _log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(math.exp(rng.uniform(math.log(low), math.log(high))))


def draw_leaks(
    facts: engine.NetworkFacts,
    config: ScenarioConfig,
    demand: pd.DataFrame,
    rng: np.random.Generator,
) -> list[Leak]:
    """Choose leak pipes, sizes and timing (see the module docstring)."""
    if config.leaks == 0:
        return []
    inlets = set(facts.inlet_links)
    pipes = [
        p
        for p in facts.pipes
        if facts.pipe_open[p] and facts.pipe_lengths[p] > 1 and p not in inlets
    ]
    if len(pipes) < config.leaks:
        raise engine.WaterInputError(
            f"{config.network}: {config.leaks} leaks asked for but only {len(pipes)} pipes fit"
        )
    lengths = np.array([facts.pipe_lengths[p] for p in pipes])
    chosen = rng.choice(len(pipes), size=config.leaks, replace=False, p=lengths / lengths.sum())
    mean_demand = float(demand.clip(lower=0).sum(axis=1).mean())
    low = max(LEAK_MIN_M3S, LEAK_MIN_SHARE * mean_demand)
    high = max(4 * low, LEAK_MAX_SHARE * mean_demand)
    step, duration = config.step_s, config.days * DAY_S
    first = config.leak_free_days * DAY_S
    last = max(first, duration - DAY_S // 2)
    times = np.arange(0, duration, step)
    leaks = []
    for n, index in enumerate(sorted(chosen)):
        start = int(rng.uniform(first, last) // step * step)
        start = max(start, first)
        end = duration
        if rng.random() < 0.5:
            end = min(duration, start + int(_log_uniform(rng, *REPAIR_S) // step * step))
        kind = "abrupt" if rng.random() < 0.5 else "incipient"
        ramp = _log_uniform(rng, *RAMP_S) if kind == "incipient" else float(step)
        size = _log_uniform(rng, low, high)
        shape = np.clip((times - start + step) / ramp, 0, 1) * (times < end)
        leaks.append(Leak(pipes[index], f"LEAK{n + 1}", kind, start, end, size * shape))
    return leaks


def sensor_count(junctions: int) -> int:
    """Pressure sensors for a network: about 1.2 √junctions, 3 to 48."""
    return max(3, min(48, round(1.2 * math.sqrt(junctions))))


def place_sensors(
    wn: engine.Model,
    facts: engine.NetworkFacts,
    count: int | None,
    rng: np.random.Generator,
) -> list[Sensor]:
    """Pressure sensors spread by farthest-point sampling on network distance, flow meters on
    the links at tanks and reservoirs, and a level sensor in every tank."""
    import networkx as nx

    graph = engine.network_graph(wn)
    junctions = list(facts.junctions)
    wanted = min(len(junctions), count if count is not None else sensor_count(len(junctions)))
    chosen = [junctions[int(rng.integers(len(junctions)))]]
    nearest = dict.fromkeys(junctions, math.inf)
    while len(chosen) < wanted:
        reach = nx.single_source_dijkstra_path_length(graph, chosen[-1], weight="length")
        for j in junctions:
            nearest[j] = min(nearest[j], reach.get(j, math.inf))
        # Unreachable junctions (isolated by closed links) are never chosen.
        far = max(
            (j for j in junctions if math.isfinite(nearest[j]) and j not in chosen),
            key=lambda j: nearest[j],
            default=None,
        )
        if far is None:
            break
        chosen.append(far)
    sensors = [Sensor(f"P_{j}", "pressure", j, "m") for j in sorted(chosen, key=junctions.index)]
    sensors += [Sensor(f"F_{link}", "flow", link, "m3/s") for link in facts.inlet_links]
    sensors += [Sensor(f"L_{tank}", "level", tank, "m") for tank in facts.tanks]
    return sensors


def sensor_values(
    sensors: list[Sensor], results: engine.Results, times: np.ndarray
) -> pd.DataFrame:
    """Exact simulated values per sensor: pressure head and tank level (m), flow (m³/s)."""
    columns = {}
    for s in sensors:
        source = results.flow if s.kind == "flow" else results.pressure
        columns[s.sensor_id] = source[s.element].reindex(times).to_numpy(dtype=float)
    return pd.DataFrame(columns, index=pd.Index(times, name="time_s"))


def add_sensor_noise(
    clean: pd.DataFrame, sensors: list[Sensor], step_s: int, rng: np.random.Generator
) -> pd.DataFrame:
    """Noise, offsets, quantisation and lost readings (see the module docstring)."""
    noisy = clean.copy()
    rows = len(clean)
    for s in sensors:
        values = clean[s.sensor_id].to_numpy(dtype=float)
        if s.kind == "pressure":
            offset = rng.normal(0, PRESSURE_OFFSET_SIGMA)
            values = values + offset + rng.normal(0, PRESSURE_SIGMA, rows)
            quantum = PRESSURE_QUANTUM
        elif s.kind == "flow":
            values = values * (1 + rng.normal(0, FLOW_REL_SIGMA, rows))
            quantum = FLOW_QUANTUM
        else:
            values = values + rng.normal(0, LEVEL_SIGMA, rows)
            quantum = LEVEL_QUANTUM
        values = np.round(values / quantum) * quantum
        values[rng.random(rows) < LOSS_RATE] = np.nan
        outages = rng.poisson(OUTAGES_PER_DAY * rows * step_s / DAY_S)
        for _ in range(outages):
            first = int(rng.integers(rows))
            length = int(rng.integers(OUTAGE_S[0], OUTAGE_S[1] + 1) // step_s)
            values[first : first + length] = np.nan
        noisy[s.sensor_id] = values
    return noisy


def write_readings(frame: pd.DataFrame, start: datetime, path: Path) -> None:
    """Write a frame indexed by seconds as CSV with ISO UTC timestamps; NaN as empty cells."""
    stamps = [iso(start, t) for t in frame.index]
    table = frame.copy()
    table.index = pd.Index(stamps, name="timestamp")
    table.to_csv(path, float_format="%.6g", na_rep="")


def truth_record(
    config: ScenarioConfig, name: str, leaks: list[Leak], outflow: pd.DataFrame
) -> dict[str, Any]:
    """The truth.json document."""
    return {
        "network": name,
        "seed": config.seed,
        "start": iso(config.start, 0),
        "step_s": config.step_s,
        "days": config.days,
        "leak_free_days": config.leak_free_days,
        "leaks": [
            {
                "pipe": leak.pipe,
                "start": iso(config.start, leak.start_s),
                "end": iso(config.start, leak.end_s),
                "peak_flow": float(outflow[leak.pipe].max()),
                "kind": leak.kind,
            }
            for leak in leaks
        ],
        "injections": [],
    }
