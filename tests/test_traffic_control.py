"""Signal control on real SUMO runs of a tiny crossroads built with netconvert (seconds each)."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
from collections import defaultdict
from pathlib import Path

import pytest
from click.testing import CliRunner

from civica.cli import main
from civica.domains.traffic.control import (
    ControlError,
    ScheduledHandBack,
    SignalControl,
    run_control,
)
from civica.domains.traffic.controllers import MaxPressure, QueuePressure
from civica.domains.traffic.engine import (
    NoTrafficLightsError,
    SumoDisconnectedError,
    SumoEngine,
    SumoError,
    SumoOptions,
    sumo_binary,
)
from civica.domains.traffic.junctions import LaneReading, approach_reading
from civica.domains.traffic.metrics import trip_metrics
from civica.domains.traffic.scenarios import (
    Scenario,
    ScenarioError,
    from_files,
    from_sumocfg,
    resco_scenario,
)
from civica.domains.traffic.signals import SafetyRules, Stage

ARMS = {"N": (0, 200), "S": (0, -200), "E": (200, 0), "W": (-200, 0)}
FLOWS = {("W", "E"): 500, ("E", "W"): 400, ("N", "S"): 300, ("S", "N"): 250, ("W", "N"): 100}


def _crossroads(folder: Path, junction_type: str, lead_in_m: float | None = None) -> Scenario:
    """Four 200 m arms; with ``lead_in_m`` the west arm is a 60 m edge ``WM``, an unsignalised
    node ``M`` and then ``WC``, ``lead_in_m`` long, up to the signal."""
    folder.mkdir(parents=True, exist_ok=True)
    arms = dict(ARMS)
    if lead_in_m is not None:
        arms["W"] = (-(lead_in_m + 60), 0)
    nodes = "".join(f'<node id="{k}" x="{x}" y="{y}"/>' for k, (x, y) in arms.items())
    if lead_in_m is not None:
        nodes += f'<node id="M" x="{-lead_in_m}" y="0" type="priority"/>'
    (folder / "x.nod.xml").write_text(
        f'<nodes><node id="C" x="0" y="0" type="{junction_type}"/>{nodes}</nodes>'
    )
    edges = "".join(
        f'<edge id="{k}C" from="{"M" if k == "W" and lead_in_m else k}" to="C" numLanes="2"'
        ' speed="13.9"/>'
        f'<edge id="C{k}" from="C" to="{k}" numLanes="2" speed="13.9"/>'
        for k in ARMS
    )
    if lead_in_m is not None:
        edges += '<edge id="WM" from="W" to="M" numLanes="2" speed="13.9"/>'
    start = {k: "WM" if k == "W" and lead_in_m else f"{k}C" for k in ARMS}
    (folder / "x.edg.xml").write_text(f"<edges>{edges}</edges>")
    net = folder / "x.net.xml"
    subprocess.run(
        [
            str(sumo_binary("netconvert")),
            "-n",
            str(folder / "x.nod.xml"),
            "-e",
            str(folder / "x.edg.xml"),
            "-o",
            str(net),
            "--no-turnarounds",
        ],
        check=True,
        capture_output=True,
    )
    flows = "".join(
        f'<flow id="{a}{b}" begin="0" end="3600" vehsPerHour="{n}" from="{start[a]}" to="C{b}"/>'
        for (a, b), n in FLOWS.items()
    )
    routes = folder / "x.rou.xml"
    routes.write_text(f"<routes>{flows}</routes>")
    (folder / "x.sumocfg").write_text(
        "<configuration><input>"
        '<net-file value="x.net.xml"/><route-files value="x.rou.xml"/>'
        '</input><time><begin value="0"/></time></configuration>'
    )
    return from_files(net, (routes,), name="crossroads")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.parametrize("controller", [MaxPressure, QueuePressure])
def test_sumo_shows_what_the_safety_layer_decided_and_rules_hold(
    crossroads: Scenario, controller: type[MaxPressure] | type[QueuePressure], tmp_path: Path
) -> None:
    rules = SafetyRules(min_green_s=5, yellow_s=3, all_red_s=2, max_red_s=60)
    with SumoEngine(crossroads, SumoOptions(seconds=400), tmp_path / "t.xml") as engine:
        control = SignalControl(engine, controller(), rules)
        shown: list[tuple[float, str]] = []
        while engine.time < engine.end:
            control.step()
            (signal,) = control.signals.values()
            assert engine.state(signal.tls_id) == signal.state
            shown.append((engine.time, signal.state))
        changes = control.changes()
    greens = [c for c in changes if c.stage is Stage.GREEN]
    assert len(greens) >= 4, "the controller never switched"
    for before, after in itertools.pairwise(changes):
        duration = after.time - before.time
        if before.stage is Stage.GREEN:
            assert duration >= rules.min_green_s
            assert after.stage is Stage.YELLOW
        elif before.stage is Stage.YELLOW:
            assert duration == rules.yellow_s and after.stage is Stage.ALL_RED
            assert "y" not in after.state
        else:
            assert duration == rules.all_red_s and after.stage is Stage.GREEN
    # no link goes straight from green to red or from red to green without clearance
    for (_, a), (_, b) in itertools.pairwise(shown):
        for x, y in zip(a, b, strict=True):
            assert not (x in "Gg" and y == "r"), (a, b)
    # no phase waited more than max red (+ clearance) between two of its greens
    served: dict[int, list[float]] = defaultdict(list)
    for c in greens:
        served[c.green_index].append(c.time)
    for times in served.values():
        for earlier, later in itertools.pairwise(times):
            assert later - earlier <= rules.max_red_s + 60 + rules.yellow_s + rules.all_red_s


def test_fixed_controller_reproduces_sumos_own_run(crossroads: Scenario, tmp_path: Path) -> None:
    ours = run_control(crossroads, "fixed", SumoOptions(seconds=300, seed=3))
    plain = tmp_path / "plain.xml"
    subprocess.run(
        [
            str(sumo_binary()),
            "-n",
            str(crossroads.net_file),
            "-r",
            str(crossroads.route_files[0]),
            "--end",
            "300",
            "--seed",
            "3",
            "--tripinfo-output",
            str(plain),
            "--tripinfo-output.write-unfinished",
            "--tripinfo-output.write-undeparted",
            "--no-step-log",
            "--no-warnings",
        ],
        check=True,
        capture_output=True,
    )
    assert ours.metrics == trip_metrics(plain)
    assert ours.metrics.vehicles > 100


def test_adaptive_control_beats_fixed_on_the_crossroads(crossroads: Scenario) -> None:
    options = SumoOptions(seconds=600, seed=1)
    fixed = run_control(crossroads, "fixed", options).metrics
    ours = run_control(crossroads, "queue-pressure", options).metrics
    assert ours.average_delay_s < fixed.average_delay_s
    assert ours.not_finished <= fixed.not_finished + 5


def test_controllers_see_queues_standing_before_a_short_incoming_lane(tmp_path: Path) -> None:
    scenario = _crossroads(tmp_path / "lead", "traffic_light", lead_in_m=20.0)
    with SumoEngine(scenario, SumoOptions(seconds=240), tmp_path / "trips.xml") as engine:
        control = SignalControl(engine, QueuePressure(), SafetyRules())
        # the 20 m lane before the signal gets the 60 m lane feeding it (80 m from the stop
        # line, inside the approach); the 200 m arms need nothing
        assert control.approaches == {"WC_0": ("WM_0",), "WC_1": ("WM_1",)}
        approach = []
        while engine.time < 240:
            control.step()
            lanes = engine.lane_readings()
            approach.append(lanes["WC_0"].vehicles + lanes["WM_0"].vehicles)
        assert max(approach) > 0
    ours = run_control(scenario, "queue-pressure", SumoOptions(seconds=600, seed=1)).metrics
    fixed = run_control(scenario, "fixed", SumoOptions(seconds=600, seed=1)).metrics
    assert ours.average_delay_s < fixed.average_delay_s
    assert ours.stuck == 0


def test_a_feeding_lane_reaching_beyond_the_approach_is_left_out(tmp_path: Path) -> None:
    scenario = _crossroads(tmp_path / "far", "traffic_light", lead_in_m=80.0)  # 60 m + 80 m
    with SumoEngine(scenario, SumoOptions(seconds=10), tmp_path / "trips.xml") as engine:
        assert SignalControl(engine, QueuePressure(), SafetyRules()).approaches == {}


def test_approach_reading_adds_up_the_lanes_of_an_approach() -> None:
    readings = {
        "a": LaneReading(halting=2, vehicles=3, waiting_s=10.0, vehicle_ids=("x", "y", "z")),
        "b": LaneReading(halting=1, vehicles=1, waiting_s=4.0, vehicle_ids=("w",)),
    }
    both = approach_reading(readings, "a", ("b", "missing"))
    assert both == LaneReading(3, 4, 14.0, ("x", "y", "z", "w"))
    assert approach_reading(readings, "a", ()) is readings["a"]
    assert approach_reading(readings, "missing", ()) is None


def test_demand_scale_changes_the_number_of_vehicles(crossroads: Scenario) -> None:
    half = run_control(crossroads, "fixed", SumoOptions(seconds=300, demand_scale=0.5))
    full = run_control(crossroads, "fixed", SumoOptions(seconds=300))
    assert half.metrics.vehicles < 0.7 * full.metrics.vehicles


def test_stop_button_hands_the_intersection_back_to_its_programme(
    crossroads: Scenario, tmp_path: Path
) -> None:
    with SumoEngine(crossroads, SumoOptions(seconds=200), tmp_path / "t.xml") as engine:
        control = SignalControl(engine, QueuePressure(), SafetyRules())
        (tls_id,) = control.signals
        junction = control.junctions[tls_id]
        for _ in range(60):
            control.step()
        record = control.hand_back(tls_id, "alice", "testing the button")
        while tls_id in control.signals:
            control.step()
        programme = [engine.phase_index(tls_id)]
        for _ in range(120):
            control.step()
            programme.append(engine.phase_index(tls_id))
        layout = next(lay for lay in engine.signals() if lay.tls_id == tls_id)
        assert engine.state(tls_id) == layout.phases[engine.phase_index(tls_id)].state
    assert record.operator == "alice" and record.at_sim_s == 60.0
    applied = control.hand_backs[0]
    assert applied.applied_at_sim_s is not None and applied.applied_at_sim_s >= record.at_sim_s
    assert programme[0] in junction.program_index
    assert len(set(programme)) > 2, "SUMO's own programme is cycling again"
    with pytest.raises(ControlError, match="operator"):
        control.hand_back(tls_id, " ")
    with pytest.raises(ControlError, match="no traffic light"):
        control.hand_back("nowhere", "alice")


def test_scheduled_hand_back_is_reported(crossroads: Scenario) -> None:
    result = run_control(
        crossroads,
        "max-pressure",
        SumoOptions(seconds=120),
        hand_backs=[ScheduledHandBack("C", 50, "bob", "manual")],
    )
    (record,) = result.as_dict()["hand_backs"]
    assert record["operator"] == "bob" and record["at_sim_s"] == 50.0
    assert record["requested_at"].endswith("+00:00")


def test_bad_input_gives_clear_errors(tmp_path: Path, crossroads: Scenario) -> None:
    with pytest.raises(ScenarioError, match="unknown scenario 'paris'"):
        resco_scenario("paris")
    with pytest.raises(ScenarioError, match="not found"):
        from_sumocfg(tmp_path / "missing.sumocfg")
    with pytest.raises(ScenarioError, match="not found"):
        from_files(tmp_path / "missing.net.xml", (crossroads.route_files[0],))
    with pytest.raises(ControlError, match="unknown controller"):
        run_control(crossroads, "magic", SumoOptions(seconds=10))
    broken = tmp_path / "broken.net.xml"
    broken.write_text("<net><this is not a network")
    with pytest.raises(SumoError, match="SUMO did not start"):
        run_control(from_files(broken, crossroads.route_files), "fixed", SumoOptions(seconds=10))


def test_network_without_traffic_lights_is_refused(tmp_path: Path) -> None:
    plain = _crossroads(tmp_path / "plain", "priority")
    with pytest.raises(NoTrafficLightsError, match="no traffic lights"):
        run_control(plain, "max-pressure", SumoOptions(seconds=10))


def test_sumo_is_closed_after_an_exception(crossroads: Scenario, tmp_path: Path) -> None:
    with (
        pytest.raises(RuntimeError, match="boom"),
        SumoEngine(crossroads, SumoOptions(seconds=50), tmp_path / "t.xml") as engine,
    ):
        pid = engine.pid
        assert pid is not None and _alive(pid)
        engine.step()
        raise RuntimeError("boom")
    assert pid is not None and not _alive(pid)


def test_traci_disconnect_is_a_clear_error(crossroads: Scenario, tmp_path: Path) -> None:
    engine = SumoEngine(crossroads, SumoOptions(seconds=50), tmp_path / "t.xml")
    with engine:
        pid = engine.pid
        assert pid is not None
        os.kill(pid, 9)
        with pytest.raises(SumoDisconnectedError, match="lost the TraCI connection"):
            for _ in range(10):
                engine.step()
    assert not _alive(pid)


def test_resco_scenarios_load_from_the_installed_package() -> None:
    scenario = resco_scenario("cologne1")
    assert scenario.begin == 25200.0
    assert scenario.net_file.is_file() and "sumo_rl" in str(scenario.net_file)


def test_cli_prints_json_metrics(crossroads: Scenario) -> None:
    result = CliRunner().invoke(
        main,
        [
            "traffic",
            "control",
            "--net",
            str(crossroads.net_file),
            "--routes",
            str(crossroads.route_files[0]),
            "--seconds",
            "120",
            "--seed",
            "2",
            "--hand-back",
            "C@60",
            "--operator",
            "carol",
        ],
    )
    assert result.exit_code == 0, result.output
    figures = json.loads(result.stdout)
    assert figures["controller"] == "queue-pressure"
    assert figures["vehicles"] > 0 and figures["average_delay_s"] >= 0
    assert figures["hand_backs"][0]["operator"] == "carol"


def test_cli_reports_bad_input_in_one_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["traffic", "control", "--scenario", "paris"])
    assert result.exit_code == 2
    assert "unknown scenario 'paris'" in result.output
    missing = CliRunner().invoke(
        main, ["traffic", "control", "--sumocfg", str(tmp_path / "none.sumocfg")]
    )
    assert missing.exit_code == 2 and "not found" in missing.output
