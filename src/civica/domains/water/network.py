"""The water engine: the only module that imports WNTR (EPANET); its errors become ours.

Everything here works in SI units, as WNTR does internally: m, m³/s, s, mg/L.
"""

from __future__ import annotations

import ctypes
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
    long = _write_stubbed(wn, Path(path))
    _fill_patterns(Path(path), long)


# WNTR formats pattern values one at a time (10 s for a month of per-junction patterns on
# ky10), so patterns longer than this are written as one-value stubs and then filled in: by
# one join per pattern in a written file, through the toolkit (EN_setpattern) for a run.
LONG_PATTERN = 96


def _write_stubbed(wn: Model, path: Path) -> dict[str, np.ndarray]:
    """Write ``wn`` with its long patterns cut to one value; returns their real values."""
    long = {
        str(name): np.asarray(pattern.multipliers, dtype=float)
        for name, pattern in wn.patterns()
        if len(pattern.multipliers) > LONG_PATTERN
    }
    try:
        for name in long:
            wn.get_pattern(name).multipliers = [1.0]
        with _quiet():
            wntr.network.write_inpfile(wn, str(path), units="LPS", version=2.2)
    finally:
        for name, values in long.items():
            wn.get_pattern(name).multipliers = values.tolist()
    return long


def _load_patterns(engine: Any, long: dict[str, np.ndarray]) -> None:
    """Give an opened EPANET project the real values of stubbed patterns."""
    # WNTR wraps neither call; its ENepanet keeps the EPANET 2.2 project handle in _project.
    lib, project = engine.ENlib, engine._project
    for name, values in long.items():
        index = ctypes.c_int()
        code = lib.EN_getpatternindex(project, name.encode("latin-1"), ctypes.byref(index))
        data = np.ascontiguousarray(values, dtype=np.float64)
        pointer = data.ctypes.data_as(ctypes.POINTER(ctypes.c_double))
        code = code or lib.EN_setpattern(project, index, pointer, len(data))
        if code:
            raise SimulationError(f"EPANET error {code} setting pattern {name}")


def _fill_patterns(path: Path, long: dict[str, np.ndarray]) -> None:
    """Replace the one-value stubs of ``long`` patterns in an .inp by their values, and drop
    WNTR's file name and clock time so that the same model always gives the same file."""
    lines = [
        line
        for line in path.read_text().split("\n")
        if not line.startswith(("; Filename:", "; Created:"))
    ]
    section = ""
    for i, line in enumerate(lines):
        if line.startswith("["):
            section = line.strip().upper()
        elif section == "[PATTERNS]" and line.split(" ", 1)[0] in long:
            name = line.split(" ", 1)[0]
            values = long[name]
            lines[i] = "\n".join(
                name + " " + " ".join(f"{v:.6g}" for v in values[k : k + 12])
                for k in range(0, len(values), 12)
            )
    path.write_text("\n".join(lines))


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
    link_ends: dict[str, tuple[str, str]]
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
        link_ends={
            str(name): (link.start_node_name, link.end_node_name) for name, link in wn.links()
        },
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


def distances_from_link(graph: nx.Graph, a: str, within: float | None = None) -> dict[str, float]:
    """Distance in m along the network from the midpoint of link ``a`` to every link's midpoint.

    Links that cannot be reached are left out, and with ``within`` so are those farther than
    that (the search then stops there).
    """
    links: dict[str, tuple[str, str, float]] = graph.graph["links"]
    ua, va, la = links[a]
    reach = [
        nx.single_source_dijkstra_path_length(graph, end, cutoff=within, weight="length")
        for end in (ua, va)
    ]
    limit = math.inf if within is None else within
    table: dict[str, float] = {}
    for name, (u, v, length) in links.items():
        best = min(r.get(end, math.inf) for r in reach for end in (u, v))
        distance = 0.0 if name == a else la / 2 + best + length / 2
        if math.isfinite(best) and distance <= limit:
            table[name] = distance
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
    # A month of noisy demand can leave a step unsolved; EPANET's default then ends the whole
    # run without an error, so carry on with the last solution and count those steps instead.
    h.unbalanced = "CONTINUE"
    h.unbalanced_value = 10
    h.demand_model = "PDD"
    h.required_pressure = required_m
    h.minimum_pressure = minimum_m
    h.pressure_exponent = 0.5


