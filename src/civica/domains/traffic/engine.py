"""The one file that talks to Eclipse SUMO: start it headless, step it over TraCI, close it.

Nothing else in Civica imports ``sumo``, ``traci``, ``libsumo`` or ``sumolib`` (import-linter
contract in pyproject.toml). SUMO runs as a child process on a free local port; the process
is always ended when the engine closes, even after a TraCI error, so no run leaves a SUMO
behind. TraCI's errors become :class:`SumoError` / :class:`SumoDisconnectedError`.
"""

from __future__ import annotations

import contextlib
import io
import os
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import sumo
import traci
import traci.constants as tc
from traci.exceptions import FatalTraCIError, TraCIException

from civica.domains.traffic.junctions import LaneReading, ProgramPhase, SignalLayout
from civica.domains.traffic.scenarios import Scenario

_LANE_VARIABLES = (
    tc.LAST_STEP_VEHICLE_HALTING_NUMBER,
    tc.LAST_STEP_VEHICLE_NUMBER,
    tc.VAR_WAITING_TIME,
    tc.LAST_STEP_VEHICLE_ID_LIST,
)
_CLOSE_TIMEOUT_S = 30.0


class SumoError(RuntimeError):
    """SUMO refused the input or failed while running."""


class SumoDisconnectedError(SumoError):
    """The TraCI connection to SUMO was lost (SUMO crashed or was killed)."""


class NoTrafficLightsError(SumoError):
    """The network has no traffic lights, so there is nothing to control."""


@dataclass(frozen=True)
class SumoOptions:
    """How to run a scenario: simulated seconds from its begin, seed, demand scale."""

    seconds: float
    seed: int = 0
    demand_scale: float = 1.0
    time_to_teleport_s: float = 300.0  # SUMO's default; -1 disables teleports


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def sumo_binary(name: str = "sumo") -> Path:
    """A SUMO tool (sumo, netgenerate, netconvert, ...) from the eclipse-sumo package."""
    path = Path(sumo.SUMO_HOME) / "bin" / name
    if not path.is_file():
        raise SumoError(f"SUMO tool {name!r} not found at {path}; is eclipse-sumo installed?")
    return path


