"""The twin's private travel times: SUMO ids hashed as read, only aggregates in the store."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pytest
from click.testing import CliRunner

from civica.app import build_services
from civica.cli import main
from civica.core.clock import Clock
from civica.core.store import EntityQuery, ObservationQuery
from civica.domains.traffic.ids import TRAFFIC_FLOW, flow_id
from civica.domains.traffic.scenarios import Scenario, from_files
from civica.domains.traffic.sightings import Sighting, SightingError, SightingHasher
from civica.domains.traffic.twin import TwinError, run_live, run_twin, travel_segment
from civica.storage import DuckDBStore, MemoryStore
from tests.test_traffic_control import _alive, _crossroads

START = datetime(2026, 11, 23, 7, 0, tzinfo=UTC)
# Long, distinctive flow ids: a SUMO vehicle is "<flow>.<n>", so a scan for it means something.
FLOWS = {
    "civicaTwinCarWestEast": ("WC", "CE"),
    "civicaTwinCarEastWest": ("EC", "CW"),
    "civicaTwinCarSouthNorth": ("SC", "CN"),
}
PER_FLOW = 90  # vehicles per flow over the first 600 s: 540 veh/h, busy but not jammed
PAIRS = (("WC_0", "CE_0"), ("EC_0", "CW_0"))


@pytest.fixture(scope="module")
def crossroads(tmp_path_factory: pytest.TempPathFactory) -> Scenario:
    folder = tmp_path_factory.mktemp("twin-sightings")
    net = _crossroads(folder, "traffic_light").net_file
    routes = folder / "cars.rou.xml"
    routes.write_text(
        "<routes>"
        + "".join(
            f'<flow id="{flow}" begin="0" end="600" number="{PER_FLOW}" from="{a}" to="{b}"/>'
            for flow, (a, b) in FLOWS.items()
        )
        + "</routes>"
    )
    return from_files(net, (routes,), name="crossroads")


def _every_vehicle_id() -> set[str]:
    """All ids SUMO can give the route file's vehicles, read from the flows, not from the twin."""
    return {f"{flow}.{n}" for flow in FLOWS for n in range(PER_FLOW)}


class Recorded:
    """The hashers a run made, and every (vehicle id, time, token) they produced."""

    def __init__(self) -> None:
        self.hashers: list[SightingHasher] = []
        self.hashed: list[tuple[str, datetime, str]] = []

    def factory(self) -> Callable[[Clock], SightingHasher]:
        recorded = self

        class RecordingHasher(SightingHasher):
            def sighting(
                self, detector: str, vehicle_id: str, at: datetime | None = None
            ) -> Sighting:
                seen = super().sighting(detector, vehicle_id, at)
                recorded.hashed.append((vehicle_id, seen.at, seen.token))
                return seen

        def make(clock: Clock) -> SightingHasher:
            hasher = RecordingHasher(clock)
            self.hashers.append(hasher)
            return hasher

        return make


def _scan(folder: Path) -> tuple[str, bytes]:
    """Every value of every table as text, and the raw bytes of every file in ``folder``."""
    (db,) = folder.glob("*.duckdb")
    con = duckdb.connect(str(db), read_only=True)
    text: list[str] = []
    try:
        tables = con.execute(
            "SELECT table_schema, table_name FROM information_schema.tables"
            " WHERE table_type = 'BASE TABLE'"
        ).fetchall()
        assert {"entities", "observations"} <= {t for _, t in tables}
        for schema, table in tables:
            for row in con.execute(
                f'SELECT CAST(COLUMNS(*) AS VARCHAR) FROM "{schema}"."{table}"'
            ).fetchall():
                text.extend(str(value) for value in row)
    finally:
        con.close()
    raw = b"".join(p.read_bytes() for p in folder.iterdir() if p.is_file())
    return "\n".join(text), raw