def allow_overflow(wn: Model) -> None:
    """Let every tank spill when full (EPANET 2.2 tank overflow), as real tanks do.

    Without it a full tank is closed, and a network fed by fixed injections (Net2's well is a
    negative demand) has nowhere to put the water: EPANET then returns heads of a million
    metres. What spills is water that entered the tank, so a meter on the tank's link still
    closes the water balance."""
    for _, tank in wn.tanks():
        tank.overflow = True


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
class Watch:
    """What to record from a run, at every multiple of ``step_s``: node pressure (m; the level
    in tanks), link flow (m³/s), delivered node demand (m³/s), node quality (mg/L)."""

    step_s: int
    pressure: Sequence[str] = ()
    flow: Sequence[str] = ()
    demand: Sequence[str] = ()
    quality: Sequence[str] = ()


@dataclass(frozen=True)
class Results:
    """Recorded series indexed by time (s), one column per watched element."""

    pressure: pd.DataFrame
    flow: pd.DataFrame
    demand: pd.DataFrame
    quality: pd.DataFrame
    unbalanced: tuple[int, ...]  # times (s) EPANET could not balance (it went on regardless)


# Called with the phase ("hydraulics" or "quality") and the simulated time (s) reached.
EngineProgress = Callable[[str, int], None]

# EPANET toolkit codes (epanet2.h) and the unit of each in an LPS .inp, to SI.
_PRESSURE, _DEMAND, _QUALITY, _FLOW = 11, 9, 12, 8
_LPS = 0.001


def simulate(
    wn: Model,
    watch: Watch,
    progress: EngineProgress | None = None,
    *,
    save_hydraulics: Path | None = None,
    use_hydraulics: Path | None = None,
) -> Results:
    """Run EPANET 2.2 on ``wn`` step by step and record what ``watch`` asks for.

    Water quality runs too unless the model's quality parameter is NONE. Values are read from
    the solver as it goes rather than from EPANET's binary output, which for a month of a
    3,000-node network is half a gigabyte. ``save_hydraulics`` keeps the hydraulic solution so
    another water-quality setting of the same network can run on it (``use_hydraulics``).
    """
    quality = str(wn.options.quality.parameter).upper() != "NONE"
    report = progress or (lambda phase, now: None)
    hydraulic: dict[int, list[float]] = {}
    chemistry: dict[int, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="civica-epanet-") as tmp, _quiet():
        inp, rpt = str(Path(tmp) / "run.inp"), str(Path(tmp) / "run.rpt")
        try:
            long = _write_stubbed(wn, Path(inp))
            engine = ENepanet(version=2.2)
            # An explicit output file keeps EPANET's scratch file out of the working directory
            # (with "" it makes one there, left behind if the run is interrupted).
            engine.ENopen(inp, rpt, str(Path(tmp) / "run.bin"))
            _load_patterns(engine, long)
            node = {n: engine.ENgetnodeindex(n) for n in {*watch.pressure, *watch.demand}}
            node.update({n: engine.ENgetnodeindex(n) for n in watch.quality})
            link = {name: engine.ENgetlinkindex(name) for name in watch.flow}

            def record_h(now: int) -> None:
                hydraulic[now] = [
                    *(engine.ENgetnodevalue(node[n], _PRESSURE) for n in watch.pressure),
                    *(engine.ENgetlinkvalue(link[n], _FLOW) * _LPS for n in watch.flow),
                    *(engine.ENgetnodevalue(node[n], _DEMAND) * _LPS for n in watch.demand),
                ]

            def record_q(now: int) -> None:
                chemistry[now] = [engine.ENgetnodevalue(node[n], _QUALITY) for n in watch.quality]

            unbalanced: list[int] = []
            if use_hydraulics is None:
                unbalanced = _run_phase(
                    engine, "hydraulics", watch.step_s, record_h, report, quality
                )
            else:
                engine.ENusehydfile(str(use_hydraulics))
            if save_hydraulics is not None:
                engine.ENsavehydfile(str(save_hydraulics))
            if quality:
                _run_phase(engine, "quality", watch.step_s, record_q, report, False)
            engine.ENclose()
        except EpanetException as err:
            raise SimulationError(f"EPANET failed: {err}") from err
    columns = [*watch.pressure, *watch.flow, *watch.demand]
    table = pd.DataFrame.from_dict(hydraulic, orient="index", columns=columns).sort_index()
    parts = np.cumsum([0, len(watch.pressure), len(watch.flow), len(watch.demand)])
    return Results(
        pressure=table.iloc[:, parts[0] : parts[1]],
        flow=table.iloc[:, parts[1] : parts[2]],
        demand=table.iloc[:, parts[2] : parts[3]],
        quality=pd.DataFrame.from_dict(chemistry, orient="index", columns=list(watch.quality)),
        unbalanced=tuple(unbalanced),
    )


