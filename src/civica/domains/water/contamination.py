"""Water-quality events for scenarios: chlorine, contaminant injections and what stations see.

EPANET tracks one species per run, so a scenario runs chlorine once (a first-order decaying
chemical dosed to a set point at the treatment sources) and a conservative contaminant once (MASS
sources at the injection nodes), on the same hydraulics. A quality station (chlorine,
conductivity and turbidity sensors on one node) then sees, per contaminant mg/L at its node:

- chlorine: the simulated chlorine minus the contaminant's chlorine demand (mg/L per mg/L) -
  an instantaneous reaction, a simplification of the real coupled decay; never below 0;
- conductivity: a baseline of 450 uS/cm x a station factor N(1, 3 %), a daily drift (sd 1 %)
  and a diurnal swing of 1 %, plus the contaminant's conductivity per mg/L;
- turbidity: a baseline of 0.12 NTU x a station factor (log-normal, sd 0.3), 30 % higher at peak
  demand (resuspension), with harmless spikes of 0.1-1 NTU lasting 30-60 min (about one per 10
  days per station), plus the contaminant's turbidity per mg/L.

Sensor noise is in sensors.py. An injection lasts 1-8 h (log-uniform) at a junction passing at
least 0.05 L/s, with a mass rate that would give 2-50 mg/L (log-uniform) in the water passing the
node. It is ``observable`` when, within a day of its end, some station sees at least one
parameter move by five times its noise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from civica.domains.water.sensors import NOISE

DAY_S = 86400

CHLORINE_SET_POINT_MG_L = 1.0
CHLORINE_BULK_PER_DAY = -0.55
CHLORINE_WALL_M_PER_DAY = -0.15
CHLORINE_INITIAL_MG_L = 0.5
DOSE_SIGMA, DOSE_TAU_S = 0.03, 6 * 3600.0

CONDUCTIVITY_US_CM = 450.0
TURBIDITY_NTU = 0.12
INJECTION_S = (3600.0, 8 * 3600.0)
INJECTION_MG_L = (2.0, 50.0)
MIN_THROUGHPUT_M3S = 0.00005


@dataclass(frozen=True)
class Contaminant:
    """How one mg/L of a contaminant moves what the stations measure."""

    name: str
    conductivity: float  # uS/cm per mg/L
    turbidity: float  # NTU per mg/L
    chlorine_demand: float  # mg/L of chlorine consumed per mg/L


CONTAMINANTS = (
    Contaminant("wastewater", 1.5, 0.05, 0.3),
    Contaminant("brine", 2.0, 0.0, 0.0),
    Contaminant("pesticide", 0.02, 0.002, 0.5),
    Contaminant("soil", 0.5, 0.3, 0.1),
)


@dataclass(frozen=True)
class Injection:
    """A contaminant injection: node, timing (s from the start), mass rate (mg/min)."""

    node: str
    start_s: int
    end_s: int
    contaminant: Contaminant
    mass_rate: float  # mg/min

    def shape(self, times: np.ndarray) -> np.ndarray:
        """1 while injecting, 0 otherwise, per step."""
        return ((times >= self.start_s) & (times < self.end_s)).astype(float)


def dose_pattern(steps: int, step_s: int, rng: np.random.Generator) -> np.ndarray:
    """Treatment dose multipliers per step: 1 plus smooth AR(1) wander (sd 3 %, 6 h)."""
    phi = math.exp(-step_s / DOSE_TAU_S)
    wander = np.empty(steps)
    wander[0] = rng.normal(0, DOSE_SIGMA)
    shocks = rng.normal(0, DOSE_SIGMA * math.sqrt(1 - phi**2), steps)
    for i in range(1, steps):
        wander[i] = phi * wander[i - 1] + shocks[i]
    return np.clip(1 + wander, 0.5, 1.5)


def throughput(
    mean_abs: pd.Series, ends: dict[str, tuple[str, str]], nodes: list[str]
) -> pd.Series:
    """Mean water passing each node (m³/s): half the summed mean absolute flows of its links."""
    passing = dict.fromkeys(nodes, 0.0)
    for link, (u, v) in ends.items():
        for node in (u, v):
            if node in passing:
                passing[node] += 0.5 * float(mean_abs.get(link, 0.0))
    return pd.Series(passing)


def draw_injections(
    count: int,
    passing: pd.Series,
    first_s: int,
    duration_s: int,
    step_s: int,
    rng: np.random.Generator,
) -> list[Injection]:
    """Random injections after ``first_s`` at nodes that pass enough water."""
    candidates = sorted(str(n) for n in passing.index[passing >= MIN_THROUGHPUT_M3S])
    if not candidates or count == 0:
        return []
    nodes = rng.choice(len(candidates), size=min(count, len(candidates)), replace=False)
    last = max(first_s, duration_s - DAY_S // 2)
    injections = []
    for index in nodes:
        node = candidates[int(index)]
        start = max(first_s, int(rng.uniform(first_s, last) // step_s * step_s))
        length = max(step_s, int(_log_uniform(rng, *INJECTION_S) // step_s * step_s))
        mg_l = _log_uniform(rng, *INJECTION_MG_L)
        rate = mg_l * float(passing[node]) * 1000.0 * 60.0  # mg/L x L/s -> mg/min
        contaminant = CONTAMINANTS[int(rng.integers(len(CONTAMINANTS)))]
        injections.append(
            Injection(node, start, min(duration_s, start + length), contaminant, rate)
        )
    return sorted(injections, key=lambda i: i.start_s)


def _log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(math.exp(rng.uniform(math.log(low), math.log(high))))


def station_values(
    stations: list[str],
    chlorine: pd.DataFrame,
    contaminant: pd.DataFrame,
    injections: list[Injection],
    demand_shape: np.ndarray,
    rng: np.random.Generator,
) -> pd.DataFrame:
    """Noise-free chlorine (mg/L), conductivity (uS/cm) and turbidity (NTU) per station.

    One run carries every injection; the contaminant at a station is taken to be that of the
    latest injection started, exact unless two plumes overlap at a station.
    """
    times = chlorine.index.to_numpy(dtype=float)
    steps = len(times)
    days = np.floor(times / DAY_S).astype(int)
    columns: dict[str, np.ndarray] = {}
    for node in stations:
        conc = contaminant[node].to_numpy(dtype=float)
        ec_per, tu_per, cl_per = (_effect(injections, times, name) for name in _EFFECTS)
        drift = rng.normal(0, 0.01, days.max() + 1)[days]
        diurnal = 0.01 * np.sin(2 * math.pi * (times % DAY_S) / DAY_S + rng.uniform(0, 6.28))
        base_ec = CONDUCTIVITY_US_CM * rng.normal(1, 0.03) * (1 + drift + diurnal)
        base_tu = TURBIDITY_NTU * math.exp(rng.normal(0, 0.3)) * (1 + 0.3 * demand_shape)
        spikes = np.zeros(steps)
        for _ in range(rng.poisson(steps * (times[1] - times[0]) / DAY_S / 10)):
            at = int(rng.integers(steps))
            spikes[at : at + int(rng.integers(2, 5))] += rng.uniform(0.1, 1.0)
        cl = chlorine[node].to_numpy(dtype=float)
        columns[f"CL_{node}"] = np.clip(cl - cl_per * conc, 0, None)
        columns[f"EC_{node}"] = base_ec + ec_per * conc
        columns[f"TU_{node}"] = base_tu + spikes + tu_per * conc
    return pd.DataFrame(columns, index=chlorine.index)


_EFFECTS = ("conductivity", "turbidity", "chlorine_demand")


def _effect(injections: list[Injection], times: np.ndarray, name: str) -> np.ndarray:
    """Per step, one effect per mg/L of the contaminant of the latest injection started."""
    if not injections:
        return np.zeros(len(times))
    starts = np.array([i.start_s for i in injections])
    latest = np.searchsorted(starts, times, side="right") - 1
    per_mg_l = np.array([getattr(i.contaminant, name) for i in injections])
    return np.where(latest >= 0, per_mg_l[np.clip(latest, 0, None)], 0.0)


OBSERVABLE_SIGMAS = 5.0  # an injection is observable if it moves a station this far


def peak_sigmas(injection: Injection, contaminant: pd.DataFrame, stations: list[str]) -> float:
    """How far, in noise deviations, this injection moves the most moved parameter of the
    most reached station from its start to a day after its end (0 if no station sees it)."""
    window = contaminant.loc[injection.start_s : injection.end_s + DAY_S, stations]
    if window.empty:
        return 0.0
    peak = float(window.to_numpy().max())
    c = injection.contaminant
    moves = (
        c.chlorine_demand * peak / NOISE["quality", "mg/L"].sigma,
        c.conductivity * peak / NOISE["quality", "uS/cm"].sigma,
        c.turbidity * peak / NOISE["quality", "NTU"].sigma,
    )
    return max(0.0, *moves)
