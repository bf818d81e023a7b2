"""The capacity bound: least green share a light needs for its demand, on a hand-made net."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from civica.cli import main
from civica.domains.traffic.capacity import (
    Link,
    Probe,
    capacity_report,
    dominant_vtype,
    loaded_links,
    probe_rounds,
    read_network,
    read_routes,
    required_share,
    saturation_flow,
    shortest_path,
)
from civica.domains.traffic.engine import discharge_rates, sumo_binary

# One light "c": a north-south road (n_c, c_s) and an east-west one (w_c, c_e), one lane each,
# one link each; phase 0 serves north-south, phase 1 east-west. Plus a right turn n_c -> c_e
# from the same lane as the through movement (link 2, green with north-south).
NET = """<net>
  <edge id=":c_0" function="internal"><lane id=":c_0_0" index="0" speed="13.89" length="10"/></edge>
  <edge id=":c_1" function="internal"><lane id=":c_1_0" index="0" speed="13.89" length="10"/></edge>
  <edge id=":c_2" function="internal"><lane id=":c_2_0" index="0" speed="6.0" length="6"/></edge>
  <edge id="n_c" from="n" to="c"><lane id="n_c_0" index="0" speed="13.89" length="200"/></edge>
  <edge id="c_s" from="c" to="s"><lane id="c_s_0" index="0" speed="13.89" length="200"/></edge>
  <edge id="w_c" from="w" to="c"><lane id="w_c_0" index="0" speed="13.89" length="200"/></edge>
  <edge id="c_e" from="c" to="e"><lane id="c_e_0" index="0" speed="13.89" length="200"/></edge>
  <tlLogic id="c" type="static" programID="0" offset="0">
    <phase duration="30" state="GrG"/>
    <phase duration="3" state="yry"/>
    <phase duration="30" state="rGr"/>
    <phase duration="3" state="ryr"/>
  </tlLogic>
  <connection from="n_c" to="c_s" fromLane="0" toLane="0" via=":c_0_0" tl="c" linkIndex="0"/>
  <connection from="w_c" to="c_e" fromLane="0" toLane="0" via=":c_1_0" tl="c" linkIndex="1"/>
  <connection from="n_c" to="c_e" fromLane="0" toLane="0" via=":c_2_0" tl="c" linkIndex="2"/>
  <connection from=":c_0" to="c_s" fromLane="0" toLane="0"/>
</net>
"""


def routes(north: int, west: int, right: int = 0, trips: int = 0) -> str:
    out = ["<routes>"]
    k = 0
    for edges, n in (("n_c c_s", north), ("w_c c_e", west), ("n_c c_e", right)):
        for _ in range(n):
            out.append(f'<vehicle id="v{k}" depart="{k % 3600}"><route edges="{edges}"/></vehicle>')
            k += 1
    out += [f'<trip id="t{i}" depart="{i}" from="w_c" to="c_e"/>' for i in range(trips)]
    out.append('<vehicle id="late" depart="7200"><route edges="n_c c_s"/></vehicle>')
    return "\n".join([*out, "</routes>"])


@pytest.fixture
def net(tmp_path: Path) -> Path:
    path = tmp_path / "cross.net.xml"
    path.write_text(NET)
    return path


def report(net: Path, tmp_path: Path, text: str, **kw: Any) -> dict[str, object]:
    rou = tmp_path / "cross.rou.xml"
    rou.write_text(text)
    return capacity_report(net, [rou], **kw)


def light(out: dict[str, object]) -> dict[str, object]:
    lights = out["lights"]
    assert isinstance(lights, list) and len(lights) == 1
    found: dict[str, object] = lights[0]
    return found


def test_the_required_share_is_each_phases_busiest_link_over_its_saturation_flow(
    net: Path, tmp_path: Path
) -> None:
    through = saturation_flow(13.89)
    assert 2300 < through < 2400  # 1 s reaction + 7.5 m of car and gap at 50 km/h
    out = report(net, tmp_path, routes(north=900, west=600))
    assert out["vehicles"] == 1500  # the vehicle due after the window is not counted
    found = light(out)
    assert found["required_green_share"] == pytest.approx((900 + 600) / through, abs=1e-3)
    assert found["oversaturated"] is False
    assert out["unfinished_share_at_least"] == 0


def test_a_shared_lane_carries_its_links_together(net: Path, tmp_path: Path) -> None:
    """Through and right turn leave one lane: together they need the lane's time."""
    through = saturation_flow(13.89)
    out = report(net, tmp_path, routes(north=900, west=600, right=400))
    # The north lane must send 1,300 vehicles in the north-south phase.
    assert light(out)["required_green_share"] == pytest.approx(
        (900 + 400 + 600) / through, abs=1e-3
    )