def _run_phase(
    engine: Any,
    phase: str,
    step_s: int,
    record: Callable[[int], None],
    report: EngineProgress,
    save: bool,
) -> list[int]:
    """Step EPANET's hydraulic or quality solver to the end, recording at multiples of step_s;
    returns the times (s) of steps left with warning 1 (hydraulically unbalanced)."""
    if phase == "hydraulics":
        engine.ENopenH()
        engine.ENinitH(11 if save else 10)  # re-initialise flows; save for the quality solver
        run, advance, close = engine.ENrunH, engine.ENnextH, engine.ENcloseH
    else:
        engine.ENopenQ()
        engine.ENinitQ(0)
        run, advance, close = engine.ENrunQ, engine.ENnextQ, engine.ENcloseQ
    unbalanced: list[int] = []
    duration = int(engine.ENgettimeparam(0))  # EN_DURATION
    while True:
        now = run()
        if engine.errcode == 1:
            unbalanced.append(now)
        if now % step_s == 0:
            record(now)
            report(phase, now)
        if advance() <= 0:
            break
    close()
    if now < duration:
        raise SimulationError(f"EPANET stopped the {phase} at {now} s of {duration} s")
    return unbalanced


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


def probe(wn: Model, days: int = 1) -> tuple[pd.DataFrame, pd.Series]:
    """Nominal days, demand-driven, at 1-hour steps: the pressure (m) at every junction hour
    by hour and the mean absolute flow (m³/s) in every link. Changes ``wn``'s options."""
    wn.options.hydraulic.demand_model = "DDA"
    wn.options.hydraulic.unbalanced = "CONTINUE"
    wn.options.hydraulic.unbalanced_value = 10
    no_quality(wn)
    set_timing(wn, days * DAY_S, 3600)
    watch = Watch(3600, pressure=list(wn.junction_name_list), flow=list(wn.link_name_list))
    results = simulate(wn, watch)
    return results.pressure, results.flow.abs().mean()


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


# --- model-based leak localisation ---
# Owned by the leak detector (leaks.py). Two things are asked of EPANET here: a "tracking" run
# that follows the real network's tank levels and metered consumption step by step, so that the
# model predicts what each pressure logger should read if nothing leaked; and the linearised
# response of every logger to a small leak on every pipe, which says where a leak must be to
# explain an observed pattern of pressure drops.

_EN_DEMANDMULT = 4  # EPANET option code (toolkit)
_TANK_TOLERANCE_M = 0.05  # re-sync a model tank only when it drifts this far from the reading
_TANK_SNAP_M = 0.03  # a reading this close to a tank's limit means full (or empty)
_FLOW_FLOOR = 5e-4  # m³/s: smallest flow used for a tangent conductance (about a small leak)
# m³/s per unit of each EPANET flow-unit code (CFS, GPM, MGD, IMGD, AFD, LPS, LPM, MLD, CMH, CMD)
_FLOW_UNITS = (0.0283168, 6.30902e-5, 0.0438126, 0.0526168, 0.0142764, 1e-3, 1 / 60000, 0.0115741)
_FLOW_UNITS_CMH_CMD = (1 / 3600, 1 / 86400)


@dataclass(frozen=True)
class _Units:
    """SI per unit of what the toolkit reports for a project (it speaks the .inp's units)."""

    flow: float  # m³/s
    length: float  # m (heads, elevations, levels)
    pressure: float  # m of head

    @classmethod
    def of(cls, engine: Any) -> _Units:
        code = int(engine.ENgetflowunits())
        flow = (_FLOW_UNITS + _FLOW_UNITS_CMH_CMD)[code]
        us = code <= 4  # US customary: feet and psi
        return cls(flow=flow, length=0.3048 if us else 1.0, pressure=0.70307 if us else 1.0)


