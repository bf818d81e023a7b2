"""Shared fixtures: real DuckDB files, a live server, and the services rule.

Tests that need PostgreSQL, Mosquitto or Redis skip with a reason when the service is
down, unless CIVICA_REQUIRE_SERVICES=1 (CI), where a missing service fails the run.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from civica.api.services import Services
from civica.app import build_services
from civica.domains.traffic.scenarios import Scenario
from civica.storage import DuckDBStore
from tests.livesrv import LiveServer, serve

REQUIRE_SERVICES = os.environ.get("CIVICA_REQUIRE_SERVICES") == "1"


def service_available(host: str, port: int, name: str) -> None:
    """Skip (or fail under CIVICA_REQUIRE_SERVICES=1) when a TCP service is unreachable."""
    try:
        with socket.create_connection((host, port), timeout=2):
            return
    except OSError as err:
        message = f"{name} not reachable on {host}:{port} ({err})"
        if REQUIRE_SERVICES:
            pytest.fail(f"{message}; CIVICA_REQUIRE_SERVICES=1 demands it")
        pytest.skip(f"{message}; set CIVICA_REQUIRE_SERVICES=1 to make this a failure")


@pytest.fixture
def duckdb_path(tmp_path: Path) -> Path:
    return tmp_path / "civica.duckdb"


@pytest.fixture
def live(duckdb_path: Path) -> Iterator[LiveServer]:
    """A real server over a fresh DuckDB file."""
    store = DuckDBStore(duckdb_path)
    services = build_services(store)
    with serve(services) as server:
        yield server
    store.close()


@pytest.fixture
def sumo_pids(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The ids of the SUMO processes the traffic twin starts (to check none is left running)."""
    import civica.domains.traffic.twin as twin_module  # SUMO's modules only where needed
    from civica.domains.traffic.engine import SumoEngine

    pids: list[int] = []

    class Spy(SumoEngine):
        def start(self) -> None:
            super().start()
            assert self.pid is not None
            pids.append(self.pid)

    monkeypatch.setattr(twin_module, "SumoEngine", Spy)
    return pids


@pytest.fixture
def services(tmp_path: Path) -> Iterator[Services]:
    """The platform's services over a fresh DuckDB file."""
    store = DuckDBStore(tmp_path / "city.duckdb")
    yield build_services(store)
    store.close()


@pytest.fixture(scope="module")
def crossroads(tmp_path_factory: pytest.TempPathFactory) -> Scenario:
    """A signalised netconvert crossroads with traffic (one per test module)."""
    from tests.test_traffic_control import _crossroads

    return _crossroads(tmp_path_factory.mktemp("crossroads"), "traffic_light")