def test_over_capacity_every_control_leaves_vehicles_behind(net: Path, tmp_path: Path) -> None:
    through = saturation_flow(13.89)
    out = report(net, tmp_path, routes(north=1800, west=1200))
    found = light(out)
    share = 3000 / through
    assert found["required_green_share"] == pytest.approx(share, abs=1e-3)
    assert found["oversaturated"] is True
    # At most 1/share of the 3,000 vehicles can be through the light within the hour.
    assert found["unserved_vehicles_at_least"] == pytest.approx(3000 * (1 - 1 / share), abs=2)
    assert out["unfinished_share_at_least"] == pytest.approx(1 - 1 / share, abs=1e-3)
    # The same demand over two hours fits.
    half = report(net, tmp_path, routes(north=1800, west=1200), seconds=7200.0)
    assert light(half)["oversaturated"] is False
    assert report(net, tmp_path, routes(north=900, west=600), demand_scale=2.0)["vehicles"] == 3000


def test_trips_are_routed_through_the_connections(net: Path, tmp_path: Path) -> None:
    junctions, graph = read_network(net)
    assert shortest_path(graph, "n_c", "c_e") == ["n_c", "c_e"]
    assert shortest_path(graph, "c_s", "n_c") == []
    rou = tmp_path / "trips.rou.xml"
    rou.write_text(routes(north=0, west=0, trips=5))
    assert [e for _d, e in read_routes([rou], graph)][-5:] == [["w_c", "c_e"]] * 5
    assert [sorted(p) for p in junctions["c"].phases] == [[0, 2], [1]]


def test_the_command_prints_json_and_refuses_bad_files(net: Path, tmp_path: Path) -> None:
    rou = tmp_path / "cross.rou.xml"
    rou.write_text(routes(north=900, west=600))
    runner = CliRunner()
    done = runner.invoke(main, ["traffic", "capacity", "--net", str(net), "--routes", str(rou)])
    assert done.exit_code == 0, done.output
    assert json.loads(done.output)["lights"][0]["tls"] == "c"
    bad = tmp_path / "bad.net.xml"
    bad.write_text("<net><edge")
    failed = runner.invoke(main, ["traffic", "capacity", "--net", str(bad), "--routes", str(rou)])
    assert failed.exit_code != 0
    assert "unreadable SUMO XML" in failed.output
    missing = runner.invoke(main, ["traffic", "capacity", "--net", str(tmp_path / "none.xml")])
    assert missing.exit_code != 0 and "Traceback" not in missing.output
    # this hand-made net has no junction shapes: SUMO cannot run it, and says so (or dies);
    # either way the measurement ends with one clear line, not a traceback
    args = ["traffic", "capacity", "--net", str(net), "--routes", str(rou), "--measure"]
    unmeasurable = runner.invoke(main, args)
    assert unmeasurable.exit_code == 2, unmeasurable.output
    assert "SUMO did not start for saturation flows of cross.net.xml" in unmeasurable.output
    assert "Traceback" not in unmeasurable.output


def test_a_shared_lane_is_shared_in_each_phase(tmp_path: Path) -> None:
    """Two loaded links of one lane green together in phase 0 share the lane's flow there,
    even if a third, unloaded link of that lane is green in phase 1 as well (a right turn on
    red, say): before, the lane's limit counted phase 1 too and the bound came out at the
    busiest single link (arterial4x4 nt3: 0.64 instead of 0.71)."""
    net = tmp_path / "shared.net.xml"
    net.write_text(
        NET.replace('state="GrG"', 'state="GrGr"')
        .replace('state="yry"', 'state="yryr"')
        .replace('state="rGr"', 'state="rGrG"')
        .replace('state="ryr"', 'state="ryry"')
        .replace(
            "</net>",
            '<edge id="c_w" from="c" to="w"><lane id="c_w_0" index="0" speed="13.89" '
            'length="200"/></edge>'
            '<connection from="n_c" to="c_w" fromLane="0" toLane="0" tl="c" linkIndex="3"/>'
            "</net>",
        )
    )
    junctions, _ = read_network(net)
    through = saturation_flow(13.89)
    demand = {("n_c", "c_s"): 900.0, ("n_c", "c_e"): 400.0, ("w_c", "c_e"): 600.0}
    assert required_share(junctions["c"], demand) == pytest.approx(1900 / through, abs=1e-3)