@dataclass(frozen=True)
class HydraulicState:
    """One solved instant: heads (m) and demands (m³/s) per node, flows (m³/s) and settings
    per link, and which links were shut, in the order of ``LinkTable``."""

    head: np.ndarray
    demand: np.ndarray
    flow: np.ndarray
    setting: np.ndarray
    shut: np.ndarray


@dataclass(frozen=True)
class Tracking:
    """A tracking run: model pressure at each logger and model level in each tank, per step,
    and the full solution (in ``LinkTable`` order) at the requested steps."""

    pressure: np.ndarray  # (steps, loggers) m
    level: np.ndarray  # (steps, tanks) m
    states: dict[int, HydraulicState]
    flow: np.ndarray  # (steps, metered links) m³/s, start to end positive


@dataclass(frozen=True)
class LinkTable:
    """What the linearisation needs of every node and link, in EPANET index order."""

    nodes: tuple[str, ...]
    links: tuple[str, ...]
    start: np.ndarray  # node index of each link's start
    end: np.ndarray
    kind: tuple[str, ...]  # pipe | pump | valve
    resistance: np.ndarray  # pipes: friction r in h = r·Q^n (SI); pumps: curve B
    exponent: np.ndarray  # pipes: n; pumps: curve C
    minor: np.ndarray  # pipes: minor-loss r in h = r·Q²
    power: np.ndarray  # power pumps: W (0 for curve pumps)
    prv: np.ndarray  # link is a pressure-reducing valve
    fixed: np.ndarray  # node is a reservoir or tank (fixed head over minutes)
    elevation: np.ndarray  # m
    junctions: np.ndarray  # node is a junction
    pipe_index: np.ndarray  # indices of the pipes among the links


def link_table(wn: Model) -> LinkTable:
    """Node and link data of a model for ``leak_response``."""
    nodes = tuple(wn.node_name_list)
    links = tuple(wn.link_name_list)
    where = {name: i for i, name in enumerate(nodes)}
    n_links = len(links)
    resistance, exponent = np.zeros(n_links), np.ones(n_links)
    minor, power = np.zeros(n_links), np.zeros(n_links)
    kinds: list[str] = []
    headloss = str(wn.options.hydraulic.headloss).upper()
    for i, name in enumerate(links):
        link = wn.get_link(name)
        if isinstance(link, wntr.network.Pipe):
            kinds.append("pipe")
            length, diameter = float(link.length), float(link.diameter)
            if headloss == "H-W":
                resistance[i] = 10.667 * length / (link.roughness**1.852 * diameter**4.871)
                exponent[i] = 1.852
            elif headloss == "C-M":
                resistance[i] = 10.29 * link.roughness**2 * length / diameter**5.333
                exponent[i] = 2.0
            else:  # D-W: a typical turbulent friction factor is close enough for a slope
                resistance[i] = 8.0 * 0.02 * length / (9.81 * math.pi**2 * diameter**5)
                exponent[i] = 2.0
            minor[i] = 8.0 * float(link.minor_loss) / (9.81 * math.pi**2 * diameter**4)
        elif isinstance(link, wntr.network.Pump):
            kinds.append("pump")
            if link.pump_type == "POWER":
                power[i] = float(link.power)
            else:
                with _quiet():  # WNTR fits the curve with scipy, which warns on 1-point curves
                    _, resistance[i], exponent[i] = link.get_head_curve_coefficients()
        else:
            kinds.append("valve")
    return LinkTable(
        nodes=nodes,
        links=links,
        start=np.array([where[wn.get_link(n).start_node_name] for n in links], dtype=int),
        end=np.array([where[wn.get_link(n).end_node_name] for n in links], dtype=int),
        kind=tuple(kinds),
        resistance=resistance,
        exponent=exponent,
        minor=minor,
        power=power,
        prv=np.array([getattr(wn.get_link(n), "valve_type", "") == "PRV" for n in links]),
        fixed=np.array([n in set(wn.reservoir_name_list) | set(wn.tank_name_list) for n in nodes]),
        elevation=np.array(
            [float(getattr(wn.get_node(n), "elevation", 0.0) or 0.0) for n in nodes]
        ),
        junctions=np.array([n in set(wn.junction_name_list) for n in nodes]),
        pipe_index=np.array([i for i, k in enumerate(kinds) if k == "pipe"], dtype=int),
    )


