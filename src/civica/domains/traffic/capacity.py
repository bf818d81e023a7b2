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
* a link that must yield (a permissive left ``g``, a turn on red ``s``) shares the time of
  its crossing with the links it yields to in that phase, each at its own saturation flow:
  as if it went exactly in the time its foe's queue does not use. SUMO's gap acceptance
  gives it far less (arterial4x4's nt3: with 600 veh/h of oncoming through traffic the
  permissive left delivers 432 veh/h, against 940 by this rule); the junction's
  right-of-way table (``request``) says who yields to whom, and without one nothing does;
* no time is lost to yellow, all-red or start-up;
* a movement that several lanes serve is split between them in the best way;
* a lane shared by several links discharges at its fastest link's rate whenever any of its
  links is green (a vehicle waiting for a red link at the head of the lane is not counted
  as blocking the others).

Reads SUMO's XML only (no SUMO import). Trips without a route are routed by the shortest path
through the network's connections, as SUMO's router would for an empty network.

**Measured saturation flows** (:func:`measure_saturation`, ``civica traffic capacity
--measure``). The car-following limit ignores SUMO's driver imperfection (Krauss ``sigma``)
and the slowing into a turn, so it overstates what a lane discharges by a quarter or more
(arterial4x4's left turn at nt3: 1,930 veh/h by the limit, 1,505 measured). Measuring asks SUMO
itself: every loaded link in turn gets a permanent green on its own, with more vehicles (of
the type most of the scenario's vehicles use) than it can take, and what it delivers after a
warm-up is its saturation flow. A link cannot deliver more under any control: its green is
never longer, nothing conflicting ever crosses it, and offering fewer vehicles at a time
does not raise it (checked on that left turn: offered 1,440 veh/h it delivers 1,466; offered
1,620-3,240, 1,502-1,512). The figures carry about 2 % of sampling noise.
"""

from __future__ import annotations

import itertools
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import networkx as nx
import numpy as np
from scipy.optimize import linprog

REACTION_S = 1.0  # Krauss tau, SUMO's default
MIN_GAP_M = 2.5  # SUMO's default minGap
DEFAULT_LENGTH_M = 5.0
_MAY_PASS = frozenset("GgsoO")
_YIELDS = frozenset("gso")  # passes only in the gaps of the links it yields to


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
    """A traffic light: its links, the links each green phase serves (and of those, the ones
    that must yield: permissive greens), and whom each link yields to."""

    tls: str
    links: dict[int, list[Link]] = field(default_factory=dict)  # several lanes may share one
    phases: list[frozenset[int]] = field(default_factory=list)
    minor: list[frozenset[int]] = field(default_factory=list)  # per phase: g, s and o links
    yields: dict[int, frozenset[int]] = field(default_factory=dict)  # index -> foes' indices
    size: int = 0  # characters in its state strings


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
            junction.size = max(junction.size, len(state))
            if "y" in state.lower() or not any(c in "Gg" for c in state):
                continue  # yellow or all-red: no link is served
            # Green, permissive green, and the links a phase lets pass after a stop (s) or
            # without a signal (o, O) all count as served: the bound stays generous.
            green = frozenset(i for i, c in enumerate(state) if c in _MAY_PASS)
            minor = frozenset(i for i, c in enumerate(state) if c in _YIELDS)
            if (green, minor) not in zip(junction.phases, junction.minor, strict=True):
                junction.phases.append(green)
                junction.minor.append(minor)
    # Who yields to whom is the junction's right-of-way table (``request``: bit k of link i's
    # ``response``, counted from the right, says i yields to k), indexed by the junction's own
    # link numbers; a connection's internal lane (``via=":J_i_0"``) names its junction and i.
    responses: dict[tuple[str, int], str] = {}
    for element in root.iter("junction"):
        for request in element.iter("request"):
            key = (element.get("id", ""), int(request.get("index", "-1")))
            responses[key] = request.get("response", "")
    signal_of: dict[tuple[str, int], tuple[str, int]] = {}  # (junction, its link) -> (tls, index)
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
        if via and via.startswith(":") and via.count("_") >= 2:
            node, number, _ = via[1:].rsplit("_", 2)
            if number.isdigit():
                signal_of[(node, int(number))] = (light, link.index)
    yields: dict[tuple[str, int], set[int]] = {}
    for (node, own), (light, index) in signal_of.items():
        bits = responses.get((node, own), "")
        for k, bit in enumerate(reversed(bits)):
            foe = signal_of.get((node, k))
            if bit == "1" and foe is not None and foe[0] == light:
                yields.setdefault((light, index), set()).add(foe[1])
    for (light, index), foes in yields.items():
        junctions[light].yields[index] = frozenset(foes)
    return junctions, graph


def read_routes(routes: Iterable[Path], graph: nx.DiGraph) -> Iterator[tuple[float, list[str]]]:
    """(departure, edges) of every vehicle: named routes, inline routes, routed trips and the
    vehicles of flows (spread evenly over their time span)."""
    for path in routes:
        root = ET.parse(path).getroot()
        named = {r.get("id", ""): r.get("edges", "").split() for r in root.findall("route")}
        for vehicle in root.iter("vehicle"):
            edges = _edges_of(vehicle, named, graph)
            if edges:
                yield _depart(vehicle.get("depart")), edges
        for trip in root.iter("trip"):
            edges = _edges_of(trip, named, graph)
            if edges:
                yield _depart(trip.get("depart")), edges
        for flow in root.iter("flow"):
            edges = _edges_of(flow, named, graph)
            if edges:
                for depart in _flow_departures(flow):
                    yield depart, edges


def _edges_of(item: ET.Element, named: dict[str, list[str]], graph: nx.DiGraph) -> list[str]:
    """A vehicle's, trip's or flow's edges: its inline route, its named route, or the
    shortest path between its ``from`` and ``to``."""
    inline = item.find("route")
    if inline is not None:
        return inline.get("edges", "").split()
    if item.get("route", "") in named:
        return named[item.get("route", "")]
    return shortest_path(graph, item.get("from", ""), item.get("to", ""))


def _flow_departures(flow: ET.Element) -> Iterator[float]:
    """When a flow's vehicles depart: evenly at its rate (``vehsPerHour``, ``period`` or a
    random ``exp(rate)`` period, ``probability`` per second, or ``number`` over its span;
    random spacing at its mean); SUMO's defaults for the span (0 to 24 h)."""
    begin = _depart(flow.get("begin"))
    end = float(flow.get("end") or 86400.0)

    def number(name: str) -> float:
        text = (flow.get(name) or "0").strip()
        if name == "period" and text.startswith("exp(") and text.endswith(")"):
            rate = float(text[4:-1])  # random spacing at this rate per second: its mean
            return 1.0 / rate if rate > 0 else 0.0
        return float(text)

    try:
        rates = {name: number(name) for name in ("vehsPerHour", "period", "probability", "number")}
    except ValueError as err:
        raise ValueError(f"flow {flow.get('id')!r}: unreadable rate ({err})") from err
    if rates["vehsPerHour"] > 0:
        period = 3600.0 / rates["vehsPerHour"]
    elif rates["period"] > 0:
        period = rates["period"]
    elif rates["probability"] > 0:
        period = 1.0 / min(rates["probability"], 1.0)
    elif rates["number"] > 0:
        period = (end - begin) / rates["number"]
    else:
        return
    count = int((end - begin) / period + 1e-9)
    for k in range(count):
        yield begin + k * period


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


Measured = Mapping[tuple[str, Link], float]
"""Saturation flow (veh/h) measured per (light, link)."""


def junction_loads(
    junctions: dict[str, Junction],
    routes: list[list[str]],
    hours: float = 1.0,
    measured: Measured | None = None,
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
        share = required_share(junction, demand, measured)
        servable = 1.0 if share <= 1.0 else 1.0 / share
        unserved = max(0, int(vehicles * (1.0 - servable)))
        loads.append(
            JunctionLoad(junction.tls, vehicles, sum(demand.values()), share, servable, unserved)
        )
    return loads


def required_share(
    junction: Junction, demand: dict[tuple[str, str], float], measured: Measured | None = None
) -> float:
    """The least total share of time in green phases that serves ``demand`` (veh/h per
    (from edge, to edge) movement): a linear programme over phase shares and the flow each
    link sends in each phase that serves it. A link's saturation flow is its ``measured``
    one where given, else the car-following limit."""
    measured = measured or {}

    def rate(link: Link) -> float:
        return measured.get((junction.tls, link), saturation_flow(link.speed))

    phases = junction.phases
    links = [lk for group in junction.links.values() for lk in group]
    # Variables: x_p (share of time in phase p), then f_lp (veh/h link l sends in phase p)
    # for every phase p that gives link l green.
    served = [
        (j, p) for j, link in enumerate(links) for p, g in enumerate(phases) if link.index in g
    ]
    n_x = len(phases)
    n = n_x + len(served)
    cost = np.concatenate([np.ones(n_x), np.zeros(len(served))])
    a_ub: list[np.ndarray] = []
    for k, (j, p) in enumerate(served):
        # f_lp <= saturation_l * x_p
        row = np.zeros(n)
        row[p] = -rate(links[j])
        row[n_x + k] = 1.0
        a_ub.append(row)
    # A lane discharges one vehicle at a time, whichever link it takes: in each phase, its
    # links green then send together at most the lane's saturation flow (its fastest loaded
    # link's: the others send nothing whatever their rate).
    lanes: dict[tuple[str, int], list[int]] = {}
    for j, link in enumerate(links):
        lanes.setdefault((link.from_edge, link.from_lane), []).append(j)
    for members in lanes.values():
        if len(members) < 2:
            continue
        loaded = [j for j in members if (links[j].from_edge, links[j].to_edge) in demand]
        fastest = max(rate(links[j]) for j in loaded or members)
        for p in range(n_x):
            row = np.zeros(n)
            for k, (j, q) in enumerate(served):
                if q == p and j in members:
                    row[n_x + k] = 1.0
            if row.any():
                row[p] = -fastest
                a_ub.append(row)
    # A link that must yield (a permissive left, a right turn on red) crosses the links it
    # yields to in the same area: in each phase that gives both green, the two share that
    # area's time, each at its own saturation flow. Generous: SUMO's gap acceptance leaves
    # the yielding link far less than the time its foe's queue does not use.
    for p, (green, minor) in enumerate(zip(phases, junction.minor, strict=True)):
        for j, link in enumerate(links):
            if link.index not in minor:
                continue
            for i, foe in enumerate(links):
                if foe.index not in junction.yields.get(link.index, ()) or foe.index not in green:
                    continue
                row = np.zeros(n)
                for k, (m, q) in enumerate(served):
                    if q == p and m in (i, j) and rate(links[m]) > 0:  # else it sends nothing
                        row[n_x + k] = 1.0 / rate(links[m])
                row[p] = -1.0
                a_ub.append(row)
    a_eq: list[np.ndarray] = []
    b_eq: list[float] = []
    for move in sorted(demand):
        row = np.zeros(n)
        for k, (j, _) in enumerate(served):
            if (links[j].from_edge, links[j].to_edge) == move:
                row[n_x + k] = 1.0
        a_eq.append(row)
        b_eq.append(demand[move])
    result = linprog(
        cost,
        A_ub=np.array(a_ub) if a_ub else None,
        b_ub=np.zeros(len(a_ub)) if a_ub else None,
        A_eq=np.array(a_eq),
        b_eq=np.array(b_eq),
        bounds=[(0, None)] * n,
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
    *,
    discharge: Discharge | None = None,
    on_round: Callable[[int, int], None] | None = None,
) -> dict[str, object]:
    """The bound for every light of a scenario over one window, busiest first (JSON-ready).

    With ``discharge`` (a SUMO runner, see :func:`measure_saturation`), the saturation flow
    of every loaded link is measured instead of taken from the car-following limit."""
    route_files = list(route_files)
    junctions, graph = read_network(net)
    routes = [e for d, e in read_routes(route_files, graph) if begin <= d < begin + seconds]
    hours = seconds / 3600.0 / max(demand_scale, 1e-9)  # more demand = the same in less time
    measured: Measured = {}
    if discharge is not None:
        probes = loaded_links(junctions, routes)
        vtype = dominant_vtype(route_files)
        measured = measure_saturation(probes, vtype, junctions, discharge, on_round=on_round)
    loads = junction_loads(junctions, routes, hours, measured)
    loads.sort(key=lambda x: -x.required_share)
    vehicles = round(len(routes) * demand_scale)
    worst = max((x.unserved_vehicles for x in loads), default=0)
    return {
        "vehicles": vehicles,
        "seconds": seconds,
        "saturation_flows": f"measured in SUMO ({len(measured)} links)"
        if discharge is not None
        else "car-following limit",
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


@dataclass(frozen=True)
class Probe:
    """A loaded link whose saturation flow is to be measured."""

    tls: str
    link: Link


def loaded_links(junctions: dict[str, Junction], routes: list[list[str]]) -> list[Probe]:
    """Every link of a light whose movement (from edge, to edge) some route takes."""
    used = {pair for edges in routes for pair in itertools.pairwise(edges)}
    return [
        Probe(junction.tls, link)
        for junction in junctions.values()
        for index in sorted(junction.links)
        for link in junction.links[index]
        if (link.from_edge, link.to_edge) in used
    ]


def dominant_vtype(route_files: Iterable[Path]) -> str:
    """The ``vType`` element most of the routes' vehicles and flows use, renamed ``probe``
    (SUMO's default car if they name none the files define)."""
    types: dict[str, ET.Element] = {}
    uses: dict[str, int] = {}
    for path in route_files:
        root = ET.parse(path).getroot()
        for vtype in root.iter("vType"):
            types.setdefault(vtype.get("id", ""), vtype)
        for tag in ("vehicle", "flow", "trip"):
            for item in root.iter(tag):
                name = item.get("type", "DEFAULT_VEHTYPE")
                uses[name] = uses.get(name, 0) + 1
    for name in sorted(uses, key=lambda n: -uses[n]):
        if name in types:
            chosen = ET.Element("vType", dict(types[name].attrib))
            chosen.extend(list(types[name]))
            chosen.set("id", "probe")
            return ET.tostring(chosen, encoding="unicode")
    return '<vType id="probe"/>'


def probe_rounds(probes: list[Probe]) -> list[list[Probe]]:
    """Probes packed into runs that do not disturb each other: per run, at most one signal
    index of each light (the lanes sharing it are measured together) and no road used by
    two lights' probes."""

    @dataclass
    class Round:
        members: list[Probe] = field(default_factory=list)
        index_of: dict[str, int] = field(default_factory=dict)  # light -> its probed index
        owner: dict[str, str] = field(default_factory=dict)  # road -> the light probing it

        def takes(self, probe: Probe) -> bool:
            link = probe.link
            roads = (link.from_edge, link.to_edge)
            return self.index_of.get(probe.tls, link.index) == link.index and all(
                self.owner.get(road, probe.tls) == probe.tls for road in roads
            )

    rounds: list[Round] = []
    for probe in probes:
        chosen = next((r for r in rounds if r.takes(probe)), None)
        if chosen is None:
            chosen = Round()
            rounds.append(chosen)
        chosen.members.append(probe)
        chosen.index_of[probe.tls] = probe.link.index
        chosen.owner.update(dict.fromkeys((probe.link.from_edge, probe.link.to_edge), probe.tls))
    return [r.members for r in rounds]


Discharge = Callable[[str, dict[str, str]], dict[str, float]]
"""Runs a routes document with lights held at states; veh/h delivered per flow id."""


def measure_saturation(
    probes: list[Probe],
    vtype: str,
    junctions: dict[str, Junction],
    discharge: Discharge,
    offered_veh_h: float = 3600.0,
    on_round: Callable[[int, int], None] | None = None,
) -> dict[tuple[str, Link], float]:
    """Each probe's saturation flow: its link alone on a permanent green, offered more
    vehicles (``offered_veh_h`` per lane, all departing at full speed in the link's lane)
    than it can take; ``discharge`` runs SUMO (see ``engine.discharge_rates``)."""
    found: dict[tuple[str, Link], float] = {}
    rounds = probe_rounds(probes)
    for n, members in enumerate(rounds):
        flows = [
            ET.tostring(
                ET.Element(
                    "flow",
                    {
                        "id": f"p{k}",
                        "type": "probe",
                        "begin": "0",
                        "end": "86400",
                        "vehsPerHour": f"{offered_veh_h:g}",
                        "from": p.link.from_edge,
                        "to": p.link.to_edge,
                        "departLane": str(p.link.from_lane),
                        "departSpeed": "max",
                    },
                ),
                encoding="unicode",
            )
            for k, p in enumerate(members)
        ]
        routes = "\n".join(["<routes>", vtype, *flows, "</routes>"])
        held = {}
        for probe in members:
            size = junctions[probe.tls].size
            held[probe.tls] = "".join("G" if i == probe.link.index else "r" for i in range(size))
        rates = discharge(routes, held)
        for k, probe in enumerate(members):
            found[(probe.tls, probe.link)] = rates.get(f"p{k}", 0.0)
        if on_round is not None:
            on_round(n + 1, len(rounds))
    return found