def test_travel_times_reach_the_store_and_no_vehicle_id_or_token_does(
    crossroads: Scenario, tmp_path: Path
) -> None:
    folder = tmp_path / "db"
    folder.mkdir()
    store = DuckDBStore(folder / "city.duckdb")
    recorded = Recorded()
    try:
        run, _ = run_live(
            crossroads,
            build_services(store).ingest,
            seconds=600,
            interval_s=60,
            start=START,
            detectors=["WC_0", "NC_0"],  # CE_0, EC_0, CW_0 are watched for the pairs only
            travel_times=PAIRS,
            hasher=recorded.factory(),
        )
        segments = [travel_segment("crossroads", a, b) for a, b in PAIRS]
        rows = store.query_observations(
            "",
            ObservationQuery(
                entity_ids=tuple(s.entity_id for s in segments),
                attrs=("averageTravelTime", "medianTravelTime", "travelTime85"),
            ),
        )
        samples = store.query_observations(
            "",
            ObservationQuery(
                entity_ids=tuple(s.entity_id for s in segments), attrs=("travelTimeSamples",)
            ),
        )
        flows = store.query_entities("", EntityQuery(types=(TRAFFIC_FLOW,), limit=100))
    finally:
        store.close()

    assert run.pairs == PAIRS
    assert run.sightings >= 2 * PER_FLOW  # each W-E and E-W car at its origin at least
    assert run.travel_times >= 2 * 5 * 2  # two pairs, two 5-minute intervals, k = 5
    assert run.travel_time_aggregates == 4 and run.travel_time_suppressed == 0
    assert {r.entity_id for r in rows} == {s.entity_id for s in segments}
    assert {r.observed_at for r in rows} == {
        START + timedelta(minutes=5),
        START + timedelta(minutes=10),
    }
    assert all(0 < (r.value_num or 0) < 600 for r in rows)  # positive, shorter than the run
    assert all(r.unit == "SEC" for r in rows)
    assert len(samples) == 4 and all((r.value_num or 0) >= 5 for r in samples)
    assert sum(r.value_num or 0 for r in samples) <= run.travel_times
    # Only the selected detectors publish readings; the paired ones were watched, not published.
    travel_ids = {s.entity_id for s in segments}
    readings = {e.id for e in flows.items} - travel_ids
    assert readings == {flow_id("crossroads", "WC_0"), flow_id("crossroads", "NC_0")}

    # The twin hashed exactly the route file's vehicles, one token per vehicle and day.
    (hasher,) = recorded.hashers
    vehicles = _every_vehicle_id()
    seen_ids = {vid for vid, _, _ in recorded.hashed}
    tokens = {token for _, _, token in recorded.hashed}
    assert seen_ids <= vehicles and len(seen_ids) >= PER_FLOW
    assert len(tokens) == len(seen_ids)

    dump, raw = _scan(folder)
    assert "averageTravelTime" in dump and "travel-crossroads.WC_0.CE_0" in dump
    assert b"travel-crossroads.WC_0.CE_0" in raw  # the file is legible, so the byte scan counts
    for secret in (*vehicles, *tokens):
        assert secret not in dump
        assert secret.encode() not in raw
    assert "civicaTwinCar" not in dump and b"civicaTwinCar" not in raw
    assert "key" not in repr(hasher).replace("key_", "")


def test_the_key_rotates_at_simulated_midnight(crossroads: Scenario) -> None:
    night = datetime(2026, 11, 23, 23, 58, tzinfo=UTC)
    midnight = datetime(2026, 11, 24, tzinfo=UTC)
    recorded = Recorded()
    run = run_twin(
        crossroads,
        build_services(MemoryStore()).ingest,
        seconds=240,
        interval_s=60,
        start=night,
        travel_times=PAIRS,
        hasher=recorded.factory(),
    )
    assert run.sightings > 0
    (hasher,) = recorded.hashers
    # The hasher ran on simulated platform time, not on the wall clock.
    assert hasher.clock.now() == night + timedelta(seconds=240)
    assert hasher.key_days() == [midnight.date()]
    with pytest.raises(SightingError, match="discarded"):
        hasher.token("civicaTwinCarWestEast.0", night)
    by_day: dict[tuple[str, bool], set[str]] = {}
    for vid, at, token in recorded.hashed:
        by_day.setdefault((vid, at >= midnight), set()).add(token)
    assert all(len(tokens) == 1 for tokens in by_day.values())  # stable within a day
    both = [vid for vid, after in by_day if after and (vid, False) in by_day]
    assert both, "no vehicle was on a paired detector on both sides of midnight"
    for vid in both:
        assert by_day[vid, False] != by_day[vid, True]  # yesterday's token links to nothing
    # Another run, same ids and same day: its own key, other tokens.
    again = Recorded()
    run_twin(
        crossroads,
        build_services(MemoryStore()).ingest,
        seconds=60,
        interval_s=60,
        start=night,
        travel_times=PAIRS[:1],
        hasher=again.factory(),
    )
    first = {vid: token for vid, at, token in recorded.hashed if at < midnight}
    assert again.hashed and all(first.get(vid) != token for vid, _, token in again.hashed)