def track_network(
    path: Path,
    table: LinkTable,
    step_s: int,
    multiplier: np.ndarray,
    levels: dict[str, np.ndarray],
    loggers: Sequence[str],
    state_steps: Sequence[int] = (),
    meters: Sequence[str] = (),
) -> Tracking:
    """Run the model over ``len(multiplier)`` steps with every demand scaled by ``multiplier``
    (per step) and each tank kept within 5 cm of ``levels`` (m, per step, NaN = unknown);
    return the pressures (m) the model gives at the ``loggers`` (junction ids) and the flows
    (m³/s) in the ``meters`` (link ids)."""
    import ctypes

    steps = len(multiplier)
    wanted = set(state_steps)
    tanks = list(levels)
    with tempfile.TemporaryDirectory(prefix="civica-track-") as tmp, _quiet():
        try:
            engine = ENepanet(version=2.2)
            engine.ENopen(str(path), str(Path(tmp) / "run.rpt"), str(Path(tmp) / "run.bin"))
            for code, value in ((1, step_s), (0, (steps - 1) * step_s), (5, step_s)):
                engine.ENsettimeparam(code, value)  # hydraulic step, duration, report step
            logger_ix = [engine.ENgetnodeindex(n) for n in loggers]
            meter_ix = [engine.ENgetlinkindex(n) for n in meters]
            node_ix = [engine.ENgetnodeindex(n) for n in table.nodes]
            link_ix = [engine.ENgetlinkindex(n) for n in table.links]
            tank_ix = [engine.ENgetnodeindex(t) for t in tanks]
            units = _Units.of(engine)
            lows = [engine.ENgetnodevalue(i, 20) * units.length for i in tank_ix]  # EN_MINLEVEL
            highs = [engine.ENgetnodevalue(i, 21) * units.length for i in tank_ix]  # EN_MAXLEVEL
            floors = [engine.ENgetnodevalue(i, 0) * units.length for i in tank_ix]  # EN_ELEVATION
            switches = _level_controls(engine, tanks, units)
            # Injections (negative base demands, e.g. wells) are what the model says they are;
            # EPANET's demand multiplier would scale them too, so their base is divided by it.
            wells = [
                (i, engine.ENgetnodevalue(i, 1))  # EN_BASEDEMAND
                for i in range(1, engine.ENgetcount(0) + 1)
                if engine.ENgetnodetype(i) == 0 and engine.ENgetnodevalue(i, 1) < 0
            ]
            pressure = np.full((steps, len(loggers)), np.nan)
            level = np.full((steps, len(tanks)), np.nan)
            flow = np.full((steps, len(meters)), np.nan)
            states: dict[int, HydraulicState] = {}
            engine.ENopenH()
            engine.ENinitH(0)
            now = 0
            while True:
                k = now // step_s
                if now % step_s == 0 and k < steps:
                    code = engine.ENlib.EN_setoption(
                        engine._project,
                        ctypes.c_int(_EN_DEMANDMULT),
                        ctypes.c_double(float(multiplier[k])),
                    )
                    if code >= 100:
                        raise SimulationError(f"EPANET refused demand multiplier {multiplier[k]}")
                    for ix, base in wells:
                        engine.ENsetnodevalue(ix, 1, base / float(multiplier[k]))
                    for j, ix in enumerate(tank_ix):
                        target, tolerance = _tank_target(
                            float(levels[tanks[j]][k]), lows[j], highs[j]
                        )
                        current = engine.ENgetnodevalue(ix, 10) * units.length - floors[j]
                        if math.isfinite(target) and abs(current - target) > tolerance:
                            engine.ENsetnodevalue(ix, 8, target / units.length)  # EN_TANKLEVEL
                    for switch in switches:
                        switch.apply(engine, float(levels[switch.tank][k]))
                now = engine.ENrunH()
                k = now // step_s
                if now % step_s == 0 and k < steps:
                    pressure[k] = [engine.ENgetnodevalue(i, 11) for i in logger_ix]
                    level[k] = [engine.ENgetnodevalue(i, 10) for i in tank_ix]
                    flow[k] = [engine.ENgetlinkvalue(i, 8) for i in meter_ix]  # EN_FLOW
                    if k in wanted:
                        states[k] = _solved_state(engine, node_ix, link_ix, units)
                if engine.ENnextH() <= 0:
                    break
            engine.ENcloseH()
            engine.ENclose()
        except EpanetException as err:
            raise SimulationError(f"EPANET failed while tracking {path.name}: {err}") from err
    return Tracking(
        pressure=pressure * units.pressure,
        level=level * units.length - np.array(floors),
        states=states,
        flow=flow * units.flow,
    )


