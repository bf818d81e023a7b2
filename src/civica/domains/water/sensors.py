"""Where a scenario's sensors go and how they misread: layout, noise, quantisation, lost data.

Layout: pressure loggers spread over the network by farthest-point sampling; flow meters on
every link at a tank or reservoir (the inlets) and, in networks big enough to have them, on
the links between district metered areas (DMAs): the network is split into districts of about
:data:`DISTRICT_JUNCTIONS` junctions (greedy modularity communities of the network graph, which
cut few links) and every link from one district into another gets a meter. A meter on a link
reads the flow at its start node's end (so a leak on a metered pipe, at its middle, lies in
the end node's district).

Noise per kind (sd; quantum): pressure 0.1 m plus a fixed offset per sensor sd 0.1 m (0.01 m);
flow 1 % of the reading (0.00001 m³/s = 0.01 L/s); tank level 0.01 m (0.001 m); chlorine
0.02 mg/L (0.01); conductivity 2 uS/cm (1); turbidity 0.02 NTU (0.01). Quality readings are
never negative. 0.2 % of readings are lost at random and each sensor has outages of 1-6 h (about
one per 30 days); lost readings are empty cells in readings.csv.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import networkx as nx
import numpy as np
import pandas as pd

from civica.domains.water import network as engine

DAY_S = 86400
LOSS_RATE, OUTAGES_PER_DAY, OUTAGE_S = 0.002, 1 / 30, (3600, 6 * 3600)
# A quality station (chlorine, conductivity, turbidity) on every third pressure logger.
QUALITY_UNITS = {"mg/L": "CL", "uS/cm": "EC", "NTU": "TU"}


@dataclass(frozen=True)
class Sensor:
    """One sensor as written to sensors.csv."""

    sensor_id: str
    kind: str  # pressure | flow | level | quality
    element: str
    unit: str


@dataclass(frozen=True)
class Noise:
    """How one kind of sensor misreads: sd (in its unit, or relative), offset sd, quantum."""

    sigma: float
    quantum: float
    relative: bool = False
    offset: float = 0.0
    floor: float | None = None


NOISE: dict[tuple[str, str], Noise] = {
    ("pressure", "m"): Noise(0.1, 0.01, offset=0.1),
    ("flow", "m3/s"): Noise(0.01, 1e-5, relative=True),
    ("level", "m"): Noise(0.01, 0.001),
    ("quality", "mg/L"): Noise(0.02, 0.01, floor=0.0),
    ("quality", "uS/cm"): Noise(2.0, 1.0, floor=0.0),
    ("quality", "NTU"): Noise(0.02, 0.01, floor=0.0),
}


DISTRICT_JUNCTIONS = 60  # junctions per district metered area, about


def district_meters(facts: engine.NetworkFacts) -> list[str]:
    """Links to meter so that the network falls into districts (DMAs) of about
    :data:`DISTRICT_JUNCTIONS` junctions; none for networks smaller than two such districts.
    Inlet links are metered anyway and are left out."""
    districts = round(len(facts.junctions) / DISTRICT_JUNCTIONS)
    if districts < 2:
        return []
    graph = nx.Graph()
    graph.add_nodes_from(facts.nodes)
    graph.add_edges_from(facts.link_ends.values())
    communities = nx.community.greedy_modularity_communities(
        graph, cutoff=districts, best_n=districts
    )
    owner = {node: i for i, members in enumerate(communities) for node in members}
    inlets = set(facts.inlet_links)
    return [
        link
        for link, (u, v) in facts.link_ends.items()
        if owner[u] != owner[v] and link not in inlets
    ]


def sensor_count(junctions: int) -> int:
    """Pressure loggers for a network: about 1.2 sqrt(junctions), 3 to 48."""
    return max(3, min(48, round(1.2 * math.sqrt(junctions))))


def spread_junctions(
    wn: engine.Model, candidates: list[str], wanted: int, rng: np.random.Generator
) -> list[str]:
    """``wanted`` junctions by farthest-point sampling on network distance, in the order chosen
    (each the farthest from those before it), from a random first one."""
    graph = engine.network_graph(wn)
    wanted = min(len(candidates), wanted)
    chosen = [candidates[int(rng.integers(len(candidates)))]]
    nearest = dict.fromkeys(candidates, math.inf)
    while len(chosen) < wanted:
        reach = nx.single_source_dijkstra_path_length(graph, chosen[-1], weight="length")
        for j in candidates:
            nearest[j] = min(nearest[j], reach.get(j, math.inf))
        # Junctions cut off by closed links are never chosen.
        far = max(
            (j for j in candidates if math.isfinite(nearest[j]) and j not in chosen),
            key=lambda j: nearest[j],
            default=None,
        )
        if far is None:
            break
        chosen.append(far)
    return chosen


def place_sensors(
    facts: engine.NetworkFacts, spread: list[str], quality: bool, districts: Sequence[str] = ()
) -> list[Sensor]:
    """Pressure loggers at ``spread``, flow meters on the links at tanks and reservoirs and on
    the ``districts`` boundary links, a level sensor in every tank and, with ``quality``, a
    station on every third logger."""
    order = {j: i for i, j in enumerate(facts.junctions)}
    sensors = [Sensor(f"P_{j}", "pressure", j, "m") for j in sorted(spread, key=order.__getitem__)]
    sensors += [Sensor(f"F_{link}", "flow", link, "m3/s") for link in facts.inlet_links]
    sensors += [Sensor(f"L_{tank}", "level", tank, "m") for tank in facts.tanks]
    if quality:
        stations = spread[: max(2, round(len(spread) / 3))]
        for node in sorted(stations, key=order.__getitem__):
            sensors += [
                Sensor(f"{prefix}_{node}", "quality", node, unit)
                for unit, prefix in QUALITY_UNITS.items()
            ]
    # last, so that the noise drawn for every other sensor is the same with or without them
    sensors += [Sensor(f"F_{link}", "flow", link, "m3/s") for link in districts]
    return sensors


def hydraulic_values(
    sensors: list[Sensor], results: engine.Results, times: np.ndarray
) -> pd.DataFrame:
    """Exact simulated values of the pressure, level (m) and flow (m³/s) sensors."""
    columns = {}
    for s in sensors:
        if s.kind == "quality":
            continue
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
        noise = NOISE[s.kind, s.unit]
        values = clean[s.sensor_id].to_numpy(dtype=float)
        jitter = rng.normal(0, noise.sigma, rows)
        values = values * (1 + jitter) if noise.relative else values + jitter
        values = values + rng.normal(0, noise.offset) if noise.offset else values
        values = np.round(values / noise.quantum) * noise.quantum
        if noise.floor is not None:
            values = np.maximum(values, noise.floor)
        values[rng.random(rows) < LOSS_RATE] = np.nan
        for _ in range(rng.poisson(OUTAGES_PER_DAY * rows * step_s / DAY_S)):
            first = int(rng.integers(rows))
            length = int(rng.integers(OUTAGE_S[0], OUTAGE_S[1] + 1) // step_s)
            values[first : first + length] = np.nan
        noisy[s.sensor_id] = values
    return noisy
