"""Read and check a scenario directory: network.inp, sensors.csv and readings.csv.

Bad input raises ``WaterInputError`` with the file, line and sensor it is about. What is
tolerated, and how:

- empty cells (lost readings) stay NaN; detectors must cope with NaN;
- missing rows (a gap in the time grid) are added back as NaN rows, with a note;
- rows out of time order are sorted, with a note;
- everything else is an error: duplicate timestamps, timestamps without a timezone, off the
  time grid or unreadable, steps outside 5-15 minutes, non-numeric or infinite values, readings
  columns that sensors.csv does not declare (or declared sensors without a column), unknown
  kinds, units that do not fit the kind, and elements that are not in network.inp.

>>> scenario = load_scenario("examples/net3")  # doctest: +SKIP
>>> scenario.readings.index[0], scenario.of_kind("pressure")[:2]  # doctest: +SKIP
(Timestamp('2026-01-01 00:00:00+0000', tz='UTC'), ['P_10', 'P_15'])
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from civica.domains.water.network import Model, WaterInputError, load_network

__all__ = ["UNITS", "Scenario", "WaterInputError", "load_scenario", "load_truth"]

# The units each sensor kind may carry (sensors.csv); for quality the unit names the parameter.
UNITS: dict[str, tuple[str, ...]] = {
    "pressure": ("m",),
    "flow": ("m3/s",),
    "level": ("m",),
    "quality": ("mg/L", "uS/cm", "NTU"),
}
MIN_STEP_S, MAX_STEP_S = 300, 900
_ZONE = re.compile(r"(Z|[+-][0-9]{2}(:?[0-9]{2})?)\Z")


@dataclass(frozen=True)
class Scenario:
    """A checked scenario: the nominal network, the sensors and their readings.

    ``readings`` is indexed by UTC timestamps on a regular ``step_s`` grid, one float column per
    sensor (NaN where nothing was read); ``sensors`` has columns sensor_id, kind, element, unit.
    """

    directory: Path
    network: Model
    sensors: pd.DataFrame
    readings: pd.DataFrame
    step_s: int
    notes: tuple[str, ...]  # what was repaired on the way in (sorted rows, filled gaps)

    def of_kind(self, kind: str, unit: str | None = None) -> list[str]:
        """Sensor ids of one kind (and unit), in sensors.csv order."""
        rows = self.sensors[self.sensors["kind"] == kind]
        if unit is not None:
            rows = rows[rows["unit"] == unit]
        return [str(s) for s in rows["sensor_id"]]

    def element(self, sensor_id: str) -> str:
        """The node or link a sensor measures."""
        row = self.sensors[self.sensors["sensor_id"] == sensor_id]
        return str(row["element"].iloc[0])


def load_scenario(directory: str | Path) -> Scenario:
    """Read and check ``network.inp``, ``sensors.csv`` and ``readings.csv`` in ``directory``."""
    directory = Path(directory)
    if not directory.is_dir():
        raise WaterInputError(f"{directory}: no such scenario directory")
    network = load_network(directory / "network.inp")
    sensors = read_sensors(directory / "sensors.csv", network)
    readings, step_s, notes = read_readings(directory / "readings.csv", list(sensors["sensor_id"]))
    return Scenario(directory, network, sensors, readings, step_s, tuple(notes))


def read_sensors(path: Path, network: Model) -> pd.DataFrame:
    """sensors.csv as a frame, every sensor checked against the kinds, units and network."""
    rows = _csv_rows(path)
    header = rows[0] if rows else []
    if header != ["sensor_id", "kind", "element", "unit"]:
        raise WaterInputError(f"{path}: header must be sensor_id,kind,element,unit, got {header}")
    nodes, links = set(network.node_name_list), set(network.link_name_list)
    tanks = set(network.tank_name_list)
    seen: dict[str, int] = {}
    for line, row in enumerate(rows[1:], start=2):
        where = f"{path}:{line}"
        if len(row) != 4 or not all(cell.strip() for cell in row):
            raise WaterInputError(f"{where}: expected 4 non-empty fields, got {row}")
        sensor, kind, element, unit = (cell.strip() for cell in row)
        if sensor in seen:
            raise WaterInputError(f"{where}: sensor {sensor} already listed on line {seen[sensor]}")
        seen[sensor] = line
        if kind not in UNITS:
            raise WaterInputError(
                f"{where}: sensor {sensor} has unknown kind {kind!r} (one of {', '.join(UNITS)})"
            )
        if unit not in UNITS[kind]:
            raise WaterInputError(
                f"{where}: sensor {sensor}: unit {unit!r} does not fit kind {kind} "
                f"(use {' or '.join(UNITS[kind])})"
            )
        wanted = {"flow": links, "level": tanks}.get(kind, nodes)
        if element not in wanted:
            what = {"flow": "link", "level": "tank"}.get(kind, "node")
            raise WaterInputError(
                f"{where}: sensor {sensor} measures {what} {element!r}, not in network.inp"
            )
    frame = pd.DataFrame(
        [[cell.strip() for cell in row] for row in rows[1:]],
        columns=["sensor_id", "kind", "element", "unit"],
        dtype=str,
    )
    if frame.empty:
        raise WaterInputError(f"{path}: no sensors")
    return frame


def read_readings(path: Path, sensor_ids: list[str]) -> tuple[pd.DataFrame, int, list[str]]:
    """readings.csv on a regular UTC grid, its step (s) and notes on what was repaired."""
    rows = _csv_rows(path)
    if not rows or rows[0][:1] != ["timestamp"]:
        raise WaterInputError(f"{path}: the first column must be 'timestamp'")
    columns = [c.strip() for c in rows[0][1:]]
    _check_columns(path, columns, sensor_ids)
    body = rows[1:]
    if len(body) < 2:
        raise WaterInputError(f"{path}: needs at least two rows of readings")
    stamps: list[str] = []
    values = np.empty((len(body), len(columns)))
    for i, row in enumerate(body):
        line = i + 2
        if len(row) != len(columns) + 1:
            raise WaterInputError(
                f"{path}:{line}: {len(row)} fields, the header has {len(columns) + 1}"
            )
        stamp = row[0].strip()
        if not _ZONE.search(stamp):
            raise WaterInputError(
                f"{path}:{line}: timestamp {stamp!r} has no timezone (write UTC with 'Z')"
            )
        stamps.append(stamp)
        for j, cell in enumerate(row[1:]):
            values[i, j] = _number(cell, path, line, columns[j])
    try:
        index = pd.DatetimeIndex(pd.to_datetime(stamps, utc=True, format="ISO8601"))
    except (ValueError, TypeError) as err:
        raise WaterInputError(f"{path}: unreadable timestamp: {err}") from err
    return _regular(path, pd.DataFrame(values, index=index, columns=columns))


def _regular(path: Path, frame: pd.DataFrame) -> tuple[pd.DataFrame, int, list[str]]:
    """Sort, refuse duplicates, find the step and fill gaps with NaN rows."""
    notes: list[str] = []
    duplicated = frame.index.duplicated(keep=False)
    if duplicated.any():
        lines = [str(i + 2) for i in np.flatnonzero(duplicated)[:4]]
        raise WaterInputError(
            f"{path}: duplicate timestamp {frame.index[duplicated][0].isoformat()} "
            f"(lines {', '.join(lines)})"
        )
    if not frame.index.is_monotonic_increasing:
        first = int(np.flatnonzero(np.diff(_seconds(frame.index)) < 0)[0]) + 3
        notes.append(f"{path}: rows out of time order from line {first}; sorted")
        frame = frame.sort_index()
    offsets = _seconds(frame.index)
    step = int(pd.Series(np.diff(offsets)).mode().iloc[0])
    if not MIN_STEP_S <= step <= MAX_STEP_S:
        raise WaterInputError(f"{path}: readings every {step} s; the contract is 300-900 s")
    off_grid = np.flatnonzero(offsets % step)
    if off_grid.size:
        raise WaterInputError(
            f"{path}: timestamp {frame.index[off_grid[0]].isoformat()} is off the {step} s grid"
        )
    grid = pd.date_range(frame.index[0], frame.index[-1], freq=f"{step}s")
    if len(grid) != len(frame):
        notes.append(f"{path}: {len(grid) - len(frame)} missing rows filled with empty readings")
        frame = frame.reindex(grid)
    frame.index.name = "timestamp"
    return frame, step, notes


def _seconds(index: pd.DatetimeIndex) -> np.ndarray:
    """Whole seconds since the first timestamp (whatever resolution pandas chose)."""
    return np.asarray(np.round((index - index[0]).total_seconds()), dtype=np.int64)


def _check_columns(path: Path, columns: list[str], sensor_ids: list[str]) -> None:
    if len(set(columns)) != len(columns):
        twice = sorted({c for c in columns if columns.count(c) > 1})
        raise WaterInputError(f"{path}: column {twice[0]} appears more than once")
    unknown = [c for c in columns if c not in set(sensor_ids)]
    if unknown:
        raise WaterInputError(f"{path}: column {unknown[0]} is not a sensor in sensors.csv")
    absent = [s for s in sensor_ids if s not in set(columns)]
    if absent:
        raise WaterInputError(f"{path}: sensor {absent[0]} from sensors.csv has no column")


def _number(cell: str, path: Path, line: int, sensor: str) -> float:
    text = cell.strip()
    if not text or text.lower() == "nan":
        return float("nan")
    try:
        value = float(text)
    except ValueError as err:
        raise WaterInputError(f"{path}:{line}: sensor {sensor}: {text!r} is not a number") from err
    if not np.isfinite(value):
        raise WaterInputError(f"{path}:{line}: sensor {sensor}: {text!r} is not finite")
    return value


def _csv_rows(path: Path) -> list[list[str]]:
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            return [row for row in csv.reader(handle) if row]
    except FileNotFoundError as err:
        raise WaterInputError(f"{path}: no such file") from err
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise WaterInputError(f"{path}: cannot read: {err}") from err


def load_truth(directory: str | Path) -> dict[str, Any]:
    """truth.json of a generated scenario (for scoring only; detectors never read it)."""
    path = Path(directory) / "truth.json"
    try:
        truth = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise WaterInputError(f"{path}: no such file") from err
    except (OSError, ValueError) as err:
        raise WaterInputError(f"{path}: not valid JSON: {err}") from err
    if not isinstance(truth, dict) or not isinstance(truth.get("leaks"), list):
        raise WaterInputError(f"{path}: expected an object with a 'leaks' list")
    return truth