def _tank_target(level: float, low: float, high: float) -> tuple[float, float]:
    """The level (m) to hold a model tank at and the drift (m) tolerated before resetting it.

    A tank reading within the noise of its minimum or maximum is empty or full: the model tank
    is held exactly there, or EPANET would keep it filling (or draining) the network.
    """
    if level >= high - _TANK_SNAP_M:
        return high, 1e-3
    if level <= low + _TANK_SNAP_M:
        return low, 1e-3
    return level, _TANK_TOLERANCE_M


@dataclass(frozen=True)
class _LevelSwitch:
    """A simple control "LINK x setting IF tank BELOW/ABOVE level", taken out of EPANET and
    applied on the *measured* level: a model tank only follows the readings to within a few
    centimetres, enough to leave a pump in the wrong state for hours inside its hysteresis."""

    link: int  # EPANET index
    kind: int  # EPANET link type (2 = pump, 3+ = valve)
    setting: float
    tank: str
    level: float  # m
    below: bool

    def apply(self, engine: Any, level: float) -> None:
        """Switch the link if the measured level meets the condition."""
        if not math.isfinite(level):
            return
        if (self.below and level > self.level) or (not self.below and level < self.level):
            return
        if self.setting == 0:
            engine.ENsetlinkvalue(self.link, 11, 0.0)  # EN_STATUS closed
        elif self.kind >= 2:
            engine.ENsetlinkvalue(self.link, 5, self.setting)  # EN_SETTING: speed or valve
        else:
            engine.ENsetlinkvalue(self.link, 11, 1.0)


def _level_controls(engine: Any, tanks: Sequence[str], units: _Units) -> list[_LevelSwitch]:
    """Remove EPANET's tank-level controls on measured tanks and return them as switches."""
    measured = set(tanks)
    switches = []
    for i in range(engine.ENgetcount(5), 0, -1):  # EN_CONTROLCOUNT; delete from the end
        control = engine.ENgetcontrol(i)
        if control["type"] not in (0, 1) or not control["nodeindex"]:
            continue
        tank = engine.ENgetnodeid(control["nodeindex"])
        if tank not in measured:
            continue
        link = control["linkindex"]
        switches.append(
            _LevelSwitch(
                link=link,
                kind=engine.ENgetlinktype(link),
                setting=float(control["setting"]),
                tank=tank,
                level=float(control["level"]) * units.length,
                below=control["type"] == 0,
            )
        )
        engine.ENdeletecontrol(i)
    return switches[::-1]


def _solved_state(engine: Any, nodes: list[int], links: list[int], units: _Units) -> HydraulicState:
    """Heads (m), demands and flows (m³/s), settings (valves: m; pumps: speed) of the given
    nodes and links (EPANET indices)."""
    valve = np.array([engine.ENgetlinktype(i) >= 3 for i in links])
    setting = np.array([engine.ENgetlinkvalue(i, 5) for i in links])
    return HydraulicState(
        head=np.array([engine.ENgetnodevalue(i, 10) for i in nodes]) * units.length,
        demand=np.array([engine.ENgetnodevalue(i, 9) for i in nodes]) * units.flow,
        flow=np.array([engine.ENgetlinkvalue(i, 8) for i in links]) * units.flow,
        setting=np.where(valve, setting * units.pressure, setting),
        shut=np.array([engine.ENgetlinkvalue(i, 11) == 0 for i in links]),
    )