def test_measured_saturation_flows_replace_the_car_following_limit(
    net: Path, tmp_path: Path
) -> None:
    """Each loaded link is probed alone on a held green with more vehicles than it can take,
    and the bound uses what it delivered."""
    runs: list[tuple[str, dict[str, str]]] = []

    def half(routes_xml: str, held: dict[str, str]) -> dict[str, float]:
        runs.append((routes_xml, held))
        return {f"p{k}": through / 2 for k in range(routes_xml.count("<flow "))}

    through = saturation_flow(13.89)
    rou = tmp_path / "cross.rou.xml"
    rou.write_text(routes(north=900, west=600))
    out = capacity_report(net, [rou], discharge=half)
    assert out["saturation_flows"] == "measured in SUMO (2 links)"
    # half the rate: twice the green, and 1,500 veh/h no longer fit in the hour
    assert light(out)["required_green_share"] == pytest.approx(2 * 1500 / through, abs=1e-3)
    assert light(out)["oversaturated"] is True
    # the two loaded links conflict (one light): one run each, the probed link alone green
    assert sorted(held["c"] for _, held in runs) == ["Grr", "rGr"]
    first = runs[0][0]
    assert 'from="n_c" to="c_s" departLane="0"' in first and 'type="probe"' in first
    assert '<vType id="probe"' in first


def test_probes_share_a_run_only_when_they_cannot_disturb_each_other() -> None:
    def probe(tls: str, index: int, lane: int, src: str, dst: str) -> Probe:
        return Probe(tls, Link(index, src, lane, dst, 13.89))

    a0 = probe("a", 0, 0, "x_a", "a_b")
    a0_lane1 = probe("a", 0, 1, "x_a", "a_b")  # same signal index, another lane: together
    a1 = probe("a", 1, 0, "y_a", "a_z")  # another index of the same light: another run
    b0 = probe("b", 0, 0, "a_b", "b_c")  # starts on the road a0 ends on: another run
    c0 = probe("c", 0, 0, "u_c", "c_v")  # far away: rides along
    assert probe_rounds([a0, a0_lane1, a1, b0, c0]) == [[a0, a0_lane1, c0], [a1, b0]]


def test_the_probe_vehicle_is_the_type_most_vehicles_use(tmp_path: Path) -> None:
    rou = tmp_path / "types.rou.xml"
    rou.write_text(
        '<routes><vType id="car" accel="2.6" sigma="0.5"/><vType id="bus" length="12"/>'
        '<vehicle id="v1" type="bus" depart="0"><route edges="a"/></vehicle>'
        '<vehicle id="v2" type="car" depart="0"><route edges="a"/></vehicle>'
        '<flow id="f" type="car" begin="0" end="10" number="3" from="a" to="b"/></routes>'
    )
    chosen = dominant_vtype([rou])
    assert 'id="probe"' in chosen and 'accel="2.6"' in chosen and "12" not in chosen
    plain = tmp_path / "plain.rou.xml"
    plain.write_text('<routes><vehicle id="v" depart="0"><route edges="a"/></vehicle></routes>')
    assert dominant_vtype([plain]) == '<vType id="probe"/>'


