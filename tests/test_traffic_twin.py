"""The traffic twin on a tiny netconvert crossroads: readings through ingest into DuckDB."""

from __future__ import annotations

import os
import signal
import subprocess
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from civica.api.services import Services
from civica.core.store import ObservationQuery
from civica.domains.traffic.engine import SumoDisconnectedError, sumo_binary
from civica.domains.traffic.ids import flow_id
from civica.domains.traffic.scenarios import Scenario, ScenarioError, from_files
from civica.domains.traffic.twin import TwinError, run_twin
from tests.test_traffic_control import _alive

MEASURES = ("intensity", "occupancy", "averageVehicleSpeed", "queueLength")
START = datetime(2026, 11, 23, 7, 0, tzinfo=UTC)


def test_lane_detectors_become_stored_readings(crossroads: Scenario, services: Services) -> None:
    run = run_twin(crossroads, services.ingest, seconds=300, interval_s=60, start=START)
    assert run.intervals == 5
    assert run.readings >= 5 * len(run.sites) * 2  # intensity and occupancy at least
    assert {s.detector_id for s in run.sites} >= {"WC_0", "WC_1", "CE_0"}
    assert all(not s.detector_id.startswith(":") for s in run.sites)
    rows = services.store.query_observations(
        "", ObservationQuery(entity_ids=(flow_id("crossroads", "WC_0"),), attrs=MEASURES)
    )
    by_attr: dict[str, list[float]] = {}
    for row in rows:
        by_attr.setdefault(row.attribute, []).append(row.value_num or 0.0)
    times = sorted({r.observed_at for r in rows})
    assert times == [START + timedelta(seconds=60 * i) for i in range(1, 6)]
    assert len(by_attr["intensity"]) == 5
    # W->E and W->N demand (600 veh/h) enters on WC's two lanes
    assert 0 < sum(by_attr["intensity"]) / 5 < 600
    assert all(0.0 <= o <= 1.0 for o in by_attr["occupancy"])
    assert all(0.0 < v <= 13.9 * 3.6 + 1e-6 for v in by_attr["averageVehicleSpeed"])
    assert all(q >= 0.0 and q % 7.5 == 0 for q in by_attr["queueLength"])
    speed = services.store.query_observations(
        "",
        ObservationQuery(
            entity_ids=(flow_id("crossroads", "WC_0"),), attrs=("averageVehicleSpeed",)
        ),
    )
    assert {r.unit for r in speed} == {"KMH"}
    stored = services.store.get_entities("", [flow_id("crossroads", "WC_0")])
    entity = stored[flow_id("crossroads", "WC_0")].entity
    assert entity["refRoadSegment"]["object"] == "urn:ngsi-ld:RoadSegment:crossroads:WC"
    assert entity["laneId"]["value"] == 0


def test_network_induction_loops_are_used_when_present(
    crossroads: Scenario, services: Services, tmp_path: Path
) -> None:
    loops = tmp_path / "loops.add.xml"
    loops.write_text(
        "<additional>"
        '<inductionLoop id="e1_W0" lane="WC_0" pos="150" period="60" file="NUL"/>'
        '<inductionLoop id="e1_E0" lane="EC_0" pos="150" period="60" file="NUL"/>'
        "</additional>"
    )
    with_loops = replace(crossroads, additional_files=(loops,))
    run = run_twin(with_loops, services.ingest, seconds=180, interval_s=60, start=START)
    assert [(s.detector_id, s.kind, s.edge) for s in run.sites] == [
        ("e1_E0", "inductionLoop", "EC"),
        ("e1_W0", "inductionLoop", "WC"),
    ]
    rows = services.store.query_observations(
        "", ObservationQuery(entity_ids=(flow_id("crossroads", "e1_W0"),), attrs=MEASURES)
    )
    attrs = {r.attribute for r in rows}
    assert attrs == {"intensity", "occupancy", "averageVehicleSpeed"}  # a loop has no queue
    assert len({r.observed_at for r in rows}) == 3
    assert all(0.0 <= (r.value_num or 0) <= 1.0 for r in rows if r.attribute == "occupancy")


