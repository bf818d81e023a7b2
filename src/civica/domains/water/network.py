"""The water engine: the only module that imports WNTR (EPANET); its errors become ours.

Everything here works in SI units, as WNTR does internally: m, m³/s, s, mg/L.
"""

from __future__ import annotations

import copy
import math
import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np
import pandas as pd
import wntr
from wntr.epanet.exceptions import EpanetException
from wntr.epanet.io import BinFile
from wntr.epanet.toolkit import ENepanet

# A WNTR WaterNetworkModel; WNTR is untyped, so the alias only documents intent.
Model = Any

NETWORKS_DIR = Path(wntr.__file__).parent / "library" / "networks"
SHIPPED_NETWORKS = ("Net1", "Net2", "Net3", "Net6", "ky4", "ky10")
DAY_S = 86400


class WaterInputError(ValueError):
    """Bad water input (a network, readings or sensors file); the message names what and where."""


class SimulationError(RuntimeError):
    """EPANET could not simulate the network."""


@contextmanager
def _quiet() -> Iterator[None]:
    # WNTR warns about things EPANET handles fine (e.g. unused curves); tests make warnings errors.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def resolve_network(spec: str | Path) -> Path:
    """The .inp path for a file path or a shipped network name such as ``Net3``."""
    path = Path(spec)
    if path.is_file():
        return path
    shipped = NETWORKS_DIR / f"{Path(str(spec)).stem}.inp"
    if not path.suffix and shipped.is_file():
        return shipped
    names = ", ".join(SHIPPED_NETWORKS)
    raise WaterInputError(f"{spec}: no such .inp file (shipped networks: {names})")


def load_network(path: str | Path) -> Model:
    """Read and check an EPANET .inp file into a WNTR model (SI units inside)."""
    path = Path(path)
    if not path.is_file():
        raise WaterInputError(f"{path}: no such file")
    try:
        with _quiet():
            wn = wntr.network.WaterNetworkModel(str(path))
    except (EpanetException, ValueError, KeyError, IndexError, RuntimeError) as err:
        raise WaterInputError(f"{path}: not a valid EPANET .inp file: {err}") from err
    if wn.num_junctions == 0 or wn.num_reservoirs + wn.num_tanks == 0:
        raise WaterInputError(f"{path}: the network needs junctions and a reservoir or tank")
    return wn


def write_network(wn: Model, path: str | Path) -> None:
    """Write a model as an .inp in SI units (flows in L/s)."""
    with _quiet():
        wntr.network.write_inpfile(wn, str(path), units="LPS")


def copy_network(wn: Model) -> Model:
    """An independent copy of a model."""
    return copy.deepcopy(wn)


@dataclass(frozen=True)
class NetworkFacts:
    """What the scenario generator needs to know about a network, in SI units."""

    junctions: tuple[str, ...]
    tanks: tuple[str, ...]
    reservoirs: tuple[str, ...]
    pipes: tuple[str, ...]
    links: tuple[str, ...]
    nodes: tuple[str, ...]
    pipe_ends: dict[str, tuple[str, str]]
    pipe_lengths: dict[str, float]  # m
    pipe_open: dict[str, bool]  # pipe initially open (not closed, not a check valve)
    inlet_links: tuple[str, ...]  # links touching a reservoir or tank
    elevations: dict[str, float]  # m


def network_facts(wn: Model) -> NetworkFacts:
    """Names, lengths and inlet links of a model."""
    sources = set(wn.reservoir_name_list) | set(wn.tank_name_list)
    inlets = tuple(
        name
        for name, link in wn.links()
        if link.start_node_name in sources or link.end_node_name in sources
    )
    pipes = tuple(wn.pipe_name_list)
    return NetworkFacts(
        junctions=tuple(wn.junction_name_list),
        tanks=tuple(wn.tank_name_list),
        reservoirs=tuple(wn.reservoir_name_list),
        pipes=pipes,
        nodes=tuple(wn.node_name_list),
        pipe_ends={
            p: (wn.get_link(p).start_node_name, wn.get_link(p).end_node_name) for p in pipes
        },
        links=tuple(wn.link_name_list),
        pipe_lengths={p: float(wn.get_link(p).length) for p in pipes},
        pipe_open={
            p: str(wn.get_link(p).initial_status).upper().endswith("OPEN")
            and not wn.get_link(p).check_valve
            for p in pipes
        },
        inlet_links=inlets,
        elevations={n: float(getattr(node, "elevation", 0.0) or 0.0) for n, node in wn.nodes()},
    )


