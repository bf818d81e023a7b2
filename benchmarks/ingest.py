"""Ingest and query benchmarks for Civica on one DuckDB file, over real HTTP.

Prints one JSON object per figure on stdout (JSON lines); progress goes to stderr.

    python benchmarks/ingest.py            # full run (100,000 sensors, 10 M observations)
    python benchmarks/ingest.py --quick    # smoke run, under a minute

The server is ``civica serve`` in its own process (uvicorn, one worker, uvloop and httptools
when installed) over a DuckDB file in a temporary directory. The load generator runs in this
process: a few threads on keep-alive connections send request bodies serialised in advance.
See ``benchmarks/README.md`` for what each figure means and the last measured values.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import itertools
import json
import math
import os
import platform
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import httpx
import orjson
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from civica.api.auth import create_key
from civica.core.entity import Observation
from civica.core.store import ObservationQuery, StoredEntity
from civica.storage import DuckDBStore

TENANT = "default"
ENTITY_TYPE = "WaterObserved"
OBS_PER_ENTITY = 3  # pressure, flow, temperature, each with observedAt and unitCode
BATCH = 1_000
# A city-sized box (about 10 km x 10 km) around Brussels.
LON0, LAT0, DLON, DLAT = 4.30, 50.80, 0.14, 0.09
HISTORY_START = datetime(2024, 5, 1, tzinfo=UTC)  # bulk-loaded history: 1 May onwards
DAY = datetime(2024, 4, 30, tzinfo=UTC)  # the day of 1-minute history for one entity
HTTP_START = datetime(2024, 6, 1, tzinfo=UTC)  # readings sent over HTTP
_MINUTE = b"2000-01-01T00:00:"  # placeholder date, hour and minute in the prepared bodies
API = "/ngsi-ld/v1"

console = Console(stderr=True)


@dataclass(frozen=True)
class Plan:
    """How big a run is: sensors, HTTP ingest time and volume, history size, clients."""

    entities: int
    seconds: float
    min_http_observations: int
    total_observations: int
    connections: int
    query_runs: int


def sensor_id(i: int) -> str:
    return f"urn:ngsi-ld:{ENTITY_TYPE}:bench-{i:06d}"


def location(i: int) -> tuple[float, float]:
    rnd = random.Random(i)
    return round(LON0 + rnd.random() * DLON, 6), round(LAT0 + rnd.random() * DLAT, 6)


def reading(i: int, step: int) -> tuple[float, float, float]:
    """Plausible pressure (m head), flow (m³/s) and temperature (°C) of sensor i at a step."""
    phase = (i % 97) / 97 + step / 60
    return (
        round(35 + 10 * math.sin(6.283 * phase), 2),
        round(0.05 + 0.04 * math.cos(6.283 * phase), 4),
        round(12 + (i % 7) * 0.3, 1),
    )


def emit(figure: str, **fields: Any) -> None:
    print(json.dumps({"figure": figure, **fields}), flush=True)


def progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed:,.0f}/{task.total:,.0f}"),
        TimeElapsedColumn(),
        console=console,
    )


# ---- before the server starts: keys, entity states and bulk history ------------------------
def prepare(db: Path, plan: Plan) -> tuple[str, int]:
    """Create an admin key, the sensors' current states and bulk history; return (key, rows)."""
    store = DuckDBStore(db)
    key = create_key(store, "admin", "benchmark")
    bulk_target = max(0, plan.total_observations - plan.min_http_observations)
    per_step = plan.entities * OBS_PER_ENTITY
    steps = max(1, math.ceil(bulk_target / per_step))  # one reading per sensor every 15 min
    written = 0
    with progress() as bar:
        task = bar.add_task("bulk load (store API)", total=plan.entities + steps * per_step)
        for start in range(0, plan.entities, 10_000):
            ids = range(start, min(start + 10_000, plan.entities))
            store.write(TENANT, [_state(i, steps - 1) for i in ids], [])
            bar.advance(task, len(ids))
        for step in range(steps):
            at = HISTORY_START + timedelta(minutes=15 * step)
            for start in range(0, plan.entities, 50_000):
                rows = _history_rows(range(start, min(start + 50_000, plan.entities)), step, at)
                store.write(TENANT, [], rows)
                written += len(rows)
                bar.advance(task, len(rows))
        day = [
            obs
            for minute in range(24 * 60)
            for obs in _history_rows([0], minute, DAY + timedelta(minutes=minute, seconds=30))
        ]
        store.write(TENANT, [], day)
        written += len(day)
    store.close()
    return key, written