def test_bad_input_is_a_clear_error_and_sumo_is_closed(
    crossroads: Scenario, services: Services, sumo_pids: list[int]
) -> None:
    seen: list[int | None] = []
    with pytest.raises(TwinError, match=r"unknown detector\(s\) nope in scenario crossroads"):
        run_twin(
            crossroads,
            services.ingest,
            seconds=60,
            detectors=["WC_0", "nope"],
            on_interval=lambda at, docs: seen.append(None),
        )
    with pytest.raises(TwinError, match="no detector was selected"):
        run_twin(crossroads, services.ingest, seconds=60, detectors=[])
    with pytest.raises(ScenarioError, match="unknown scenario 'atlantis'"):
        run_twin("atlantis", services.ingest, seconds=60)
    with pytest.raises(TwinError, match="interval"):
        run_twin(crossroads, services.ingest, seconds=30, interval_s=60)
    assert not seen
    assert len(sumo_pids) == 2 and not any(_alive(pid) for pid in sumo_pids)


def test_sumo_is_ended_after_an_error_in_a_run(
    crossroads: Scenario, services: Services, sumo_pids: list[int]
) -> None:
    def boom(at: datetime, docs: list[dict[str, object]]) -> None:
        raise RuntimeError("watch failed")

    with pytest.raises(RuntimeError, match="watch failed"):
        run_twin(crossroads, services.ingest, seconds=120, on_interval=boom)
    assert len(sumo_pids) == 1 and not _alive(sumo_pids[0])


def test_a_georeferenced_network_gives_readings_a_location(
    services: Services, tmp_path: Path
) -> None:
    (tmp_path / "g.nod.xml").write_text(
        '<nodes><node id="C" x="13.4" y="52.5" type="traffic_light"/>'
        '<node id="W" x="13.397" y="52.5"/><node id="E" x="13.403" y="52.5"/></nodes>'
    )
    (tmp_path / "g.edg.xml").write_text(
        '<edges><edge id="WC" from="W" to="C" numLanes="1" speed="13.9"/>'
        '<edge id="CE" from="C" to="E" numLanes="1" speed="13.9"/></edges>'
    )
    net = tmp_path / "g.net.xml"
    subprocess.run(
        [
            str(sumo_binary("netconvert")),
            *("-n", str(tmp_path / "g.nod.xml"), "-e", str(tmp_path / "g.edg.xml")),
            *("-o", str(net), "--proj.utm"),
        ],
        check=True,
        capture_output=True,
    )
    routes = tmp_path / "g.rou.xml"
    routes.write_text(
        '<routes><flow id="f" begin="0" end="600" vehsPerHour="600" from="WC" to="CE"/></routes>'
    )
    run = run_twin(from_files(net, (routes,), name="line"), services.ingest, seconds=120)
    west = next(s for s in run.sites if s.edge == "WC")
    assert west.lon_lat is not None
    lon, lat = west.lon_lat
    assert 13.397 < lon < 13.4 and lat == pytest.approx(52.5, abs=1e-3)  # mid-lane
    entity = services.store.get_entities("", [flow_id("line", "WC_0")])[flow_id("line", "WC_0")]
    point = entity.entity["location"]["value"]
    assert point["type"] == "Point"
    assert point["coordinates"] == pytest.approx([lon, lat])


def test_sumo_dying_mid_run_is_a_disconnect_error_and_nothing_is_left(
    crossroads: Scenario, services: Services, sumo_pids: list[int]
) -> None:
    def kill(at: datetime, docs: list[dict[str, object]]) -> None:
        os.kill(sumo_pids[0], signal.SIGKILL)

    with pytest.raises(SumoDisconnectedError, match="lost the TraCI connection"):
        run_twin(crossroads, services.ingest, seconds=300, on_interval=kill)
    assert not _alive(sumo_pids[0])
    # the interval published before SUMO died is stored, nothing after it
    rows = services.store.query_observations(
        "", ObservationQuery(entity_ids=(flow_id("crossroads", "WC_0"),), attrs=("occupancy",))
    )
    assert len(rows) == 1