class SumoEngine:
    """A headless SUMO run stepped one second at a time; use as a context manager."""

    def __init__(self, scenario: Scenario, options: SumoOptions, tripinfo: Path) -> None:
        if options.seconds <= 0:
            raise ValueError("seconds must be positive")
        if options.demand_scale <= 0:
            raise ValueError("demand scale must be positive")
        self.scenario = scenario
        self.options = options
        self.tripinfo = tripinfo
        self.end = scenario.begin + options.seconds
        self.teleports = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._conn: Any = None
        self._log: Any = None
        self._lanes: tuple[str, ...] = ()

    def __enter__(self) -> SumoEngine:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _command(self, port: int) -> list[str]:
        scenario, options = self.scenario, self.options
        command = [
            str(sumo_binary()),
            "--net-file",
            str(scenario.net_file),
            "--route-files",
            ",".join(str(p) for p in scenario.route_files),
            "--begin",
            str(scenario.begin),
            "--end",
            str(self.end),
            "--seed",
            str(options.seed),
            "--scale",
            str(options.demand_scale),
            "--tripinfo-output",
            str(self.tripinfo),
            "--tripinfo-output.write-unfinished",
            "--tripinfo-output.write-undeparted",
            "--time-to-teleport",
            str(options.time_to_teleport_s),
            "--no-step-log",
            "--no-warnings",
            "--remote-port",
            str(port),
        ]
        if scenario.additional_files:
            command += ["--additional-files", ",".join(map(str, scenario.additional_files))]
        return command

    def start(self) -> None:
        """Launch SUMO and connect; on any failure SUMO is ended and SumoError raised."""
        port = _free_port()
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in close()
        env = dict(os.environ, SUMO_HOME=str(sumo.SUMO_HOME))
        self._process = subprocess.Popen(
            self._command(port), stdout=self._log, stderr=subprocess.STDOUT, env=env
        )
        try:
            # traci prints its connection retries on stdout, which carries the CLI's JSON
            with contextlib.redirect_stdout(io.StringIO()):
                self._conn = traci.connect(
                    port=port, numRetries=100, proc=self._process, waitBetweenRetries=0.05
                )
            # SUMO accepts the connection before it loads the network: ask something so a
            # file it cannot read fails here, with its own message
            self._conn.simulation.getTime()
        except (FatalTraCIError, TraCIException, OSError) as err:
            message = self._sumo_error() or self._exit_reason() or str(err)
            self.close()
            raise SumoError(f"SUMO did not start for {self.scenario.name}: {message}") from err

    def _exit_reason(self) -> str:
        """How SUMO ended, when it ended without an error line (a crash on a malformed net)."""
        if self._process is None:
            return ""
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._process.wait(timeout=2)
        code = self._process.returncode
        if code is None or code == 0:
            return ""
        if code < 0:
            return f"SUMO crashed (signal {-code}) without a message; is the network complete?"
        return f"SUMO exited with code {code} without a message"

    def _sumo_error(self) -> str:
        """The first error line SUMO printed, if any."""
        if self._log is None:
            return ""
        self._log.seek(0)
        lines = self._log.read().decode(errors="replace").splitlines()
        errors = [line.strip() for line in lines if line.startswith("Error")]
        return errors[0] if errors else ""

    def close(self) -> None:
        """Close TraCI (SUMO then writes its outputs) and make sure the process has ended."""
        conn, self._conn = self._conn, None
        if conn is not None:
            # already gone if this fails; the process is ended below either way
            with contextlib.suppress(FatalTraCIError, TraCIException, OSError):
                conn.close()
        process, self._process = self._process, None
        if process is not None:
            try:
                process.wait(timeout=_CLOSE_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    @property
    def pid(self) -> int | None:
        """The SUMO process id while it runs (tests check it is gone after close)."""
        return self._process.pid if self._process is not None else None

    def _call(self, what: str, func: Any, *args: Any) -> Any:
        if self._conn is None:
            raise SumoError("SUMO is not running")
        try:
            return func(*args)
        except FatalTraCIError as err:
            reason = ""
            if self._process is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self._process.wait(timeout=2)
                reason = self._sumo_error()
            raise SumoDisconnectedError(
                f"lost the TraCI connection to SUMO ({what}): {reason or err}"
            ) from err
        except TraCIException as err:
            raise SumoError(f"SUMO refused {what}: {err}") from err

    @property
    def time(self) -> float:
        """Current simulated time in seconds."""
        return float(self._call("getTime", self._conn.simulation.getTime))

    def step(self) -> None:
        """Advance one simulation step (1 s)."""
        self._call("simulationStep", self._conn.simulationStep)
        self.teleports += int(
            self._call("teleports", self._conn.simulation.getStartingTeleportNumber)
        )

    def signals(self) -> tuple[SignalLayout, ...]:
        """Every traffic light with its current (fixed) programme; NoTrafficLightsError if none."""
        ids = sorted(self._call("trafficlight ids", self._conn.trafficlight.getIDList))
        if not ids:
            raise NoTrafficLightsError(f"scenario {self.scenario.name} has no traffic lights")
        layouts = []
        for tls_id in ids:
            program_id = self._call("program", self._conn.trafficlight.getProgram, tls_id)
            logics = self._call("programs", self._conn.trafficlight.getAllProgramLogics, tls_id)
            logic = next((lg for lg in logics if lg.programID == program_id), logics[0])
            links = self._call("links", self._conn.trafficlight.getControlledLinks, tls_id)
            layouts.append(
                SignalLayout(
                    tls_id=tls_id,
                    program_id=str(logic.programID),
                    phases=tuple(
                        ProgramPhase(str(p.state), float(p.duration)) for p in logic.phases
                    ),
                    links=tuple((str(ln[0][0]), str(ln[0][1])) if ln else None for ln in links),
                )
            )
        return tuple(layouts)

    def watch_lanes(self, lanes: set[str]) -> None:
        """Subscribe to halting / vehicle count / waiting time of these lanes (one call a step)."""
        self._lanes = tuple(sorted(lanes))
        for lane in self._lanes:
            self._call("lane subscription", self._conn.lane.subscribe, lane, _LANE_VARIABLES)

    def upstream_lanes(
        self, lanes: set[str], reach_m: float, stop_at: set[str]
    ) -> dict[str, tuple[str, ...]]:
        """Per lane, the lanes feeding it that lie wholly within ``reach_m`` of its end.

        A lane is read as a whole, so one reaching further back than ``reach_m`` is left out
        rather than counting vehicles far from the signal. The walk goes back through
        unsignalised junctions only: it stops at ``stop_at`` (the lanes that end at a
        signal), whose vehicles wait for that signal, not this one.
        """
        preds: dict[str, list[str]] = {}
        for lane in self._call("lane ids", self._conn.lane.getIDList):
            if lane.startswith(":"):  # internal lanes inside junctions
                continue
            for link in self._call("lane links", self._conn.lane.getLinks, lane):
                preds.setdefault(str(link[0]), []).append(str(lane))
        lengths: dict[str, float] = {}

        def length(lane: str) -> float:
            if lane not in lengths:
                lengths[lane] = float(self._call("lane length", self._conn.lane.getLength, lane))
            return lengths[lane]

        result: dict[str, tuple[str, ...]] = {}
        for lane in sorted(lanes):
            found: list[str] = []
            seen = {lane}
            frontier = [(lane, length(lane))]  # a lane and how far its start is from the end
            while frontier:
                current, start_m = frontier.pop()
                for pred in preds.get(current, ()):
                    if pred in seen or pred in stop_at or start_m + length(pred) > reach_m:
                        continue
                    seen.add(pred)
                    found.append(pred)
                    frontier.append((pred, start_m + length(pred)))
            result[lane] = tuple(found)
        return result

    def lane_readings(self) -> dict[str, LaneReading]:
        """The watched lanes at the end of the last step."""
        results = self._call("lane readings", self._conn.lane.getAllSubscriptionResults)
        return {
            lane: LaneReading(
                halting=int(values[tc.LAST_STEP_VEHICLE_HALTING_NUMBER]),
                vehicles=int(values[tc.LAST_STEP_VEHICLE_NUMBER]),
                waiting_s=float(values[tc.VAR_WAITING_TIME]),
                vehicle_ids=tuple(values[tc.LAST_STEP_VEHICLE_ID_LIST]),
            )
            for lane, values in results.items()
        }

    def arrived_ids(self) -> tuple[str, ...]:
        """The ids of the vehicles that reached their destination in the last step."""
        return tuple(self._call("arrived ids", self._conn.simulation.getArrivedIDList))

    def state(self, tls_id: str) -> str:
        """The signal state string SUMO shows now (one char per link)."""
        return str(self._call("state", self._conn.trafficlight.getRedYellowGreenState, tls_id))

    def phase_index(self, tls_id: str) -> int:
        """The index of the current phase in the running programme."""
        return int(self._call("phase", self._conn.trafficlight.getPhase, tls_id))

    def set_state(self, tls_id: str, state: str) -> None:
        """Show this state until told otherwise (SUMO's 'online' programme)."""
        self._call("setState", self._conn.trafficlight.setRedYellowGreenState, tls_id, state)

    def restore_program(self, tls_id: str, program_id: str, phase_index: int) -> None:
        """Hand the intersection back to its fixed programme, starting at this phase."""
        self._call("setProgram", self._conn.trafficlight.setProgram, tls_id, program_id)
        self._call("setPhase", self._conn.trafficlight.setPhase, tls_id, phase_index)


# ---- detectors: induction loops of the network, else one virtual detector per lane ----------
_DETECTOR_VARIABLES = (
    tc.LAST_STEP_VEHICLE_ID_LIST,
    tc.LAST_STEP_MEAN_SPEED,
    tc.LAST_STEP_OCCUPANCY,
)
_LANE_DETECTOR_VARIABLES = (*_DETECTOR_VARIABLES, tc.LAST_STEP_VEHICLE_HALTING_NUMBER)
LOOP, LANE = "inductionLoop", "lane"


@dataclass(frozen=True)
class DetectorSite:
    """Where a detector sits: its lane and road segment (edge), free-flow speed, position."""

    detector_id: str
    kind: str  # LOOP (an E1 loop of the network) or LANE (the whole lane, read via TraCI)
    lane: str
    edge: str
    lane_index: int
    free_speed_ms: float
    lon_lat: tuple[float, float] | None  # only when the network is georeferenced


@dataclass(frozen=True)
class DetectorStep:
    """One simulation step of one detector."""

    vehicle_ids: tuple[str, ...]
    mean_speed_ms: float | None  # None when no vehicle was on it
    occupancy: float  # fraction 0..1
    halting: int | None  # vehicles slower than 0.1 m/s (lane detectors only)


def _georeferenced(net_file: Path) -> bool:
    """Whether the network's <location> carries a projection (so x/y convert to lon/lat)."""
    import xml.etree.ElementTree as ET

    try:
        for _, element in ET.iterparse(net_file, events=("start",)):
            if element.tag == "location":
                return bool(element.get("projParameter", "!") != "!")
            if element.tag in ("edge", "junction"):
                break
    except (ET.ParseError, OSError):  # e.g. a .net.xml.gz: SUMO reads it, we go without
        return False
    return False


def detector_sites(engine: SumoEngine) -> tuple[DetectorSite, ...]:
    """The network's induction loops, or (if it has none) one virtual detector per lane."""
    conn = engine._conn
    geo = _georeferenced(engine.scenario.net_file)
    loops = sorted(engine._call("loop ids", conn.inductionloop.getIDList))
    if loops:
        places = [
            (
                loop,
                LOOP,
                str(engine._call("loop lane", conn.inductionloop.getLaneID, loop)),
                float(engine._call("loop position", conn.inductionloop.getPosition, loop)),
            )
            for loop in loops
        ]
    else:
        lanes = sorted(
            lane
            for lane in engine._call("lane ids", conn.lane.getIDList)
            if not lane.startswith(":")
        )
        places = [
            (lane, LANE, lane, float(engine._call("lane length", conn.lane.getLength, lane)) / 2)
            for lane in lanes
        ]
    sites = []
    for detector, kind, lane, pos in places:
        edge = str(engine._call("lane edge", conn.lane.getEdgeID, lane))
        index = int(lane.rsplit("_", 1)[-1]) if "_" in lane else 0
        lon_lat = None
        if geo:
            lon, lat = engine._call("position", conn.simulation.convert2D, edge, pos, index, True)
            lon_lat = (float(lon), float(lat))
        sites.append(
            DetectorSite(
                detector_id=detector,
                kind=kind,
                lane=lane,
                edge=edge,
                lane_index=index,
                free_speed_ms=float(engine._call("lane speed", conn.lane.getMaxSpeed, lane)),
                lon_lat=lon_lat,
            )
        )
    return tuple(sites)


def watch_detectors(engine: SumoEngine, sites: tuple[DetectorSite, ...]) -> None:
    """Subscribe to vehicles, mean speed and occupancy of these detectors (one call a step)."""
    conn = engine._conn
    for site in sites:
        if site.kind == LOOP:
            engine._call(
                "loop subscription",
                conn.inductionloop.subscribe,
                site.detector_id,
                _DETECTOR_VARIABLES,
            )
        else:
            engine._call(
                "lane subscription", conn.lane.subscribe, site.lane, _LANE_DETECTOR_VARIABLES
            )


def detector_readings(engine: SumoEngine) -> dict[str, DetectorStep]:
    """The watched detectors at the end of the last step, by detector id."""
    conn = engine._conn
    out: dict[str, DetectorStep] = {}
    loops = engine._call("loop readings", conn.inductionloop.getAllSubscriptionResults)
    for loop, values in loops.items():
        speed = float(values[tc.LAST_STEP_MEAN_SPEED])
        out[loop] = DetectorStep(
            vehicle_ids=tuple(values[tc.LAST_STEP_VEHICLE_ID_LIST]),
            mean_speed_ms=speed if speed >= 0 else None,
            occupancy=float(values[tc.LAST_STEP_OCCUPANCY]) / 100.0,  # loops report percent
            halting=None,
        )
    lanes = engine._call("lane readings", conn.lane.getAllSubscriptionResults)
    for lane, values in lanes.items():
        if tc.LAST_STEP_MEAN_SPEED not in values:
            continue  # a signal-control subscription, not a detector
        ids = tuple(values[tc.LAST_STEP_VEHICLE_ID_LIST])
        out[lane] = DetectorStep(
            vehicle_ids=ids,
            mean_speed_ms=float(values[tc.LAST_STEP_MEAN_SPEED]) if ids else None,
            occupancy=float(values[tc.LAST_STEP_OCCUPANCY]),
            halting=int(values[tc.LAST_STEP_VEHICLE_HALTING_NUMBER]),
        )
    return out


def stop_vehicle_on(engine: SumoEngine, lane: str) -> str | None:
    """Scripted incident: the vehicle furthest along ``lane`` stops where it is (speed 0).

    Returns its id, or None when the lane is empty now.
    """
    conn = engine._conn
    ids = engine._call("lane vehicles", conn.lane.getLastStepVehicleIDs, lane)
    if not ids:
        return None
    lead = max(ids, key=lambda v: engine._call("lane position", conn.vehicle.getLanePosition, v))
    engine._call("stop vehicle", conn.vehicle.setSpeed, lead, 0.0)
    engine._call("lane change mode", conn.vehicle.setLaneChangeMode, lead, 0)
    return str(lead)


def edge_successors(engine: SumoEngine, lanes: set[str]) -> dict[str, tuple[str, ...]]:
    """For the edges of these lanes, the (non-internal) edges their lanes lead to."""
    conn = engine._conn
    out: dict[str, set[str]] = {}
    for lane in sorted(lanes):
        edge = str(engine._call("lane edge", conn.lane.getEdgeID, lane))
        nexts = out.setdefault(edge, set())
        for link in engine._call("lane links", conn.lane.getLinks, lane):
            to_lane = str(link[0])
            if not to_lane.startswith(":"):
                nexts.add(str(engine._call("lane edge", conn.lane.getEdgeID, to_lane)))
    return {edge: tuple(sorted(nexts)) for edge, nexts in out.items()}


def discharge_rates(
    net_file: Path,
    routes_xml: str,
    held: dict[str, str],
    *,
    warmup_s: float = 120.0,
    seconds: float = 600.0,
    seed: int = 0,
) -> dict[str, float]:
    """Run ``net_file`` with the vehicles of ``routes_xml``, every light in ``held`` showing its
    state string throughout; per flow id, the vehicles per hour that arrived after
    ``warmup_s`` (over the following ``seconds``). The light's own programme is replaced by
    the held state at the first step, before any vehicle reaches it. The defaults are the
    capacity probes' (``civica traffic capacity --measure``): 2 minutes to fill the queues,
    10 to count, about 2 % of sampling noise."""
    with tempfile.TemporaryDirectory(prefix="civica-discharge-") as folder:
        routes = Path(folder) / "probe.rou.xml"
        routes.write_text(routes_xml)
        scenario = Scenario(f"saturation flows of {net_file.name}", net_file, (routes,))
        options = SumoOptions(seconds=warmup_s + seconds, seed=seed, time_to_teleport_s=-1)
        engine = SumoEngine(scenario, options, Path(folder) / "tripinfo.xml")
        counts: dict[str, int] = {}
        with engine:
            for tls_id, state in held.items():
                engine.set_state(tls_id, state)
            while engine.time < engine.end:
                engine.step()
                if engine.time > warmup_s:
                    for vehicle in engine.arrived_ids():
                        flow = vehicle.rsplit(".", 1)[0]
                        counts[flow] = counts.get(flow, 0) + 1
    return {flow: n * 3600.0 / seconds for flow, n in counts.items()}