def test_the_command_publishes_travel_times_and_counts_them(
    crossroads: Scenario, tmp_path: Path
) -> None:
    db = tmp_path / "cli.duckdb"
    files = ("--net", str(crossroads.net_file), "--routes", str(crossroads.route_files[0]))
    args = ("--seconds", "600", "--interval", "60", "--speed", "0", "--no-watch")
    pair = ("--travel-time", "WC_0:CE_0", "--travel-time", "EC_0:CW_0")
    result = CliRunner().invoke(
        main, ["traffic", "twin", *files, *args, *pair, "--detector", "NC_0", "--db", str(db)]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    travel = summary["travel_times"]
    assert travel["pairs"] == 2 and travel["sightings"] >= 2 * PER_FLOW
    # The run starts now, so its first 5-minute interval may be partial (or too small to
    # publish); the one still open at the end is not published.
    assert travel["matched"] >= 20 and 2 <= travel["aggregates"] <= 4
    assert travel["aggregates"] + travel["suppressed"] <= 4
    assert summary["detectors"] == 1
    store = DuckDBStore(db)
    try:
        rows = store.query_observations(
            "", ObservationQuery(types=(TRAFFIC_FLOW,), attrs=("averageTravelTime",))
        )
    finally:
        store.close()
    assert len(rows) == travel["aggregates"]
    # the net given as x.net.xml is the scenario "x"
    assert {r.entity_id for r in rows} == {travel_segment("x", a, b).entity_id for a, b in PAIRS}


def test_bad_pairs_are_a_clear_error_and_sumo_is_closed(
    crossroads: Scenario, sumo_pids: list[int]
) -> None:
    ingest = build_services(MemoryStore()).ingest
    with pytest.raises(
        TwinError,
        match=r"unknown travel-time detector\(s\) nope in scenario crossroads; known: CE_0",
    ):
        run_twin(crossroads, ingest, seconds=60, travel_times=[("WC_0", "nope")])
    assert len(sumo_pids) == 1 and not _alive(sumo_pids[0])
    with pytest.raises(TwinError, match="WC_0:WC_0 is one detector twice"):
        run_twin(crossroads, ingest, seconds=60, travel_times=[("WC_0", "WC_0")])
    with pytest.raises(TwinError, match="needs two detector ids"):
        run_twin(crossroads, ingest, seconds=60, travel_times=[("", "WC_0")])
    assert len(sumo_pids) == 1  # refused before SUMO started


@pytest.mark.parametrize(
    ("pair", "message", "starts_sumo"),
    [
        ("WC_0", "--travel-time wants FROM:TO (two detector ids), got 'WC_0'", False),
        ("a:b:c", "--travel-time wants FROM:TO (two detector ids), got 'a:b:c'", False),
        ("WC_0:", "travel-time pair WC_0: needs two detector ids", False),
        ("CE_0:CE_0", "travel-time pair CE_0:CE_0 is one detector twice", False),
        ("WC_0:nope", "unknown travel-time detector(s) nope in scenario x", True),
    ],
)
def test_bad_pairs_on_the_command_line_are_one_line_and_exit_code_2(
    crossroads: Scenario,
    tmp_path: Path,
    sumo_pids: list[int],
    pair: str,
    message: str,
    starts_sumo: bool,
) -> None:
    files = ("--net", str(crossroads.net_file), "--routes", str(crossroads.route_files[0]))
    args = ("--seconds", "60", "--speed", "0", "--db", str(tmp_path / "bad.duckdb"))
    result = CliRunner().invoke(main, ["traffic", "twin", *files, *args, "--travel-time", pair])
    assert result.exit_code == 2, result.output
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"Error: {message}")
    assert result.stdout == ""
    assert len(sumo_pids) == int(starts_sumo) and not any(_alive(p) for p in sumo_pids)