@dataclass(frozen=True)
class LeakResponse:
    """Linear response of the loggers around one hydraulic state (m per m³/s or per m).

    ``pipe[i, p]``: pressure change at logger i per m³/s leaking from the middle of pipe p
    (``LinkTable.pipe_index`` order); ``uniform[i]``: per m³/s of extra consumption spread like
    the demand; ``tank[i, m]``: per m of level in the m-th requested tank.
    """

    pipe: np.ndarray
    uniform: np.ndarray
    tank: np.ndarray
    # the same for the flow (m³/s, start to end) in each requested metered link, per m³/s
    meter_pipe: np.ndarray
    meter_uniform: np.ndarray


def leak_response(
    table: LinkTable,
    state: HydraulicState,
    loggers: Sequence[str],
    tanks: Sequence[str],
    meters: Sequence[str] = (),
) -> LeakResponse:
    """Linearise the network equations at ``state`` and solve for the loggers' responses.

    Heads of free nodes obey L·δh = B·δH_fixed - δd with L the Laplacian weighted by each
    link's conductance dQ/dΔH; tanks, reservoirs and active PRV outlets hold their heads. One
    sparse solve per logger (L is symmetric) gives its response to a demand at every node; a
    metered link's flow responds as its conductance times the change of its head difference
    (one solve for each of its ends).
    """
    import scipy.sparse as sp
    import scipy.sparse.linalg as spla

    g = _conductances(table, state)
    fixed = table.fixed.copy()
    active = (
        table.prv
        & ~state.shut
        & (np.abs(state.head[table.end] - table.elevation[table.end] - state.setting) < 0.05)
    )
    fixed[table.end[active]] = True
    g[active] = 0.0  # an active PRV holds its outlet head; its inlet sees only its flow
    fixed |= _cut_off(table, g, fixed)
    free = np.flatnonzero(~fixed)
    position = np.full(len(table.nodes), -1)
    position[free] = np.arange(len(free))
    a, b = position[table.start], position[table.end]
    both = (a >= 0) & (b >= 0) & (g > 0)
    rows = np.concatenate([a[both], b[both], a[both], b[both]])
    cols = np.concatenate([a[both], b[both], b[both], a[both]])
    vals = np.concatenate([g[both], g[both], -g[both], -g[both]])
    for here, there in ((a, table.end), (b, table.start)):  # links to a fixed head: diagonal only
        edge = (here >= 0) & (position[there] < 0) & (g > 0)
        rows = np.concatenate([rows, here[edge]])
        cols = np.concatenate([cols, here[edge]])
        vals = np.concatenate([vals, g[edge]])
    n = len(free)
    # A tiny leak to ground keeps nodes cut off from every fixed head solvable.
    lap = sp.csc_matrix((vals, (rows, cols)), shape=(n, n)) + 1e-9 * sp.identity(n, format="csc")
    index = {name: i for i, name in enumerate(table.nodes)}
    link_at = {name: i for i, name in enumerate(table.links)}
    metered = [link_at[m] for m in meters]
    # heads watched: the loggers, then the start and end node of every metered link
    watched = [index[name] for name in loggers]
    watched += [int(table.start[i]) for i in metered] + [int(table.end[i]) for i in metered]
    observe = np.zeros((n, len(watched)))
    for j, node in enumerate(watched):
        if position[node] >= 0:
            observe[position[node], j] = 1.0
    solved_all = spla.splu(lap).solve(observe)  # (free nodes, watched) = L⁻¹ columns
    solved = solved_all[:, : len(loggers)]
    heads = np.zeros((len(watched), len(table.nodes)))
    heads[:, free] = -solved_all.T  # δh at each watched node per m³/s drawn at each node
    per_node = heads[: len(loggers)]  # δp at each logger per m³/s drawn at each node
    pipes = table.pipe_index
    pipe = 0.5 * (per_node[:, table.start[pipes]] + per_node[:, table.end[pipes]])
    weights = np.where(table.junctions, np.clip(state.demand, 0.0, None), 0.0)
    uniform = per_node @ (weights / weights.sum()) if weights.sum() > 0 else np.zeros(len(loggers))
    tank = np.zeros((len(loggers), len(tanks)))
    for m, name in enumerate(tanks):
        t = index[name]
        for here, there in ((a, table.end), (b, table.start)):
            edge = (here >= 0) & (there == t) & (g > 0)
            tank[:, m] += solved[here[edge]].T @ g[edge]
    k = len(metered)
    starts, ends = heads[len(loggers) : len(loggers) + k], heads[len(loggers) + k :]
    meter_node = (starts - ends) * g[metered][:, None]  # δQ per m³/s drawn at each node
    meter_pipe = 0.5 * (meter_node[:, table.start[pipes]] + meter_node[:, table.end[pipes]])
    meter_uniform = meter_node @ (weights / weights.sum()) if weights.sum() > 0 else np.zeros(k)
    return LeakResponse(
        pipe=pipe, uniform=uniform, tank=tank, meter_pipe=meter_pipe, meter_uniform=meter_uniform
    )