def _state(i: int, step: int) -> StoredEntity:
    """Sensor i as its last bulk-loaded reading left it."""
    at = HISTORY_START + timedelta(minutes=15 * step)
    lon, lat = location(i)
    pressure, flow, temperature = reading(i, step)
    stamp = at.strftime("%Y-%m-%dT%H:%M:%S.000Z")
    entity = {
        "id": sensor_id(i),
        "type": ENTITY_TYPE,
        "location": {"type": "GeoProperty", "value": {"type": "Point", "coordinates": [lon, lat]}},
        "pressure": {"type": "Property", "value": pressure, "unitCode": "MTR", "observedAt": stamp},
        "flow": {"type": "Property", "value": flow, "unitCode": "MQS", "observedAt": stamp},
        "temperature": {
            "type": "Property",
            "value": temperature,
            "unitCode": "CEL",
            "observedAt": stamp,
        },
    }
    return StoredEntity(entity, at, at)


def _history_rows(ids: Any, step: int, at: datetime) -> list[Observation]:
    rows: list[Observation] = []
    for i in ids:
        eid = sensor_id(i)
        pressure, flow, temperature = reading(i, step)
        rows.append(Observation(eid, ENTITY_TYPE, "pressure", at, pressure, None, "MTR"))
        rows.append(Observation(eid, ENTITY_TYPE, "flow", at, flow, None, "MQS"))
        rows.append(Observation(eid, ENTITY_TYPE, "temperature", at, temperature, None, "CEL"))
    return rows


