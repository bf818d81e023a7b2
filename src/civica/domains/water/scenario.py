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
- Leaks: on pipes chosen with probability proportional to length, between junctions with at
  least 5 m of pressure (not at tanks, reservoirs, pumps or valves), never in the first
  ``leak_free_days``. Size log-uniform between max(0.5 L/s, 0.2 % of mean demand) and
  max(4 x that, 4 % of mean demand), the mean outflow once fully developed; through the day
  the outflow follows the orifice law sqrt(p / mean p) on the model's nominal pressure at the
  pipe. Half abrupt (a step), half incipient (a linear ramp over 6 h to 5 days, log-uniform).
  Half are repaired after 1-10 days (log-uniform), the rest run to the end. A leak is a demand
  at a junction splitting the pipe at its midpoint; under PDD its outflow also falls where
  pressure falls below the required pressure, and the truth records the outflow EPANET
  delivered (``peak_flow`` is its maximum).
- PDD: minimum pressure 0 m, required pressure from the network (see ``required_pressure``).
  A step EPANET cannot balance is carried on from (EPANET's default would end the run), its
  hydraulic readings and leak outflow are left empty, and truth.json counts such steps.
- Tanks spill when full (EPANET 2.2 overflow), in the truth and in the written model: a full
  tank is otherwise closed, and a network fed by fixed inflows (Net2's well) then has heads of
  a million metres. Spilled water entered through the tank's metered link, so the water balance
  still closes.
- Sensors: placement (pressure loggers, inlet meters and, by default, meters between district
  metered areas) and noise in sensors.py; water quality (``--quality``) in contamination.py.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from civica.domains.water import contamination
from civica.domains.water import network as engine
from civica.domains.water.sensors import (
    add_sensor_noise,
    district_meters,
    hydraulic_values,
    place_sensors,
    sensor_count,
    spread_junctions,
)

DAY_S = 86400
DEFAULT_START = datetime(2026, 1, 1, tzinfo=UTC)

# Demand uncertainty (see the module docstring).
NODE_SIGMA = 0.07
NODE_TAU_S = 7200.0
DAY_SIGMA = 0.03
DRIFT_PHI, DRIFT_SIGMA = 0.8, 0.02
WEEKEND_FACTOR = 0.95
ROUGHNESS_SIGMA = 0.02
SERVED_MIN_M = 5.0
PROBE_DAYS = 7

# Leak sizes and timing.
LEAK_MIN_M3S, LEAK_MIN_SHARE, LEAK_MAX_SHARE = 0.0005, 0.002, 0.04
RAMP_S = (6 * 3600.0, 5 * DAY_S)
REPAIR_S = (1 * DAY_S, 10 * DAY_S)


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
    injections: int | None = None  # contaminant injections with --quality; None scales
    start: datetime = DEFAULT_START
    districts: bool = True  # meter the links between district metered areas (sensors.py)

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
    rng = dict(
        zip(
            ("demand", "pipes", "leaks", "sensors", "quality", "noise"),
            (np.random.default_rng(s) for s in np.random.SeedSequence(config.seed).spawn(6)),
            strict=True,
        )
    )
    duration = config.days * DAY_S
    times = np.arange(0, duration, config.step_s)
    progress("Preparing the network", 0, 1)
    # Some models only show their trouble after days (ky10's tanks drain by day 4 and zones
    # then lose pressure), so the served junctions come from up to a week of nominal running.
    hourly, mean_flow = engine.probe(engine.load_network(path), min(config.days, PROBE_DAYS))
    daily = hourly.iloc[:24]
    demand = realistic_demand(nominal, times, config.start, rng["demand"])
    required = required_pressure(daily.min(), list(demand.columns))
    served = served_junctions(nominal, hourly.min())
    facts = engine.network_facts(nominal)
    leaks = draw_leaks(facts, served, config, demand, daily, rng["leaks"])
    truth_model = engine.load_network(path)  # reading is faster than a deep copy
    engine.no_quality(truth_model)
    engine.set_timing(truth_model, duration, config.step_s)
    engine.set_pressure_driven(truth_model, required)
    engine.allow_overflow(truth_model)
    engine.set_demands(truth_model, demand, config.step_s)
    engine.scale_roughness(
        truth_model,
        {p: float(max(0.5, rng["pipes"].normal(1, ROUGHNESS_SIGMA))) for p in facts.pipes},
    )
    for leak in leaks:
        engine.add_leak(truth_model, leak.pipe, leak.node, leak.flow, config.step_s)
    wanted = config.sensors if config.sensors is not None else sensor_count(len(facts.junctions))
    spread = spread_junctions(nominal, served or list(facts.junctions), wanted, rng["sensors"])
    districts = district_meters(facts) if config.districts else []
    sensors = place_sensors(facts, spread, config.quality, districts)
    stations = [s.element for s in sensors if s.kind == "quality" and s.unit == "mg/L"]
    sources = treatment_sources(nominal, facts)
    dose = contamination.dose_pattern(len(times), config.step_s, rng["quality"])
    if config.quality:
        _chlorine(truth_model, sources, dose, config.step_s)
    progress("Preparing the network", 1, 1)

    stage = f"Simulating {config.days} days of {path.stem}"
    runs = 3 if config.quality else 1  # hydraulics, chlorine, contaminant

    def advance(run: int) -> engine.EngineProgress:
        return lambda phase, now: progress(
            stage, (run + (phase == "quality")) * duration + now, runs * duration
        )

    watch = engine.Watch(
        config.step_s,
        pressure=[s.element for s in sensors if s.kind in ("pressure", "level")],
        flow=[s.element for s in sensors if s.kind == "flow"],
        demand=[leak.node for leak in leaks],
        quality=stations,
    )
    injections: list[contamination.Injection] = []
    peaks: list[float] = []
    with tempfile.TemporaryDirectory(prefix="civica-scenario-") as tmp:
        hydraulics = Path(tmp) / "run.hyd" if config.quality else None
        results = engine.simulate(truth_model, watch, advance(0), save_hydraulics=hydraulics)
        clean = hydraulic_values(sensors, results, times)
        # EPANET's answer at a step it could not balance can be wild (-60 km of head on ky10).
        unsolved = sorted(set(results.unbalanced) & set(times.tolist()))
        clean.loc[unsolved] = np.nan
        if hydraulics is not None:
            passing = contamination.throughput(mean_flow, facts.link_ends, served)
            count = config.injections if config.injections is not None else max(2, config.days // 5)
            injections = contamination.draw_injections(
                count,
                passing,
                config.leak_free_days * DAY_S,
                duration,
                config.step_s,
                rng["quality"],
            )
            # The truth model's hydraulics are saved: it can carry the contaminant now.
            engine.set_contaminant(
                truth_model,
                [(i.node, i.mass_rate, i.shape(times)) for i in injections],
                config.step_s,
            )
            polluted = engine.simulate(
                truth_model,
                engine.Watch(config.step_s, quality=stations),
                advance(2),
                use_hydraulics=hydraulics,
            )
            total = demand.clip(lower=0).sum(axis=1).to_numpy()
            values = contamination.station_values(
                stations,
                results.quality.reindex(times),
                polluted.quality.reindex(times),
                injections,
                (total - total.min()) / max(float(np.ptp(total)), 1e-12),
                rng["quality"],
            )
            clean = clean.join(values)[[s.sensor_id for s in sensors]]
            peaks = [contamination.peak_sigmas(i, polluted.quality, stations) for i in injections]
    progress(stage, runs * duration, runs * duration)

    progress("Writing files", 0, 1)
    out.mkdir(parents=True, exist_ok=True)
    written = engine.load_network(path)
    engine.no_quality(written)
    engine.set_timing(written, duration, config.step_s)
    engine.set_pressure_driven(written, required)
    engine.allow_overflow(written)
    if config.quality:
        _chlorine(written, sources, np.ones(len(times)), config.step_s)
    engine.write_network(written, out / "network.inp")
    readings = add_sensor_noise(clean, sensors, config.step_s, rng["noise"])
    write_readings(readings, config.start, out / "readings.csv")
    pd.DataFrame([s.__dict__ for s in sensors]).to_csv(out / "sensors.csv", index=False)
    outflow = results.demand.reindex(index=times)[[leak.node for leak in leaks]]
    outflow.loc[unsolved] = np.nan
    outflow.columns = pd.Index([leak.pipe for leak in leaks])
    write_readings(outflow.clip(lower=0.0), config.start, out / "leak_flows.csv")
    truth = truth_record(
        config, path.stem, leaks, outflow, list(zip(injections, peaks, strict=True))
    )
    truth["unbalanced_steps"] = len(results.unbalanced)  # EPANET went on without balance
    truth["generator"] = generator_stamp()
    (out / "truth.json").write_text(json.dumps(truth, indent=2) + "\n")
    progress("Writing files", 1, 1)
    return truth


@functools.cache
def generator_stamp() -> str:
    """A digest of the generator's code: the same seed gives the same files only under the
    same stamp, so a cached scenario is reused only while it matches (see :func:`is_current`).
    """
    digest = hashlib.sha256()
    here = Path(__file__).parent
    for module in ("scenario", "sensors", "contamination", "network"):
        digest.update((here / f"{module}.py").read_bytes())
    return digest.hexdigest()[:16]


def is_current(directory: Path) -> bool:
    """Whether ``directory`` holds a complete scenario written by the generator as it is now
    (benchmarks cache scenarios; one written by older code must be generated again)."""
    try:
        truth = json.loads((directory / "truth.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(truth, dict) and truth.get("generator") == generator_stamp()


def _chlorine(wn: engine.Model, sources: list[str], dose: np.ndarray, step_s: int) -> None:
    engine.set_chlorine(
        wn,
        dict.fromkeys(sources, contamination.CHLORINE_SET_POINT_MG_L),
        dose,
        step_s,
        bulk_per_day=contamination.CHLORINE_BULK_PER_DAY,
        wall_m_per_day=contamination.CHLORINE_WALL_M_PER_DAY,
        initial_mg_l=contamination.CHLORINE_INITIAL_MG_L,
    )


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


def required_pressure(lowest: pd.Series, demand_junctions: list[str]) -> float:
    """A PDD required pressure (m) the network meets nearly everywhere in normal operation.

    The 5th percentile of the lowest daily pressure at demand junctions, times 0.9, capped at
    20 m (a common service standard) and floored at 5 m so that a badly designed network
    still gets a sensible pressure-demand curve.
    """
    values = lowest.reindex(demand_junctions).dropna()
    low = float(np.percentile(values if len(values) else lowest, 5))
    return float(min(20.0, max(5.0, round(0.9 * low, 1))))


def served_junctions(wn: engine.Model, lowest: pd.Series) -> list[str]:
    """Junctions with at least 5 m of pressure all day, away from pump and valve ends: where
    leaks happen and loggers go (not on a pump's suction side or a dry hilltop)."""
    skip = engine.pump_and_valve_nodes(wn)
    return [str(j) for j, p in lowest.items() if p >= SERVED_MIN_M and j not in skip]


def orifice_factor(daily: pd.DataFrame, ends: tuple[str, str], times: np.ndarray) -> np.ndarray:
    """sqrt(p(t) / mean p) at a pipe's midpoint (the mean of its ends) from the nominal daily
    pressure, hour by hour: an orifice leaks more at night, when pressure is high."""
    hourly = daily[list(ends)].mean(axis=1).to_numpy()[:24].clip(min=0.1)
    factor: np.ndarray = np.sqrt(hourly[(times % DAY_S // 3600).astype(int)] / hourly.mean())
    return factor


def draw_leaks(
    facts: engine.NetworkFacts,
    served: list[str],
    config: ScenarioConfig,
    demand: pd.DataFrame,
    daily: pd.DataFrame,
    rng: np.random.Generator,
) -> list[Leak]:
    """Choose leak pipes, sizes and timing (see the module docstring); ``daily`` is the
    nominal pressure (m) per junction hour by hour over a day, for the orifice law."""
    if config.leaks == 0:
        return []
    inlets, ok = set(facts.inlet_links), set(served)
    pipes = [
        p
        for p in facts.pipes
        if facts.pipe_open[p]
        and facts.pipe_lengths[p] > 1
        and p not in inlets
        and set(facts.pipe_ends[p]) <= ok
    ]
    if len(pipes) < config.leaks:
        raise engine.WaterInputError(
            f"{config.network}: {config.leaks} leaks asked for but only {len(pipes)} pipes "
            "between served junctions can take one"
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
    taken = set(facts.nodes)
    leaks = []
    for n, index in enumerate(sorted(chosen)):
        start = max(first, int(rng.uniform(first, last) // step * step))
        end = duration
        if rng.random() < 0.5:
            end = min(duration, start + int(_log_uniform(rng, *REPAIR_S) // step * step))
        kind = "abrupt" if rng.random() < 0.5 else "incipient"
        ramp = _log_uniform(rng, *RAMP_S) if kind == "incipient" else float(step)
        size = _log_uniform(rng, low, high)
        shape = np.clip((times - start + step) / ramp, 0, 1) * (times < end)
        shape = shape * orifice_factor(daily, facts.pipe_ends[pipes[index]], times)
        node = f"LEAK{n + 1}"
        while node in taken:  # the network may use such names itself
            node += "x"
        taken.add(node)
        leaks.append(Leak(pipes[index], node, kind, start, end, size * shape))
    return leaks


def treatment_sources(wn: engine.Model, facts: engine.NetworkFacts) -> list[str]:
    """Where chlorine is dosed: reservoirs and inflow junctions, else tanks."""
    return [*facts.reservoirs, *engine.inflow_junctions(wn)] or list(facts.tanks)


def write_readings(frame: pd.DataFrame, start: datetime, path: Path) -> None:
    """Write a frame indexed by seconds as CSV with ISO UTC timestamps; NaN as empty cells."""
    stamps = [iso(start, t) for t in frame.index]
    table = frame.copy()
    table.index = pd.Index(stamps, name="timestamp")
    table.to_csv(path, float_format="%.6g", na_rep="")


def truth_record(
    config: ScenarioConfig,
    name: str,
    leaks: list[Leak],
    outflow: pd.DataFrame,
    injections: list[tuple[contamination.Injection, float]],
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
        "injections": [
            {
                "node": i.node,
                "start": iso(config.start, i.start_s),
                "end": iso(config.start, i.end_s),
                "contaminant": i.contaminant.name,
                "mass_rate": round(i.mass_rate, 3),
                "mass_rate_unit": "mg/min",
                "observable": peak >= contamination.OBSERVABLE_SIGMAS,
                "peak_station_sigmas": round(peak, 2),
            }
            for i, peak in injections
        ],
    }
