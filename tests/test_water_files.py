"""Reading a scenario directory: what is refused, what is repaired, and how it says so."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from civica.domains.water.files import WaterInputError, load_scenario
from civica.domains.water.scenario import ScenarioConfig, generate


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pristine")
    generate(ScenarioConfig("Net1", days=1, leaks=0, seed=1), out)
    return out


@pytest.fixture
def scenario_dir(pristine: Path, tmp_path: Path) -> Path:
    out = tmp_path / "scenario"
    shutil.copytree(pristine, out)
    return out


def _edit(path: Path, old: str, new: str, count: int = 1) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, count))


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines(keepends=True)


def test_good_scenario_loads_as_utc_frame(scenario_dir: Path) -> None:
    scenario = load_scenario(scenario_dir)
    assert str(scenario.readings.index.tz) == "UTC"
    assert scenario.readings.index.is_monotonic_increasing and scenario.step_s == 900
    assert list(scenario.readings.columns) == list(scenario.sensors["sensor_id"])
    assert scenario.of_kind("level") == ["L_2"] and scenario.element("L_2") == "2"


def test_broken_inp_is_refused(scenario_dir: Path) -> None:
    (scenario_dir / "network.inp").write_text("[JUNCTIONS]\nJ1 not-a-number\n")
    with pytest.raises(WaterInputError, match=r"network\.inp"):
        load_scenario(scenario_dir)


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (",pressure,", ",vibration,", "unknown kind 'vibration'"),
        (",pressure,11,m", ",pressure,11,bar", "unit 'bar' does not fit kind pressure"),
        (",pressure,11,", ",pressure,J99,", "node 'J99', not in network.inp"),
        (",level,2,", ",level,11,", "tank '11'"),
    ],
)
def test_bad_sensors_are_refused(scenario_dir: Path, old: str, new: str, message: str) -> None:
    _edit(scenario_dir / "sensors.csv", old, new)
    with pytest.raises(WaterInputError, match=message) as caught:
        load_scenario(scenario_dir)
    assert "sensors.csv:" in str(caught.value)


def test_duplicate_sensor_is_refused(scenario_dir: Path) -> None:
    path = scenario_dir / "sensors.csv"
    lines = _lines(path)
    path.write_text("".join([*lines, lines[1]]))
    with pytest.raises(WaterInputError, match="already listed on line 2"):
        load_scenario(scenario_dir)


def test_timestamp_without_timezone_names_the_line(scenario_dir: Path) -> None:
    _edit(scenario_dir / "readings.csv", "2026-01-01T00:15:00Z", "2026-01-01T00:15:00")
    with pytest.raises(WaterInputError, match=r"readings\.csv:3: .*no timezone"):
        load_scenario(scenario_dir)


def test_duplicate_timestamps_are_refused(scenario_dir: Path) -> None:
    _edit(scenario_dir / "readings.csv", "2026-01-01T00:15:00Z", "2026-01-01T00:00:00Z")
    with pytest.raises(
        WaterInputError, match=r"duplicate timestamp 2026-01-01T00:00:00.*\(lines 2, 3\)"
    ):
        load_scenario(scenario_dir)


def test_non_numbers_and_unknown_columns_are_refused(scenario_dir: Path) -> None:
    path = scenario_dir / "readings.csv"
    lines = _lines(path)
    cells = lines[5].split(",")
    cells[1] = "high"
    path.write_text("".join([*lines[:5], ",".join(cells), *lines[6:]]))
    with pytest.raises(WaterInputError, match=r"readings\.csv:6: sensor \S+: 'high' is not"):
        load_scenario(scenario_dir)
    path.write_text("".join(lines).replace("P_", "Q_", 1))
    with pytest.raises(WaterInputError, match=r"column Q_\S+ is not a sensor"):
        load_scenario(scenario_dir)


def test_out_of_order_rows_are_sorted_and_gaps_kept_as_nan(scenario_dir: Path) -> None:
    path = scenario_dir / "readings.csv"
    lines = _lines(path)
    # Swap two rows, drop two others, and empty one cell.
    body = [*lines[1:10], lines[11], lines[10], *lines[12:40], *lines[42:]]
    cells = body[5].split(",")
    cells[2] = ""
    body[5] = ",".join(cells)
    path.write_text("".join([lines[0], *body]))
    scenario = load_scenario(scenario_dir)
    assert any("sorted" in note for note in scenario.notes)
    assert any("2 missing rows" in note for note in scenario.notes)
    assert len(scenario.readings) == 96 and scenario.readings.index.is_monotonic_increasing
    assert scenario.readings.iloc[39:41].isna().all().all()
    assert np.isnan(scenario.readings.iloc[5, 1])


def test_off_grid_and_too_fine_steps_are_refused(scenario_dir: Path) -> None:
    path = scenario_dir / "readings.csv"
    original = path.read_text()
    _edit(path, "2026-01-01T00:30:00Z", "2026-01-01T00:31:00Z")
    with pytest.raises(WaterInputError, match="off the 900 s grid"):
        load_scenario(scenario_dir)
    path.write_text(original.replace(":15:00Z", ":01:00Z").replace(":45:00Z", ":46:00Z"))
    with pytest.raises(WaterInputError, match="300-900 s"):
        load_scenario(scenario_dir)


def test_missing_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(WaterInputError, match="no such scenario directory"):
        load_scenario(tmp_path / "absent")
    with pytest.raises(WaterInputError, match=r"network\.inp: no such file"):
        load_scenario(tmp_path)