def network_graph(wn: Model) -> nx.Graph:
    """The undirected network with pipe lengths (m) as ``length``; pumps and valves are 0 m.

    ``graph.graph["links"]`` maps every link id to ``(start node, end node, length m)``.
    """
    graph = nx.Graph()
    graph.add_nodes_from(wn.node_name_list)
    links: dict[str, tuple[str, str, float]] = {}
    for name, link in wn.links():
        length = float(getattr(link, "length", 0.0) or 0.0)
        u, v = link.start_node_name, link.end_node_name
        links[name] = (u, v, length)
        if not graph.has_edge(u, v) or graph[u][v]["length"] > length:
            graph.add_edge(u, v, length=length)
    graph.graph["links"] = links
    return graph


def link_distance(graph: nx.Graph, a: str, b: str) -> float:
    """Distance in m along the network from the midpoint of link ``a`` to that of link ``b``."""
    return distances_from_link(graph, a).get(b, math.inf)


def distances_from_link(graph: nx.Graph, a: str) -> dict[str, float]:
    """Distance in m along the network from the midpoint of link ``a`` to every link's midpoint.

    Links that cannot be reached are left out.
    """
    links: dict[str, tuple[str, str, float]] = graph.graph["links"]
    ua, va, la = links[a]
    reach = [nx.single_source_dijkstra_path_length(graph, end, weight="length") for end in (ua, va)]
    table: dict[str, float] = {}
    for name, (u, v, length) in links.items():
        best = min(r.get(end, math.inf) for r in reach for end in (u, v))
        if math.isfinite(best):
            table[name] = 0.0 if name == a else la / 2 + best + length / 2
    return table


