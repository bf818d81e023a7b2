"""The scenario generator: the file contract, leaks that are real, quality events."""

from __future__ import annotations

import csv
import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from civica.cli import main
from civica.domains.water import network as engine
from civica.domains.water import scenario as scenario_module
from civica.domains.water.files import UNITS, load_scenario
from civica.domains.water.scenario import ScenarioConfig, generate, generator_stamp, is_current
from civica.domains.water.sensors import district_meters

STAMP = re.compile(r"\A\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ\Z")


@pytest.fixture(scope="module")
def leaky(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("leaky")
    return out, generate(ScenarioConfig("Net3", days=3, leaks=2, seed=7), out)


@pytest.fixture(scope="module")
def dry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same seed without leaks: same demand, sensors and noise."""
    out = tmp_path_factory.mktemp("dry")
    generate(ScenarioConfig("Net3", days=3, leaks=0, seed=7), out)
    return out


def test_files_follow_the_contract(leaky: tuple[Path, dict[str, Any]]) -> None:
    out, _ = leaky
    with (out / "sensors.csv").open() as handle:
        sensors = list(csv.DictReader(handle))
    assert list(sensors[0]) == ["sensor_id", "kind", "element", "unit"]
    network = engine.load_network(out / "network.inp")
    for s in sensors:
        assert s["unit"] in UNITS[s["kind"]]
        names = network.link_name_list if s["kind"] == "flow" else network.node_name_list
        assert s["element"] in names
    kinds = {s["kind"] for s in sensors}
    assert kinds == {"pressure", "flow", "level"}
    with (out / "readings.csv").open() as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["timestamp", *(s["sensor_id"] for s in sensors)]
    stamps = [row[0] for row in rows[1:]]
    assert all(STAMP.match(t) for t in stamps)
    times = pd.to_datetime(stamps, utc=True)
    assert len(times) == 3 * 96 and times.is_monotonic_increasing
    assert set(np.diff(times.asi8)) == {np.diff(times.asi8)[0]}
    assert (times[1] - times[0]).total_seconds() == 900
    scenario = load_scenario(out)  # the detectors' reader accepts it as it is
    assert scenario.notes == () and scenario.step_s == 900


def test_written_network_is_the_nominal_one(leaky: tuple[Path, dict[str, Any]]) -> None:
    out, truth = leaky
    written = engine.load_network(out / "network.inp")
    original = engine.load_network(engine.resolve_network("Net3"))
    assert sorted(written.node_name_list) == sorted(original.node_name_list)
    assert sorted(written.link_name_list) == sorted(original.link_name_list)
    assert all(leak["pipe"] in written.pipe_name_list for leak in truth["leaks"])


def test_leaks_are_recorded_after_the_leak_free_days(leaky: tuple[Path, dict[str, Any]]) -> None:
    out, truth = leaky
    assert truth["network"] == "Net3" and truth["days"] == 3 and truth["injections"] == []
    assert len(truth["leaks"]) == 2
    quiet_until = pd.Timestamp(truth["start"]) + pd.Timedelta(days=truth["leak_free_days"])
    flows = pd.read_csv(out / "leak_flows.csv", index_col="timestamp", parse_dates=True)
    for leak in truth["leaks"]:
        start, end = pd.Timestamp(leak["start"]), pd.Timestamp(leak["end"])
        assert quiet_until <= start < end
        assert leak["kind"] in ("abrupt", "incipient")
        assert leak["peak_flow"] > 0
        outflow = flows[leak["pipe"]]
        assert outflow[outflow.index < start].max() == 0
        assert outflow.max() == pytest.approx(leak["peak_flow"], rel=1e-3)


def test_pressure_drops_near_a_leak(leaky: tuple[Path, dict[str, Any]], dry: Path) -> None:
    out, truth = leaky
    scenario = load_scenario(out)
    without = load_scenario(dry)
    graph = engine.network_graph(scenario.network)
    first = min(truth["leaks"], key=lambda leak: leak["start"])
    # The logger nearest to the leak along the network, by its node's nearest link.
    away = engine.distances_from_link(graph, first["pipe"])
    nearest = min(
        scenario.of_kind("pressure"),
        key=lambda s: min(
            away[link]
            for link, (u, v, _) in graph.graph["links"].items()
            if scenario.element(s) in (u, v)
        ),
    )
    start = pd.Timestamp(first["start"])
    change = scenario.readings[nearest] - without.readings[nearest]
    before = change[change.index < start].abs().max()
    # Half a day on: later, the lower tank levels switch pumps on earlier and raise pressure.
    soon = change[(change.index >= start) & (change.index < start + pd.Timedelta(hours=12))]
    assert before < 0.02  # same demand, sensors and noise: only quantisation differs
    assert soon.median() < -0.01 and soon.iloc[-4:].mean() < soon.iloc[:4].mean()


def test_quality_scenario_has_stations_and_injections(tmp_path: Path) -> None:
    truth = generate(
        ScenarioConfig("Net3", days=3, leaks=1, seed=2, quality=True, injections=2), tmp_path
    )
    scenario = load_scenario(tmp_path)
    chlorine = scenario.of_kind("quality", "mg/L")
    assert chlorine and len(scenario.of_kind("quality", "uS/cm")) == len(chlorine)
    values = scenario.readings[chlorine]
    assert values.min().min() >= 0 and values.max().max() < 1.3  # dosed at 1 mg/L, decays
    conductivity = scenario.readings[scenario.of_kind("quality", "uS/cm")]
    assert 300 < conductivity.median().median() < 600
    quiet_until = pd.Timestamp(truth["start"]) + pd.Timedelta(days=2)
    assert len(truth["injections"]) == 2
    for injection in truth["injections"]:
        assert injection["node"] in scenario.network.junction_name_list
        assert quiet_until <= pd.Timestamp(injection["start"]) < pd.Timestamp(injection["end"])
        assert injection["mass_rate"] > 0 and isinstance(injection["observable"], bool)
        # how far the injection moves its most reached station, in noise deviations
        assert injection["peak_station_sigmas"] >= 0
        assert injection["observable"] == (injection["peak_station_sigmas"] >= 5.0)


def test_cli_writes_a_scenario_and_refuses_bad_input(tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "net1"
    args = ["water", "scenario", "--network", "Net1", "--days", "3", "--leaks", "1"]
    result = runner.invoke(main, [*args, "--seed", "5", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "truth.json").read_text())["leaks"][0]["peak_flow"] > 0
    bad = runner.invoke(main, ["water", "scenario", "--network", "Nowhere", "--out", str(out)])
    assert bad.exit_code == 2 and "Nowhere" in bad.output and "Traceback" not in bad.output
    short = runner.invoke(main, [*args, "--leak-free-days", "3", "--out", str(out)])
    assert short.exit_code == 2 and "--leak-free-days" in short.output
    plain = tmp_path / "net3"
    net3 = ["water", "scenario", "--network", "Net3", "--days", "2", "--leak-free-days", "1"]
    done = runner.invoke(main, [*net3, "--no-districts", "--out", str(plain)])
    assert done.exit_code == 0, done.output
    facts = engine.network_facts(engine.load_network(engine.resolve_network("Net3")))
    flows = load_scenario(plain).sensors.query("kind == 'flow'")["element"]
    assert set(flows) == set(facts.inlet_links)


@pytest.mark.parametrize("name", ["Net2", "ky4"])
def test_other_shipped_networks_simulate(name: str, tmp_path: Path) -> None:
    """Networks without reservoirs (Net2) or with zero duration (ky4) still make scenarios."""
    truth = generate(ScenarioConfig(name, days=1, leaks=1, leak_free_days=0, seed=1), tmp_path)
    scenario = load_scenario(tmp_path)
    pressure = scenario.readings[scenario.of_kind("pressure")]
    assert truth["leaks"][0]["peak_flow"] > 0
    assert pressure.notna().mean().mean() > 0.9 and pressure.median().min() > 5.0


def test_same_seed_same_scenario_and_other_steps(tmp_path: Path) -> None:
    config = ScenarioConfig("Net1", days=2, leaks=1, leak_free_days=1, seed=9, sensors=5)
    generate(config, tmp_path / "a")
    generate(config, tmp_path / "b")
    for name in ("readings.csv", "sensors.csv", "truth.json", "network.inp"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert len(load_scenario(tmp_path / "a").of_kind("pressure")) == 5
    # a benchmark reuses a cached scenario only while the generator's code is the same
    assert json.loads((tmp_path / "a" / "truth.json").read_text())["generator"] == generator_stamp()
    assert is_current(tmp_path / "a")
    assert not is_current(tmp_path / "missing")
    fine = ScenarioConfig("Net1", days=2, leaks=1, leak_free_days=1, seed=9, step_s=300)
    generate(fine, tmp_path / "c")
    scenario = load_scenario(tmp_path / "c")
    assert scenario.step_s == 300 and len(scenario.readings) == 2 * 288


def test_a_full_tank_spills_instead_of_pushing_heads_to_a_million_metres(tmp_path: Path) -> None:
    """Net2 is fed by a well (a fixed negative demand). On a low-demand day its tank fills; a
    closed full tank left EPANET nowhere to put the water and heads of about 10⁶ m came out.
    Tanks now overflow, in the truth and in the written model, as real tanks do."""
    generate(ScenarioConfig("Net2", days=7, leaks=0, seed=5000), tmp_path)
    scenario = load_scenario(tmp_path)
    level = scenario.readings[scenario.of_kind("level")[0]]
    full = float(scenario.network.get_node(scenario.element(level.name)).max_level)
    assert level.max() > full - 0.05, "the tank must fill in this scenario, or nothing is tested"
    pressure = scenario.readings[scenario.of_kind("pressure")]
    assert float(pressure.max().max()) < 150.0
    assert all(tank.overflow for _, tank in scenario.network.tanks())


def test_a_scenario_from_older_generator_code_is_not_current(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cached benchmark scenarios written by older generator code must be generated again
    (the leak benchmark once reported figures from a cache older than a generator fix)."""
    (tmp_path / "truth.json").write_text(json.dumps({"generator": generator_stamp()}))
    assert is_current(tmp_path)
    monkeypatch.setattr(scenario_module, "generator_stamp", lambda: "0123456789abcdef")
    assert not is_current(tmp_path)
    (tmp_path / "truth.json").write_text("{not json")
    assert not is_current(tmp_path)


def test_big_networks_get_district_meters_and_small_ones_none() -> None:
    """Meters between district metered areas: ky4 (959 junctions) falls into districts of
    a few dozen junctions behind a few meters each; Net2 (35 junctions) is one district."""
    import networkx as nx

    facts = engine.network_facts(engine.load_network(engine.resolve_network("ky4")))
    meters = district_meters(facts)
    assert 16 <= len(meters) <= 80 and not set(meters) & set(facts.inlet_links)
    cut = set(meters) | set(facts.inlet_links)
    graph = nx.Graph()
    graph.add_nodes_from(facts.nodes)
    graph.add_edges_from(uv for link, uv in facts.link_ends.items() if link not in cut)
    sizes = sorted(len(set(part) & set(facts.junctions)) for part in nx.connected_components(graph))
    districts = [n for n in sizes if n >= 15]
    assert len(districts) >= 10 and sum(districts) >= 0.9 * len(facts.junctions)
    small = engine.network_facts(engine.load_network(engine.resolve_network("Net2")))
    assert district_meters(small) == []


def test_district_meters_are_written_unless_turned_off(tmp_path: Path) -> None:
    config = ScenarioConfig("Net3", days=2, leaks=0, leak_free_days=1, seed=3)
    generate(config, tmp_path / "with")
    generate(dataclasses.replace(config, districts=False), tmp_path / "without")
    facts = engine.network_facts(engine.load_network(engine.resolve_network("Net3")))
    flows = {
        name: set(load_scenario(tmp_path / name).sensors.query("kind == 'flow'")["element"])
        for name in ("with", "without")
    }
    assert flows["without"] == set(facts.inlet_links)
    assert flows["with"] == set(facts.inlet_links) | set(district_meters(facts))
    assert flows["with"] > flows["without"]
    readings = load_scenario(tmp_path / "with").readings
    assert readings[[f"F_{link}" for link in district_meters(facts)]].notna().mean().min() > 0.9
