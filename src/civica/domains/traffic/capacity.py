"""Can a signalised junction carry its demand at all? A bound no controller can beat.

For each traffic light of a SUMO network, the demand on each of its links (from the route
file: vehicles per hour turning from one edge to the next) is set against the most a link
can discharge while green. A linear programme then finds the least share of the hour the
light must spend in its green phases to serve that demand, whatever the order and length of
the phases: if that share is above 1, no signal controller using those phases serves the
demand, and the queue grows by the excess for as long as the demand lasts.

The bound is deliberately generous to the junction, so that "over 1" is a proof:

* every link discharges at the car-following limit of SUMO's default model (Krauss,
  reaction time 1 s, minimum gap 2.5 m) at the speed of its path through the junction;
  real queues discharge slower (drivers' imperfection, acceleration from a stop);
* a permissive green (``g``: yield to oncoming traffic) counts as a full green;
* no time is lost to yellow, all-red or start-up;
* a movement that several lanes serve is split between them in the best way;
* a lane shared by several links discharges at its fastest link's rate whenever any of its
  links is green (a vehicle waiting for a red link at the head of the lane is not counted
  as blocking the others).

Reads SUMO's XML only (no SUMO import). Trips without a route are routed by the shortest path
through the network's connections, as SUMO's router would for an empty network.
"""

from __future__ import annotations

import itertools
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import networkx as nx
import numpy as np
from scipy.optimize import linprog

REACTION_S = 1.0  # Krauss tau, SUMO's default
MIN_GAP_M = 2.5  # SUMO's default minGap
DEFAULT_LENGTH_M = 5.0
_MAY_PASS = frozenset("GgsoO")


@dataclass(frozen=True)
class Link:
    """One signal index: a lane of one edge into the next edge."""

    index: int
    from_edge: str
    from_lane: int
    to_edge: str
    speed: float  # m/s along its path through the junction


@dataclass
class Junction:
    """A traffic light: its links and the links each green phase serves."""

    tls: str
    links: dict[int, list[Link]] = field(default_factory=dict)  # several lanes may share one
    phases: list[frozenset[int]] = field(default_factory=list)


@dataclass(frozen=True)
class JunctionLoad:
    tls: str
    vehicles: int  # vehicles whose route crosses the junction
    demand_veh_h: float
    required_share: float  # least share of time in green phases that serves the demand
    servable_share: float  # of the demand, at most this much can be served (1 / required)
    unserved_vehicles: int  # at least this many are not through when the window ends

    @property
    def oversaturated(self) -> bool:
        return self.required_share > 1.0


def saturation_flow(speed: float, length: float = DEFAULT_LENGTH_M) -> float:
    """Vehicles per hour of green a lane can discharge at most at ``speed`` (m/s)."""
    headway = REACTION_S + (length + MIN_GAP_M) / max(speed, 0.1)
    return 3600.0 / headway


def read_network(net: Path) -> tuple[dict[str, Junction], nx.DiGraph]:
    """The traffic lights of a SUMO network, and its edge graph (edge lengths as ``length``)."""
    root = ET.parse(net).getroot()
    lane_speed: dict[str, float] = {}
    edge_length: dict[str, float] = {}
    for edge in root.iter("edge"):
        for lane in edge.iter("lane"):
            lane_speed[lane.get("id", "")] = float(lane.get("speed", "13.89"))
            if edge.get("function") != "internal":
                edge_length[edge.get("id", "")] = float(lane.get("length", "1"))
    junctions: dict[str, Junction] = {}
    for logic in root.iter("tlLogic"):
        tls = logic.get("id", "")
        if tls in junctions:  # the first programme is the one a scenario runs
            continue
        junction = junctions[tls] = Junction(tls)
        for phase in logic.iter("phase"):
            state = phase.get("state", "")
            if "y" in state.lower() or not any(c in "Gg" for c in state):
                continue  # yellow or all-red: no link is served
            # Green, permissive green, and the links a phase lets pass after a stop (s) or
            # without a signal (o, O) all count as served: the bound stays generous.
            green = frozenset(i for i, c in enumerate(state) if c in _MAY_PASS)
            if green not in junction.phases:
                junction.phases.append(green)
    graph = nx.DiGraph()
    for conn in root.iter("connection"):
        src, dst = conn.get("from", ""), conn.get("to", "")
        if src.startswith(":") or dst.startswith(":"):
            continue
        graph.add_edge(src, dst, length=edge_length.get(dst, 1.0))
        light = conn.get("tl")
        if light is None or light not in junctions:
            continue
        via = conn.get("via")
        speed = lane_speed.get(via or "", lane_speed.get(f"{dst}_0", 13.89))
        from_lane = int(conn.get("fromLane", "0"))
        link = Link(int(conn.get("linkIndex", "-1")), src, from_lane, dst, speed)
        junctions[light].links.setdefault(link.index, []).append(link)
    return junctions, graph


def read_routes(routes: Iterable[Path], graph: nx.DiGraph) -> Iterator[tuple[float, list[str]]]:
    """(departure, edges) of every vehicle: named routes, inline routes, routed trips."""
    for path in routes:
        root = ET.parse(path).getroot()
        named = {r.get("id"): r.get("edges", "").split() for r in root.findall("route")}
        for vehicle in root.iter("vehicle"):
            depart = _depart(vehicle.get("depart"))
            inline = vehicle.find("route")
            if inline is not None:
                yield depart, inline.get("edges", "").split()
            elif vehicle.get("route") in named:
                yield depart, named[vehicle.get("route")]
        for trip in root.iter("trip"):
            path_edges = shortest_path(graph, trip.get("from", ""), trip.get("to", ""))
            if path_edges:
                yield _depart(trip.get("depart")), path_edges