# ---- the server process ----------------------------------------------------------------------
@contextlib.contextmanager
def server(db: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """``civica serve`` over ``db`` in its own process, as an operator would run it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = db.with_suffix(".log")
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "civica.cli", "serve", "--db", str(db), "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start:\n{log.read_text()[-2000:]}")
            time.sleep(0.1)
        yield url, proc
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process (all its threads) has used, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> tuple[float, float]:
    """(current, peak) resident set size of a process in MiB, from /proc."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        fields[name] = value.strip()
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def children_of(pid: int) -> list[int]:
    """Child processes (the server's admission workers), from /proc."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            found.extend(int(c) for c in (task / "children").read_text().split())
    return found


# ---- (a) HTTP batch upsert -------------------------------------------------------------------
def batch_bodies(entities: int) -> list[bytes]:
    """One body per batch of 1,000 distinct sensors; only the observedAt minute changes later.

    Each sensor reads at its own second and millisecond within the minute, as real ones do.
    """
    bodies = []
    for start in range(0, entities, BATCH):
        docs = []
        for i in range(start, min(start + BATCH, entities)):
            stamp = f"{_MINUTE.decode()}{i % 60:02d}.{i * 7 % 1000:03d}Z"
            pressure, flow, temperature = reading(i, 1)
            docs.append(
                {
                    "id": sensor_id(i),
                    "type": ENTITY_TYPE,
                    "pressure": _prop(pressure, "MTR", stamp),
                    "flow": _prop(flow, "MQS", stamp),
                    "temperature": _prop(temperature, "CEL", stamp),
                }
            )
        bodies.append(orjson.dumps(docs))
    return bodies


def _prop(value: float, unit: str, stamp: str) -> dict[str, Any]:
    return {"type": "Property", "value": value, "unitCode": unit, "observedAt": stamp}


def ingest(url: str, key: str, plan: Plan, server_pid: int) -> dict[str, Any]:
    bodies = batch_bodies(plan.entities)
    sizes = [body.count(b'"id"') for body in bodies]
    work = itertools.count()
    lock = threading.Lock()
    accepted = [0]
    latencies: list[float] = []
    failures: list[str] = []
    stop = threading.Event()
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}

    def worker() -> None:
        with httpx.Client(base_url=url, headers=headers, timeout=120) as client:
            while not stop.is_set():
                n = next(work)
                round_, index = divmod(n, len(bodies))
                at = HTTP_START + timedelta(minutes=round_)
                body = bodies[index].replace(_MINUTE, at.strftime("%Y-%m-%dT%H:%M:").encode())
                began = time.perf_counter()
                response = client.post(f"{API}/entityOperations/upsert", content=body)
                took = time.perf_counter() - began
                ok = sizes[index]
                if response.status_code == 207:
                    ok -= len(response.json()["errors"])
                elif response.status_code not in (201, 204):
                    with lock:
                        failures.append(f"{response.status_code}: {response.text[:200]}")
                    stop.set()
                    return
                with lock:
                    accepted[0] += ok
                    latencies.append(took)

    threads = [threading.Thread(target=worker) for _ in range(plan.connections)]
    server_cpu, own_cpu = cpu_seconds(server_pid), time.process_time()
    began = time.perf_counter()
    with progress() as bar:
        task = bar.add_task("HTTP upsert (observations)", total=plan.min_http_observations * 1.0)
        for t in threads:
            t.start()
        while True:
            time.sleep(0.25)
            elapsed = time.perf_counter() - began
            observed = accepted[0] * OBS_PER_ENTITY
            bar.update(task, completed=observed, total=max(observed, plan.min_http_observations))
            enough = elapsed >= plan.seconds and observed >= plan.min_http_observations
            if enough or stop.is_set() or elapsed > 10 * plan.seconds + 300:
                break
        stop.set()
        for t in threads:
            t.join()
    seconds = time.perf_counter() - began
    server_cpu = cpu_seconds(server_pid) - server_cpu
    own_cpu = time.process_time() - own_cpu
    if failures:
        raise RuntimeError(f"batch upsert failed: {failures[0]}")
    entities = accepted[0]
    return {
        "observations": entities * OBS_PER_ENTITY,
        "entities": entities,
        "seconds": round(seconds, 2),
        "observations_per_s": round(entities * OBS_PER_ENTITY / seconds),
        "entities_per_s": round(entities / seconds),
        "requests": len(latencies),
        "request_median_ms": _ms(statistics.median(latencies)),
        "request_p95_ms": _ms(_p95(latencies)),
        "server_cpu_cores_busy": round(server_cpu / seconds, 2),
        "load_generator_cpu_cores_busy": round(own_cpu / seconds, 2),
    }


# ---- (b) queries -------------------------------------------------------------------------------
def timed(
    client: httpx.Client, paths: Iterator[str], runs: int, check: Callable[[httpx.Response], int]
) -> dict[str, Any]:
    """Median and p95 of the HTTP round trip up to the last body byte (parsing not timed).

    ``check`` validates each answer and returns its size in results.
    """
    for _ in range(3):  # warm-up: connection, caches
        check(client.get(next(paths)))
    took: list[float] = []
    sizes: list[int] = []
    for _ in range(runs):
        path = next(paths)
        began = time.perf_counter()
        response = client.get(path)
        took.append(time.perf_counter() - began)
        sizes.append(check(response))
    return {
        "median_ms": _ms(statistics.median(took)),
        "p95_ms": _ms(_p95(took)),
        "runs": runs,
        "results_median": statistics.median(sizes),
    }


def _entities_in(response: httpx.Response) -> int:
    if response.status_code != 200:
        raise RuntimeError(f"query failed: {response.status_code} {response.text[:200]}")
    return len(response.json())


def query_figures(url: str, key: str, plan: Plan) -> bool:
    """Emit the query figures; return whether the temporal one went over HTTP."""
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=url, headers=headers, timeout=60) as client:
        want = min(10_000, plan.entities)
        path = f"{API}/entities?type={ENTITY_TYPE}&limit={want}"
        latest = timed(client, itertools.repeat(path), plan.query_runs, _entities_in)
        emit(
            "query_latest_state",
            request=f"GET {API}/entities?type={ENTITY_TYPE}&limit={want}",
            entities_of_type=plan.entities,
            target_ms=100,
            met=latest["p95_ms"] < 100,
            **latest,
        )

        points = (location(1_000_000 + k) for k in itertools.count())  # new random points
        near_paths = (
            f"{API}/entities?georel=near;maxDistance==500&geometry=Point"
            f"&coordinates=[{lon},{lat}]&count=true"
            for lon, lat in points
        )

        def near(response: httpx.Response) -> int:
            _entities_in(response)
            return int(response.headers["NGSILD-Results-Count"])

        geo = timed(client, near_paths, plan.query_runs, near)
        emit(
            "query_geo_near",
            request=f"GET {API}/entities?georel=near;maxDistance==500&geometry=Point"
            "&coordinates=[lon,lat]&count=true (default limit 20; a new point each run)",
            entities_with_location=plan.entities,
            box_km="10x10",
            target_ms=50,
            met=geo["p95_ms"] < 50,
            **geo,
        )

        paths = client.get("/openapi.json").json().get("paths", {})
        if not any(p.startswith(f"{API}/temporal/entities/") for p in paths):
            return False
        start, end = _iso(DAY), _iso(DAY + timedelta(days=1))
        path = (
            f"{API}/temporal/entities/{sensor_id(0)}?timerel=between&timeAt={start}&endTimeAt={end}"
        )

        def instances(response: httpx.Response) -> int:
            if response.status_code != 200:
                raise RuntimeError(f"temporal query: {response.status_code} {response.text[:200]}")
            body = response.json()
            return sum(len(v) for k, v in body.items() if isinstance(v, list))

        history = timed(client, itertools.repeat(path), plan.query_runs, instances)
        emit(
            "query_one_day_history",
            via="http",
            request=f"GET {path}",
            observations_in_day=24 * 60 * OBS_PER_ENTITY,
            target_ms=20,
            met=history["p95_ms"] < 20,
            **history,
        )
        return True


def store_history_figure(db: Path, plan: Plan) -> None:
    """Fallback while the HTTP temporal API is missing: time the store query it would run."""
    store = DuckDBStore(db)
    query = ObservationQuery(entity_ids=(sensor_id(0),), start=DAY, end=DAY + timedelta(days=1))
    for _ in range(3):
        store.query_observations(TENANT, query)
    took = []
    rows = 0
    for _ in range(plan.query_runs):
        began = time.perf_counter()
        rows = len(store.query_observations(TENANT, query))
        took.append(time.perf_counter() - began)
    store.close()
    emit(
        "query_one_day_history",
        via="store.query_observations (in-process, no HTTP: the temporal endpoint is not there)",
        observations_in_day=24 * 60 * OBS_PER_ENTITY,
        rows=rows,
        median_ms=_ms(statistics.median(took)),
        p95_ms=_ms(_p95(took)),
        runs=plan.query_runs,
        target_ms=20,
        met=_p95(took) * 1000 < 20,
    )


# ---- helpers -------------------------------------------------------------------------------------
def _ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


def _p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)]


def _iso(at: datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%SZ")


def count_rows(db: Path) -> tuple[int, int]:
    """Entities and observations in the file (every ``observations*`` table the store keeps)."""
    with duckdb.connect(str(db), read_only=True) as con:
        entities = con.execute("select count(*) from entities").fetchall()[0][0]
        tables = con.execute(
            "select table_name from duckdb_tables() where table_name like 'observations%'"
        ).fetchall()
        observations = sum(
            con.execute(f'select count(*) from "{name}"').fetchall()[0][0] for (name,) in tables
        )
    return int(entities), int(observations)


def _python_loop_seconds() -> float:
    start = time.perf_counter()
    total = 0
    for i in range(10_000_000):
        total += i
    return time.perf_counter() - start


def plan_of(args: argparse.Namespace) -> Plan:
    if args.quick:
        entities = args.entities or 5_000
        return Plan(entities, args.seconds or 5.0, 30_000, 300_000, args.connections, 10)
    entities = args.entities or 100_000
    return Plan(entities, args.seconds or 30.0, 1_000_000, 10_000_000, args.connections, 30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small smoke run (< 60 s)")
    parser.add_argument("--seconds", type=float, help="minimum HTTP ingest time (default 30)")
    parser.add_argument("--entities", type=int, help="distinct sensors (default 100,000)")
    parser.add_argument("--connections", type=int, default=4, help="concurrent HTTP clients")
    plan = plan_of(parser.parse_args())
    emit(
        "environment",
        python=platform.python_version(),
        cpus=os.cpu_count(),
        load_average_at_start=[round(x, 2) for x in os.getloadavg()],
        # How fast this machine runs Python today: noisy neighbours and throttling move every
        # figure below, so compare runs only alongside this one.
        python_loop_10m_s=round(_python_loop_seconds(), 2),
        duckdb=duckdb.__version__,
        uvloop=importlib.util.find_spec("uvloop") is not None,
        httptools=importlib.util.find_spec("httptools") is not None,
        plan=plan.__dict__,
    )
    with tempfile.TemporaryDirectory(prefix="civica-bench-") as tmp:
        db = Path(tmp) / "bench.duckdb"
        key, bulk = prepare(db, plan)
        with server(db) as (url, proc):
            figures = ingest(url, key, plan, proc.pid)
            emit(
                "http_batch_upsert",
                request=f"POST {API}/entityOperations/upsert, {BATCH} entities per batch",
                distinct_sensors=plan.entities,
                observations_per_entity=OBS_PER_ENTITY,
                connections=plan.connections,
                target_observations_per_s=50_000,
                met=figures["observations_per_s"] >= 50_000,
                **figures,
            )
            over_http = query_figures(url, key, plan)
            rss, peak = rss_mb(proc.pid)
            workers = [rss_mb(child)[0] for child in children_of(proc.pid)]
        if not over_http:
            store_history_figure(db, plan)
        entities, observations = count_rows(db)
        emit(
            "server_memory",
            rss_mb=round(rss, 1),
            peak_rss_mb=round(peak, 1),
            worker_processes=len(workers),
            workers_rss_mb=round(sum(workers), 1),
            entities=entities,
            observations=observations,
            bulk_loaded_observations=bulk,
            bulk_loaded_via="DuckDBStore.write (batched Arrow) before the server started",
            http_observations=figures["observations"],
            duckdb_memory_limit="1GB (DuckDBStore default)",
            target_mb=1536,
            met=rss + sum(workers) < 1536,
        )


if __name__ == "__main__":
    main()