def _sumo_crossroads(folder: Path) -> tuple[Path, Path]:
    """A real two-lane crossroads with a light (netconvert) and an hour of demand."""
    arms = {"N": (0, 200), "S": (0, -200), "E": (200, 0), "W": (-200, 0)}
    nodes = "".join(f'<node id="{k}" x="{x}" y="{y}"/>' for k, (x, y) in arms.items())
    (folder / "x.nod.xml").write_text(
        f'<nodes><node id="C" x="0" y="0" type="traffic_light"/>{nodes}</nodes>'
    )
    edges = "".join(
        f'<edge id="{k}C" from="{k}" to="C" numLanes="1" speed="13.9"/>'
        f'<edge id="C{k}" from="C" to="{k}" numLanes="1" speed="13.9"/>'
        for k in arms
    )
    (folder / "x.edg.xml").write_text(f"<edges>{edges}</edges>")
    net = folder / "x.net.xml"
    command = [str(sumo_binary("netconvert")), "-n", str(folder / "x.nod.xml")]
    command += ["-e", str(folder / "x.edg.xml"), "-o", str(net), "--no-turnarounds"]
    subprocess.run(command, check=True, capture_output=True)
    rou = folder / "x.rou.xml"
    rou.write_text(
        "<routes>"
        '<flow id="we" begin="0" end="3600" vehsPerHour="700" from="WC" to="CE"/>'
        '<flow id="ns" begin="0" end="3600" vehsPerHour="500" from="NC" to="CS"/>'
        "</routes>"
    )
    return net, rou


def test_sumo_measures_what_a_held_green_discharges(tmp_path: Path) -> None:
    net, rou = _sumo_crossroads(tmp_path)
    junctions, graph = read_network(net)
    routes_ = [edges for _, edges in read_routes([rou], graph)]
    probes = {(p.link.from_edge, p.link.to_edge): p for p in loaded_links(junctions, routes_)}
    west, north = probes["WC", "CE"], probes["NC", "CS"]
    size = junctions["C"].size
    held = {"C": "".join("G" if i == west.link.index else "r" for i in range(size))}
    flows = "".join(
        f'<flow id="{name}" begin="0" end="900" vehsPerHour="3600" from="{p.link.from_edge}" '
        f'to="{p.link.to_edge}" departLane="0" departSpeed="max"/>'
        for name, p in (("green", west), ("red", north))
    )
    rates = discharge_rates(
        net, f"<routes>{flows}</routes>", held, warmup_s=60, seconds=240, seed=1
    )
    # a through lane at 50 km/h: below the car-following limit (SUMO's drivers dawdle), and
    # far above nothing; the red one delivers nothing at all
    assert 1200 < rates["green"] < saturation_flow(13.9)
    assert rates.get("red", 0.0) == 0.0
    runner = CliRunner()
    args = ["traffic", "capacity", "--net", str(net), "--routes", str(rou)]
    limit = json.loads(runner.invoke(main, args).output)
    done = runner.invoke(main, [*args, "--measure"])
    assert done.exit_code == 0, done.output
    measured = json.loads(done.output)
    assert measured["saturation_flows"] == "measured in SUMO (2 links)"
    share, bound = (x["lights"][0]["required_green_share"] for x in (measured, limit))
    assert bound < share < 1.0


def test_flows_count_their_vehicles_at_their_rate(net: Path, tmp_path: Path) -> None:
    _, graph = read_network(net)
    rou = tmp_path / "flows.rou.xml"
    rou.write_text(
        '<routes><route id="ns" edges="n_c c_s"/>'
        '<flow id="a" begin="0" end="3600" vehsPerHour="900" route="ns"/>'
        '<flow id="b" begin="0" end="1800" period="6" from="w_c" to="c_e"/>'
        '<flow id="c" begin="1800" end="3600" number="100" from="w_c" to="c_e"/>'
        '<flow id="d" begin="0" end="100" probability="0.1" from="w_c" to="c_e"/>'
        '<flow id="e" begin="0" end="100" period="exp(0.2)" from="w_c" to="c_e"/></routes>'
    )
    found = list(read_routes([rou], graph))
    assert sum(edges == ["n_c", "c_s"] for _, edges in found) == 900
    assert sum(edges == ["w_c", "c_e"] for _, edges in found) == 300 + 100 + 10 + 20
    assert max(d for d, _ in found) < 3600
    rou.write_text('<routes><flow id="x" period="soon" from="w_c" to="c_e"/></routes>')
    with pytest.raises(ValueError, match="flow 'x': unreadable rate"):
        list(read_routes([rou], graph))