def _cut_off(table: LinkTable, g: np.ndarray, fixed: np.ndarray) -> np.ndarray:
    """Nodes joined to no fixed head through open links (behind a shut pump or valve): they
    get no supply, so they neither respond to nor reveal a leak; treating them as fixed keeps
    the system well posed."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(table.nodes)
    open_ = g > 0
    graph = coo_matrix((np.ones(int(open_.sum())), (table.start[open_], table.end[open_])), (n, n))
    _, label = connected_components(graph, directed=False)
    anchored = np.zeros(label.max() + 1, dtype=bool)
    anchored[label[fixed]] = True
    cut: np.ndarray = ~anchored[label]
    return cut


def _conductances(table: LinkTable, state: HydraulicState) -> np.ndarray:
    """dQ/dΔH (m²/s) of every link around ``state``; 0 for shut links."""
    q = np.maximum(np.abs(state.flow), _FLOW_FLOOR)
    gain = np.maximum(state.head[table.end] - state.head[table.start], 1e-3)
    pipe = np.array([k == "pipe" for k in table.kind])
    pump = np.array([k == "pump" for k in table.kind])
    slope = np.ones(len(table.links))
    slope[pipe] = (
        table.exponent[pipe] * table.resistance[pipe] * q[pipe] ** (table.exponent[pipe] - 1)
        + 2.0 * table.minor[pipe] * q[pipe]
    )
    power = pump & (table.power > 0)
    slope[power] = gain[power] / q[power]
    curve = pump & ~power
    speed = np.where(state.setting[curve] > 0, state.setting[curve], 1.0)
    slope[curve] = (
        table.resistance[curve]
        * table.exponent[curve]
        * speed ** (2 - table.exponent[curve])
        * q[curve] ** (table.exponent[curve] - 1)
    )
    valve = ~pipe & ~pump  # an open valve: a short pipe following its current headloss
    drop = np.abs(state.head[table.start] - state.head[table.end])
    slope[valve] = np.maximum(2.0 * drop[valve], 1e-3) / q[valve]
    g = 1.0 / np.maximum(slope, 1e-12)
    g[state.shut] = 0.0
    return g


def inlet_signs(wn: Model, links: Sequence[str]) -> dict[str, int]:
    """+1 when a link's positive flow leaves a reservoir or tank into the network, -1 when it
    enters one, 0 when it joins two sources or none (then it says nothing about consumption)."""
    sources = set(source_nodes(wn))
    signs = {}
    for name in links:
        link = wn.get_link(name)
        signs[name] = int(link.start_node_name in sources) - int(link.end_node_name in sources)
    return signs


def demand_centre_pipe(wn: Model) -> str:
    """The pipe whose midpoint is nearest the demand-weighted centroid of the junctions."""
    weights, points = [], []
    for _, junction in wn.junctions():
        base = sum(max(float(d.base_value), 0.0) for d in junction.demand_timeseries_list)
        weights.append(base)
        points.append(junction.coordinates)
    w = np.array(weights) if sum(weights) > 0 else np.ones(len(weights))
    centre = (np.array(points, dtype=float) * w[:, None]).sum(axis=0) / w.sum()
    best, gap = "", math.inf
    for name, pipe in wn.pipes():
        a = np.array(pipe.start_node.coordinates, dtype=float)
        b = np.array(pipe.end_node.coordinates, dtype=float)
        distance = float(np.hypot(*((a + b) / 2 - centre)))
        if distance < gap:
            best, gap = name, distance
    return best
