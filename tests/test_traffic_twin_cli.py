"""``civica traffic twin``: pacing on the platform clock, the command end to end, bad input."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

import civica.domains.traffic.twin as twin_module
from civica.api.services import Services
from civica.cli import main
from civica.core.store import EntityQuery, ObservationQuery
from civica.domains.traffic.engine import SumoEngine
from civica.domains.traffic.ids import TRAFFIC_FLOW, flow_id
from civica.domains.traffic.scenarios import Scenario
from civica.domains.traffic.twin import TwinError, check_run, pace_delay, run_twin
from civica.storage import DuckDBStore
from tests.test_traffic_control import _alive

MEASURES = ("intensity", "occupancy", "averageVehicleSpeed", "queueLength")
START = datetime(2026, 11, 23, 7, 0, tzinfo=UTC)
NAME = "x"  # the crossroads given as --net x.net.xml is named after the file


class Engines:
    """The SUMO processes the twin starts; ``interrupt_at`` plays Ctrl-C at that step."""

    def __init__(self) -> None:
        self.pids: list[int] = []
        self.interrupt_at: int | None = None


@pytest.fixture
def engines(monkeypatch: pytest.MonkeyPatch) -> Engines:
    seen = Engines()

    class Spy(SumoEngine):
        steps = 0

        def start(self) -> None:
            super().start()
            assert self.pid is not None
            seen.pids.append(self.pid)

        def step(self) -> None:
            self.steps += 1
            if self.steps == seen.interrupt_at:
                raise KeyboardInterrupt
            super().step()

    monkeypatch.setattr(twin_module, "SumoEngine", Spy)
    return seen


class PacedClock:
    """A monotonic clock that moves only when slept on, plus ``work_s`` per reading."""

    def __init__(self, work_s: float = 0.0) -> None:
        self.now = 100.0
        self.work_s = work_s
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        self.now += self.work_s
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds > 0
        self.sleeps.append(seconds)
        self.now += seconds


def _twin(crossroads: Scenario, *args: str, env: dict[str, str] | None = None) -> Result:
    files = ("--net", str(crossroads.net_file), "--routes", str(crossroads.route_files[0]))
    return CliRunner(env=env).invoke(main, ["traffic", "twin", *files, *args])


def _stored(db: Path, tenant: str) -> tuple[list[str], dict[str, list[float]], set[datetime]]:
    """The TrafficFlowObserved ids, their readings by attribute and the observedAt stamps."""
    store = DuckDBStore(db)
    try:
        page = store.query_entities(tenant, EntityQuery(types=(TRAFFIC_FLOW,), limit=1000))
        rows = store.query_observations(
            tenant, ObservationQuery(types=(TRAFFIC_FLOW,), attrs=MEASURES)
        )
    finally:
        store.close()
    by_attr: dict[str, list[float]] = {}
    for row in rows:
        by_attr.setdefault(row.attribute, []).append(row.value_num or 0.0)
    return [s.id for s in page.items], by_attr, {r.observed_at for r in rows}


@pytest.mark.parametrize(
    ("simulated", "wall", "speed", "delay"),
    [
        (60.0, 4.0, 10.0, 2.0),
        (60.0, 6.0, 10.0, 0.0),  # on time
        (60.0, 9.0, 10.0, 0.0),  # SUMO is slower than asked: never wait
        (60.0, 0.0, 1.0, 60.0),  # real time
        (60.0, 0.0, None, 0.0),
        (60.0, 0.0, 0.0, 0.0),  # 0 is as fast as possible too
    ],
)
def test_pace_delay(simulated: float, wall: float, speed: float | None, delay: float) -> None:
    assert pace_delay(simulated, wall, speed) == pytest.approx(delay)


@pytest.mark.parametrize("speed", [-1.0, float("nan")])
def test_a_negative_speed_is_refused(speed: float) -> None:
    with pytest.raises(TwinError, match="speed must be 0"):
        check_run(60, 30, speed)


def test_the_twin_runs_on_the_clock_it_is_given(
    crossroads: Scenario, services: Services, engines: Engines
) -> None:
    clock = PacedClock()
    seen: list[tuple[float, float]] = []  # (wall seconds since the start, simulated seconds)
    run = run_twin(
        crossroads,
        services.ingest,
        seconds=60,
        interval_s=30,
        start=START,
        speed=10,
        clock=clock,
        sleep=clock.sleep,
        on_step=lambda elapsed: seen.append((clock.now - 100.0, elapsed)),
    )
    assert run.intervals == 2 and run.simulated_s == 60
    assert sum(clock.sleeps) == pytest.approx(6.0)
    assert len(seen) == 60 and seen[-1][1] == 60
    assert all(simulated <= wall * 10 + 1e-9 for wall, simulated in seen)
    assert not any(_alive(pid) for pid in engines.pids)


def test_pacing_leaves_out_the_time_sumo_itself_took(
    crossroads: Scenario, services: Services
) -> None:
    clock = PacedClock(work_s=0.02)  # each reading of the clock: 20 ms of SUMO work
    run_twin(
        crossroads,
        services.ingest,
        seconds=60,
        interval_s=60,
        speed=10,
        clock=clock,
        sleep=clock.sleep,
    )
    assert 3.0 < sum(clock.sleeps) < 5.5  # SUMO's own time is not slept again
    assert clock.now - 100.0 == pytest.approx(6.0, abs=0.05)  # 60 s at 10x: 6 s of wall time


def test_as_fast_as_possible_never_sleeps(crossroads: Scenario, services: Services) -> None:
    clock = PacedClock()
    run_twin(crossroads, services.ingest, seconds=60, clock=clock, sleep=clock.sleep)
    assert clock.sleeps == []


def _alerts(db: Path, tenant: str) -> dict[str, int]:
    """The stored Alert entities per subCategory."""
    store = DuckDBStore(db)
    try:
        page = store.query_entities(tenant, EntityQuery(types=("Alert",), limit=1000))
    finally:
        store.close()
    return dict(Counter(str(a.entity["subCategory"]["value"]) for a in page.items))


def test_cli_publishes_readings_and_alerts_into_the_store(
    crossroads: Scenario, tmp_path: Path
) -> None:
    db = tmp_path / "city.duckdb"
    busy = ("--seconds", "300", "--interval", "30", "--speed", "0", "--demand-scale", "3")
    result = _twin(crossroads, *busy, "--tenant", "north", "--db", str(db))
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["scenario"] == NAME and summary["interrupted"] is False
    assert summary["detectors"] == 16  # two lanes on each of eight edges
    assert summary["intervals"] == 10 and summary["simulated_s"] == 300
    assert summary["speed"] == 0 and summary["wall_s"] > 0
    ids, by_attr, stamps = _stored(db, "north")
    assert len(ids) == summary["detectors"] and flow_id(NAME, "WC_0") in ids
    assert len(stamps) == summary["intervals"]
    assert sum(len(values) for values in by_attr.values()) == summary["readings"]
    assert set(by_attr) == set(MEASURES)
    assert len(by_attr["intensity"]) == len(by_attr["occupancy"]) == 16 * 10
    assert all(0.0 <= o <= 1.0 for o in by_attr["occupancy"])
    # three times the demand jams the crossroads: the watch raised it through ingest too
    assert summary["alerts"]["trafficJam"] >= 1
    raised = {kind: n for kind, n in summary["alerts"].items() if n}
    assert _alerts(db, "north") == raised
    assert _stored(db, "")[0] == []  # only the tenant asked for


def test_cli_reads_the_database_from_the_environment_and_picks_detectors(
    crossroads: Scenario, tmp_path: Path
) -> None:
    db = tmp_path / "env.duckdb"
    result = _twin(
        crossroads,
        *("--seconds", "60", "--interval", "30", "--speed", "0", "--no-watch"),
        *("--detector", "WC_0", "--detector", "CE_1"),
        env={"CIVICA_DATABASE_URL": str(db)},
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["detectors"] == 2 and summary["intervals"] == 2
    assert summary["alerts"] is None  # no watch
    ids, _, stamps = _stored(db, "")
    assert sorted(ids) == sorted([flow_id(NAME, "CE_1"), flow_id(NAME, "WC_0")])
    assert len(stamps) == 2


def test_ctrl_c_stops_cleanly_and_reports_what_was_published(
    crossroads: Scenario, tmp_path: Path, engines: Engines
) -> None:
    db = tmp_path / "stopped.duckdb"
    engines.interrupt_at = 75  # after two 30 s intervals
    args = ("--seconds", "600", "--interval", "30", "--speed", "0", "--db", str(db))
    result = _twin(crossroads, *args)
    assert result.exit_code == 130, result.output
    summary = json.loads(result.stdout)
    assert summary["interrupted"] is True
    assert summary["intervals"] == 2 and summary["simulated_s"] == 74
    assert set(summary["alerts"]) == {"trafficJam", "incidentSuspected"}  # counted per kind
    assert len(engines.pids) == 1 and not _alive(engines.pids[0])
    _, by_attr, stamps = _stored(db, "")  # the store was closed: it opens again
    assert len(stamps) == 2
    assert sum(len(values) for values in by_attr.values()) == summary["readings"]


@pytest.mark.parametrize(
    ("args", "message", "starts_sumo"),
    [
        (("--scenario", "atlantis"), "unknown scenario 'atlantis'", False),
        (("--sumocfg", "missing.sumocfg"), "SUMO configuration not found", False),
        (("--net", "missing.net.xml", "--routes", "r.xml"), "SUMO input file not found", False),
        ((), "give exactly one of --scenario, --sumocfg or --net", False),
        (("NET", "--speed", "-2"), "speed must be 0 (as fast as possible) or positive", False),
        (("NET", "--seconds", "30"), "interval is longer than the run", False),
        (("NET", "--interval", "7.5"), "interval must be a positive whole number", False),
        (("NET", "--detector", "nope"), "unknown detector(s) nope in scenario x", True),
        (("NET", "--demand-scale", "0"), "demand scale must be positive", False),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(
    crossroads: Scenario,
    tmp_path: Path,
    engines: Engines,
    args: tuple[str, ...],
    message: str,
    starts_sumo: bool,
) -> None:
    db = tmp_path / "bad.duckdb"
    if args[:1] == ("NET",):
        files = ("--net", str(crossroads.net_file), "--routes", str(crossroads.route_files[0]))
        args = (*files, *args[1:])
    result = CliRunner().invoke(main, ["traffic", "twin", *args, "--db", str(db)])
    assert result.exit_code == 2, result.output
    (line,) = result.stderr.splitlines()  # one line, no traceback
    assert line.startswith(f"Error: {message}")
    assert result.stdout == ""
    assert len(engines.pids) == int(starts_sumo)
    assert not any(_alive(pid) for pid in engines.pids)