def _pattern_series(wn: Model, name: str | None, times: np.ndarray) -> np.ndarray:
    """Multipliers of a pattern at the given times (s), wrapping as EPANET does."""
    pattern = wn.get_pattern(name) if name and name in wn.pattern_name_list else None
    if pattern is None or len(pattern.multipliers) == 0:
        return np.ones(len(times))
    mult = np.asarray(pattern.multipliers, dtype=float)
    step = wn.options.time.pattern_timestep or 3600
    index = ((times + wn.options.time.pattern_start) // step).astype(int) % len(mult)
    return np.asarray(mult[index], dtype=float)


def expected_demand(wn: Model, times: np.ndarray) -> pd.DataFrame:
    """Demand (m³/s) the model expects at each junction at the given times (s).

    Sums all demand categories with their patterns and the global demand multiplier; junctions
    without any demand are left out.
    """
    default = wn.options.hydraulic.pattern
    cache: dict[str | None, np.ndarray] = {}
    columns: dict[str, np.ndarray] = {}
    for name, junction in wn.junctions():
        total = np.zeros(len(times))
        for demand in junction.demand_timeseries_list:
            if demand.base_value == 0:
                continue
            pattern = demand.pattern_name or default
            if pattern not in cache:
                cache[pattern] = _pattern_series(wn, pattern, times)
            total += demand.base_value * cache[pattern]
        if np.any(total != 0):
            columns[name] = total * wn.options.hydraulic.demand_multiplier
    return pd.DataFrame(columns, index=pd.Index(times, name="time_s"))


def set_timing(wn: Model, duration_s: int, step_s: int) -> None:
    """Run ``duration_s`` with hydraulic, pattern and report steps of ``step_s``."""
    t = wn.options.time
    t.duration = duration_s
    t.hydraulic_timestep = step_s
    t.report_timestep = step_s
    t.report_start = 0
    t.start_clocktime = 0
    t.quality_timestep = min(300, step_s)
    t.rule_timestep = min(t.rule_timestep or step_s, step_s)


def no_quality(wn: Model) -> None:
    """Simulate hydraulics only."""
    wn.options.quality.parameter = "NONE"
    for name in list(wn.source_name_list):
        wn.remove_source(name)


def set_pressure_driven(wn: Model, required_m: float, minimum_m: float = 0.0) -> None:
    """Pressure-driven demand (EPANET 2.2 PDD): full demand at ``required_m`` head, none below
    ``minimum_m``, square-root in between."""
    h = wn.options.hydraulic
    h.demand_model = "PDD"
    h.required_pressure = required_m
    h.minimum_pressure = minimum_m
    h.pressure_exponent = 0.5


def set_demands(wn: Model, demand: pd.DataFrame, step_s: int) -> None:
    """Replace every junction's demand by its own time series (m³/s, one row per step)."""
    wn.options.time.pattern_timestep = step_s
    wn.options.time.pattern_start = 0
    wn.options.hydraulic.demand_multiplier = 1.0
    for name, junction in wn.junctions():
        del junction.demand_timeseries_list[:]
        if name not in demand.columns:
            continue
        series = demand[name].to_numpy(dtype=float)
        base = float(np.mean(np.abs(series)))
        if base == 0:
            continue
        pattern = f"D_{name}"
        wn.add_pattern(pattern, (series / base).tolist())
        junction.add_demand(base, pattern)


def scale_roughness(wn: Model, factors: dict[str, float]) -> None:
    """Multiply pipe roughness coefficients (H-W C, D-W mm or C-M n) by the given factors."""
    for pipe, factor in factors.items():
        link = wn.get_link(pipe)
        link.roughness = float(link.roughness) * factor


def add_leak(wn: Model, pipe: str, node: str, flow: np.ndarray, step_s: int) -> None:
    """Split ``pipe`` at its midpoint with junction ``node`` that draws ``flow`` (m³/s per step).

    The leak is a demand, so under PDD its outflow falls when pressure drops below the
    required pressure; the real outflow is the simulated demand at ``node``.
    """
    peak = float(np.max(flow))
    with _quiet():
        wntr.morph.split_pipe(wn, pipe, f"{pipe}__{node}", node, return_copy=False)
    if peak <= 0:
        return
    pattern = f"P_{node}"
    wn.add_pattern(pattern, (flow / peak).tolist())
    wn.options.time.pattern_timestep = step_s
    wn.get_node(node).add_demand(peak, pattern)


@dataclass(frozen=True)
class Results:
    """Simulated series indexed by time (s): node pressure (m; level in tanks), link flow
    (m³/s), delivered node demand (m³/s) and node quality (mg/L) when simulated."""

    pressure: pd.DataFrame
    flow: pd.DataFrame
    demand: pd.DataFrame
    quality: pd.DataFrame | None


# Called with the phase ("hydraulics" or "quality") and the simulated time (s) reached.
EngineProgress = Callable[[str, int], None]


def simulate(
    wn: Model,
    progress: EngineProgress | None = None,
    *,
    save_hydraulics: Path | None = None,
    use_hydraulics: Path | None = None,
) -> Results:
    """Run EPANET 2.2 on ``wn`` step by step (water quality too unless its parameter is NONE).

    ``save_hydraulics`` keeps the hydraulic solution so that another water-quality setting of
    the same network can be run on it with ``use_hydraulics``, skipping the hydraulics.
    """
    quality = str(wn.options.quality.parameter).upper() != "NONE"
    report = progress or (lambda phase, now: None)
    with tempfile.TemporaryDirectory(prefix="civica-epanet-") as tmp, _quiet():
        inp, rpt, out = (str(Path(tmp) / f"run.{ext}") for ext in ("inp", "rpt", "bin"))
        try:
            wntr.network.write_inpfile(wn, inp, units="LPS", version=2.2)
            engine = ENepanet(version=2.2)
            engine.ENopen(inp, rpt, out)
            if use_hydraulics is None:
                _run_phase(engine, "hydraulics", report)
            else:
                engine.ENusehydfile(str(use_hydraulics))
            if save_hydraulics is not None:
                engine.ENsavehydfile(str(save_hydraulics))
            _run_phase(engine, "quality", report if quality else lambda phase, now: None)
            engine.ENreport()
            engine.ENclose()
            raw = BinFile().read(out, False, wn.options.hydraulic.headloss == "D-W")
        except EpanetException as err:
            raise SimulationError(f"EPANET failed: {err}") from err
    node, link = raw.node, raw.link
    return Results(
        pressure=node["pressure"],
        flow=link["flowrate"],
        demand=node["demand"],
        # WNTR hands concentrations over in kg/m³; readings are in mg/L.
        quality=node["quality"] * 1000.0 if quality else None,
    )


def _run_phase(engine: Any, phase: str, report: EngineProgress) -> None:
    """Step EPANET's hydraulic or quality solver to the end, reporting the time reached."""
    if phase == "hydraulics":
        engine.ENopenH()
        engine.ENinitH(11)  # re-initialise flows, save results for the quality solver
        run, step, close = engine.ENrunH, engine.ENnextH, engine.ENcloseH
    else:
        engine.ENopenQ()
        engine.ENinitQ(1)  # save results to the output file
        run, step, close = engine.ENrunQ, engine.ENnextQ, engine.ENcloseQ
    while True:
        report(phase, run())
        if step() <= 0:
            break
    close()


def set_chlorine(
    wn: Model,
    sources: dict[str, float],
    dose: np.ndarray,
    step_s: int,
    *,
    bulk_per_day: float,
    wall_m_per_day: float,
    initial_mg_l: float,
) -> None:
    """Chlorine as a first-order decaying chemical, dosed to a set point at ``sources``.

    ``sources`` maps node to set point (mg/L); ``dose`` multiplies it per step; the bulk
    coefficient is per day and the wall coefficient m/day (negative: decay).
    """
    q = wn.options.quality
    q.parameter = "CHEMICAL"
    q.chemical_name = "Chlorine"
    q.inpfile_units = "mg/L"
    reaction = wn.options.reaction
    reaction.bulk_order = 1
    reaction.wall_order = 1
    reaction.bulk_coeff = bulk_per_day / DAY_S  # WNTR wants SI: 1/s and m/s
    reaction.wall_coeff = wall_m_per_day / DAY_S
    for _, node in wn.nodes():
        node.initial_quality = initial_mg_l / 1000.0  # kg/m³
    wn.add_pattern("CL_DOSE", list(map(float, dose)))
    wn.options.time.pattern_timestep = step_s
    for node, mg_l in sources.items():
        # CONCEN sets the water a reservoir or inflow node sends out; tanks need SETPOINT.
        kind = "SETPOINT" if node in wn.tank_name_list else "CONCEN"
        wn.add_source(f"CL_{node}", node, kind, mg_l / 1000.0, "CL_DOSE")


def set_contaminant(
    wn: Model, injections: Sequence[tuple[str, float, np.ndarray]], step_s: int
) -> None:
    """A conservative contaminant injected as MASS sources: (node, mg/min, on/off per step)."""
    q = wn.options.quality
    q.parameter = "CHEMICAL"
    q.chemical_name = "Contaminant"
    q.inpfile_units = "mg/L"
    wn.options.reaction.bulk_coeff = 0.0
    wn.options.reaction.wall_coeff = 0.0
    for name in list(wn.source_name_list):
        wn.remove_source(name)
    for _, node in wn.nodes():
        node.initial_quality = 0.0
    wn.options.time.pattern_timestep = step_s
    for n, (node, mg_min, shape) in enumerate(injections):
        wn.add_pattern(f"INJ_{n}", list(map(float, shape)))
        # MASS strength in SI is kg/s.
        wn.add_source(f"INJ_{n}", node, "MASS", mg_min / 60.0 / 1e6, f"INJ_{n}")


def probe_pressure(wn: Model) -> pd.Series:
    """Lowest pressure (m) at every junction over one nominal day, demand-driven, 1-hour steps."""
    probe = copy_network(wn)
    probe.options.hydraulic.demand_model = "DDA"
    no_quality(probe)
    set_timing(probe, DAY_S, 3600)
    results = simulate(probe)
    return results.pressure[list(probe.junction_name_list)].min()


def pump_and_valve_nodes(wn: Model) -> set[str]:
    """Nodes at either end of a pump or valve (suction and discharge sides)."""
    nodes: set[str] = set()
    for _, link in [*wn.pumps(), *wn.valves()]:
        nodes.update((link.start_node_name, link.end_node_name))
    return nodes


def inflow_junctions(wn: Model) -> list[str]:
    """Junctions whose base demands sum negative: inflows the model treats as sources."""
    return [
        str(name)
        for name, junction in wn.junctions()
        if sum(d.base_value for d in junction.demand_timeseries_list) < 0
    ]


def source_nodes(wn: Model) -> Sequence[str]:
    """Reservoirs and tanks."""
    return [*wn.reservoir_name_list, *wn.tank_name_list]
