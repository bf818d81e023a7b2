"""Where a SUMO scenario's files are: a .sumocfg, a net + routes, or a RESCO scenario by name.

The RESCO benchmark scenarios (Ault & Sharon, NeurIPS 2021) ship inside the PyPI package
``sumo-rl`` under ``sumo_rl/nets/RESCO/``. They are read from the installed package, never
copied into this repository (their licences differ, some are non-commercial). The package is
located with ``importlib.util.find_spec`` so that sumo-rl's own code (gymnasium, pettingzoo)
is never imported.
"""

from __future__ import annotations

import importlib.util
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

RESCO_SCENARIOS = (
    "grid4x4",
    "arterial4x4",
    "cologne1",
    "cologne3",
    "cologne8",
    "ingolstadt1",
    "ingolstadt7",
    "ingolstadt21",
)


class ScenarioError(ValueError):
    """A scenario that cannot be run: unknown name, missing file, unreadable config."""


@dataclass(frozen=True)
class Scenario:
    """The files and time window of one SUMO run (seconds of simulated time)."""

    name: str
    net_file: Path
    route_files: tuple[Path, ...]
    begin: float = 0.0
    additional_files: tuple[Path, ...] = ()


def resco_root() -> Path:
    """The folder holding the RESCO scenarios inside the installed sumo-rl package."""
    spec = importlib.util.find_spec("sumo_rl")
    if spec is None or not spec.submodule_search_locations:
        raise ScenarioError("the RESCO scenarios need the sumo-rl package: pip install sumo-rl")
    root = Path(next(iter(spec.submodule_search_locations))) / "nets" / "RESCO"
    if not root.is_dir():
        raise ScenarioError(f"sumo-rl is installed but has no RESCO scenarios at {root}")
    return root


def resco_scenario(name: str) -> Scenario:
    """A RESCO scenario by name (grid4x4, arterial4x4, cologne1, ...)."""
    if name not in RESCO_SCENARIOS:
        known = ", ".join(RESCO_SCENARIOS)
        raise ScenarioError(f"unknown scenario {name!r}; known RESCO scenarios: {known}")
    return from_sumocfg(resco_root() / name / f"{name}.sumocfg", name=name)


def from_sumocfg(path: Path, name: str | None = None) -> Scenario:
    """Read the net, route and additional files and the begin time of a .sumocfg."""
    if not path.is_file():
        raise ScenarioError(f"SUMO configuration not found: {path}")
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as err:
        raise ScenarioError(f"{path} is not a readable SUMO configuration: {err}") from err

    def values(key: str) -> list[Path]:
        found: list[Path] = []
        for element in root.iter(key):
            for item in element.get("value", "").replace(",", " ").split():
                found.append((path.parent / item).resolve())
        return found

    nets = values("net-file")
    if len(nets) != 1:
        raise ScenarioError(f"{path} must name exactly one net-file")
    begin = next((float(e.get("value", "0")) for e in root.iter("begin")), 0.0)
    return from_files(
        nets[0],
        tuple(values("route-files")),
        begin=begin,
        additional_files=tuple(values("additional-files")),
        name=name or path.stem,
    )


def from_files(
    net_file: Path,
    route_files: tuple[Path, ...],
    *,
    begin: float = 0.0,
    additional_files: tuple[Path, ...] = (),
    name: str | None = None,
) -> Scenario:
    """A scenario from a network and route files, each checked to exist."""
    for file in (net_file, *route_files, *additional_files):
        if not file.is_file():
            raise ScenarioError(f"SUMO input file not found: {file}")
    if not route_files:
        raise ScenarioError("a scenario needs at least one route file (no traffic otherwise)")
    return Scenario(
        name=name or net_file.name.removesuffix(".net.xml"),
        net_file=net_file,
        route_files=route_files,
        begin=begin,
        additional_files=additional_files,
    )