def _permissive_net(tmp_path: Path, state: str, rules: bool = True) -> Path:
    """NET with one phase ``state`` over links 0 (north-south through) and 1 (west-east), and,
    with ``rules``, the junction's right-of-way table: link 1 yields to link 0."""
    request = (
        '<junction id="c" type="traffic_light">'
        '<request index="0" response="00" foes="10" cont="0"/>'
        '<request index="1" response="01" foes="01" cont="0"/></junction>'
    )
    text = NET.replace('state="GrG"', f'state="{state}"').replace('state="rGr"', f'state="{state}"')
    text = text.replace('state="yry"', 'state="yyy"').replace('state="ryr"', 'state="yyy"')
    path = tmp_path / f"permissive-{state}-{rules}.net.xml"
    path.write_text(text.replace("</net>", f"{request if rules else ''}</net>"))
    return path


def test_a_permissive_link_shares_its_green_with_the_links_it_yields_to(tmp_path: Path) -> None:
    """Link 1 on a permissive green ('g') crosses link 0's path and must let it pass: the two
    share the crossing's time, so the phase needs the sum of their shares, not the larger."""
    through = saturation_flow(13.89)
    demand = {("n_c", "c_s"): 900.0, ("w_c", "c_e"): 600.0}
    permissive = _permissive_net(tmp_path, "Ggr")
    junction = read_network(permissive)[0]["c"]
    assert junction.yields == {1: frozenset({0})}
    assert junction.minor == [frozenset({1})]
    assert required_share(junction, demand) == pytest.approx(1500 / through, abs=1e-3)
    # a link that delivered nothing when measured cannot serve its demand (and is no crash)
    stalled = {("c", lk): 0.0 for lk in junction.links[1]}
    assert required_share(junction, demand, stalled) == float("inf")
    # both protected (a phase no real light would show: the bound trusts the programme), or
    # no right-of-way table to read: each link on its own green, the busier one decides
    for other in (_permissive_net(tmp_path, "GGr"), _permissive_net(tmp_path, "Ggr", False)):
        found = read_network(other)[0]["c"]
        assert required_share(found, demand) == pytest.approx(900 / through, abs=1e-3)


def test_sumo_gives_a_permissive_turn_no_more_than_the_gaps_of_its_foe(tmp_path: Path) -> None:
    """What the bound assumes of SUMO: a left turn yielding to the oncoming through traffic
    delivers at most its own saturation flow times the share of time the through flow leaves
    free (L/s_L + T/s_T <= 1), whatever the through flow."""
    net, _ = _sumo_crossroads(tmp_path)
    junctions, _ = read_network(net)
    light_ = junctions["C"]
    left = next(
        lk
        for lks in light_.links.values()
        for lk in lks
        if (lk.from_edge, lk.to_edge) == ("SC", "CW")
    )
    oncoming = next(
        lk
        for lks in light_.links.values()
        for lk in lks
        if (lk.from_edge, lk.to_edge) == ("NC", "CS")
    )
    assert oncoming.index in light_.yields[left.index]
    phases = zip(light_.phases, light_.minor, strict=True)
    assert any(left.index in minor and oncoming.index in green for green, minor in phases)

    def run(offered: dict[str, tuple[Link, float]], left_state: str) -> dict[str, float]:
        flows = "".join(
            f'<flow id="{name}" begin="0" end="900" vehsPerHour="{rate:g}" '
            f'from="{lk.from_edge}" to="{lk.to_edge}" departLane="0" departSpeed="max"/>'
            for name, (lk, rate) in offered.items()
        )
        size = light_.size
        state = "".join(
            left_state if i == left.index else "G" if i == oncoming.index else "r"
            for i in range(size)
        )
        return discharge_rates(
            net, f"<routes>{flows}</routes>", {"C": state}, warmup_s=60, seconds=300, seed=3
        )

    s_left = run({"L": (left, 3600)}, "G")["L"]
    s_through = run({"T": (oncoming, 3600)}, "G")["T"]
    assert s_left > 900 and s_through > 1200
    for through in (300.0, 700.0):
        got = run({"L": (left, 3600), "T": (oncoming, through)}, "g")
        assert got["T"] == pytest.approx(through, rel=0.15)  # the through flow is served
        assert got["L"] / s_left + got["T"] / s_through <= 1.0
        assert got["L"] > 0  # and the left does use gaps
