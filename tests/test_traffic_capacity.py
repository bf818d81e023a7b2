"""The capacity bound: least green share a light needs for its demand, on a hand-made net."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from civica.cli import main
from civica.domains.traffic.capacity import (
    capacity_report,
    read_network,
    read_routes,
    saturation_flow,
    shortest_path,
)

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


def report(net: Path, tmp_path: Path, text: str, **kw: float) -> dict[str, object]:
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