def _depart(text: str | None) -> float:
    try:
        return float(text or 0.0)
    except ValueError:  # "triggered", "now": counted at the start
        return 0.0


def shortest_path(graph: nx.DiGraph, start: str, goal: str) -> list[str]:
    """Edges from ``start`` to ``goal`` (inclusive) by length; empty if there is no path."""
    if start == goal:
        return [start]
    try:
        path: list[str] = nx.dijkstra_path(graph, start, goal, weight="length")
    except (nx.NetworkXNoPath, nx.NodeNotFound):
        return []
    return path


def junction_loads(
    junctions: dict[str, Junction], routes: list[list[str]], hours: float = 1.0
) -> list[JunctionLoad]:
    """Each light's least required green share for the demand of ``routes`` (the vehicles
    due in a window of ``hours``), and how many of them at least are still not through the
    light when the window ends: a light that can serve only a share of its demand rate
    serves only that share of its vehicles in the window."""
    loads = []
    for junction in junctions.values():
        movements: dict[tuple[str, str], int] = {}
        pairs = {(lk.from_edge, lk.to_edge) for links in junction.links.values() for lk in links}
        vehicles = 0
        for edges in routes:
            crossed = [pair for pair in itertools.pairwise(edges) if pair in pairs]
            for pair in crossed:
                movements[pair] = movements.get(pair, 0) + 1
            vehicles += bool(crossed)
        if not movements or not junction.phases:
            continue
        demand = {pair: n / hours for pair, n in movements.items()}
        share = required_share(junction, demand)
        servable = 1.0 if share <= 1.0 else 1.0 / share
        unserved = max(0, int(vehicles * (1.0 - servable)))
        loads.append(
            JunctionLoad(junction.tls, vehicles, sum(demand.values()), share, servable, unserved)
        )
    return loads


def required_share(junction: Junction, demand: dict[tuple[str, str], float]) -> float:
    """The least total share of time in green phases that serves ``demand`` (veh/h per
    (from edge, to edge) movement): a linear programme over phase shares and link flows."""
    phases = junction.phases
    links = [lk for group in junction.links.values() for lk in group]
    moves = sorted(demand)
    n_x, n_y = len(phases), len(links)
    # Variables: x_p (share of time in phase p), then y_l (veh/h sent over link l).
    cost = np.concatenate([np.ones(n_x), np.zeros(n_y)])
    a_ub: list[np.ndarray] = []
    b_ub: list[float] = []
    for j, link in enumerate(links):
        # y_l <= saturation_l * (sum of x_p over the phases that give link l green)
        row = np.zeros(n_x + n_y)
        for p, green in enumerate(phases):
            if link.index in green:
                row[p] = -saturation_flow(link.speed)
        row[n_x + j] = 1.0
        a_ub.append(row)
        b_ub.append(0.0)
    # A lane discharges one vehicle at a time, whichever link it takes: its links together
    # send at most the lane's saturation flow while any of them is green.
    lanes: dict[tuple[str, int], list[int]] = {}
    for j, link in enumerate(links):
        lanes.setdefault((link.from_edge, link.from_lane), []).append(j)
    for members in lanes.values():
        if len(members) < 2:
            continue
        row = np.zeros(n_x + n_y)
        fastest = max(saturation_flow(links[j].speed) for j in members)
        for p, green in enumerate(phases):
            if any(links[j].index in green for j in members):
                row[p] = -fastest
        for j in members:
            row[n_x + j] = 1.0
        a_ub.append(row)
        b_ub.append(0.0)
    a_eq: list[np.ndarray] = []
    b_eq: list[float] = []
    for move in moves:
        row = np.zeros(n_x + n_y)
        for j, link in enumerate(links):
            if (link.from_edge, link.to_edge) == move:
                row[n_x + j] = 1.0
        a_eq.append(row)
        b_eq.append(demand[move])
    result = linprog(
        cost,
        A_ub=np.array(a_ub),
        b_ub=np.array(b_ub),
        A_eq=np.array(a_eq),
        b_eq=np.array(b_eq),
        bounds=[(0, None)] * (n_x + n_y),
        method="highs",
    )
    if not result.success:  # a movement no phase ever serves
        return float("inf")
    return float(result.fun)


def capacity_report(
    net: Path,
    route_files: Iterable[Path],
    begin: float = 0.0,
    seconds: float = 3600.0,
    demand_scale: float = 1.0,
) -> dict[str, object]:
    """The bound for every light of a scenario over one window, busiest first (JSON-ready)."""
    junctions, graph = read_network(net)
    routes = [e for d, e in read_routes(route_files, graph) if begin <= d < begin + seconds]
    hours = seconds / 3600.0 / max(demand_scale, 1e-9)  # more demand = the same in less time
    loads = sorted(junction_loads(junctions, routes, hours), key=lambda x: -x.required_share)
    vehicles = round(len(routes) * demand_scale)
    worst = max((x.unserved_vehicles for x in loads), default=0)
    return {
        "vehicles": vehicles,
        "seconds": seconds,
        "lights": [
            {
                "tls": x.tls,
                "vehicles": round(x.vehicles * demand_scale),
                "demand_veh_h": round(x.demand_veh_h, 1),
                "required_green_share": round(x.required_share, 3),
                "oversaturated": x.oversaturated,
                "unserved_vehicles_at_least": round(x.unserved_vehicles * demand_scale),
            }
            for x in loads
        ],
        # No controller leaves fewer vehicles short of the busiest light's exit than this.
        "unfinished_share_at_least": round(worst * demand_scale / vehicles, 4) if vehicles else 0,
    }
