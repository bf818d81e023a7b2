"""The command line as an operator uses it: real processes, real DuckDB files."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx
import orjson

from civica.app import build_services
from civica.storage import DuckDBStore
from tests.livesrv import free_port, serve

CIVICA = [sys.executable, "-m", "civica.cli"]


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CIVICA, *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


def test_keys_create_list_revoke(tmp_path: Path) -> None:
    db = str(tmp_path / "city.duckdb")
    made = run(
        "keys", "create", "--role", "device", "--label", "gateway 7", "--db", db, cwd=tmp_path
    )
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    assert key.startswith("civ_") and len(key) > 40
    listed = run("keys", "list", "--db", db, cwd=tmp_path)
    key_id = key.split("_")[1]
    assert key_id in listed.stdout and "gateway 7" in listed.stdout
    assert key.split("_", 2)[2] not in listed.stdout  # the secret is never shown again
    assert run("keys", "create", "--role", "king", "--db", db, cwd=tmp_path).returncode != 0
    assert run("keys", "revoke", key_id, "--db", db, cwd=tmp_path).returncode == 0
    store = DuckDBStore(db)
    try:
        record = store.api_key(key_id)
        assert record is not None and record.revoked and record.role == "device"
    finally:
        store.close()


def test_demo_seeds_a_city_that_the_api_serves(tmp_path: Path) -> None:
    db = tmp_path / "demo.duckdb"
    seeded = run("demo", "--db", str(db), "--hours", "2", "--no-serve", cwd=tmp_path)
    assert seeded.returncode == 0, seeded.stderr
    assert "0 rejected" in seeded.stderr
    key = (tmp_path / "demo.key").read_text().strip()
    store = DuckDBStore(db)
    try:
        with (
            serve(build_services(store)) as live,
            httpx.Client(base_url=live.url, headers={"Authorization": f"Bearer {key}"}) as c,
        ):
            types = c.get("/ngsi-ld/v1/types").json()["typeList"]
            assert {
                "Streetlight",
                "WaterObserved",
                "AirQualityObserved",
                "TrafficFlowObserved",
                "CrowdFlowObserved",
            } <= set(types)
            lights = c.get(
                "/ngsi-ld/v1/entities", params={"type": "Streetlight", "count": "true", "limit": 0}
            )
            assert lights.headers["NGSILD-Results-Count"] == "200"
            air = c.get(
                "/ngsi-ld/v1/entities",
                params={"type": "AirQualityObserved", "options": "keyValues", "limit": 1},
            ).json()[0]
            assert 0 < air["no2"] < 200 and air["location"]["type"] == "Point"
    finally:
        store.close()


def test_catalogue_and_dead_letters_commands(tmp_path: Path) -> None:
    out = run("catalogue", cwd=tmp_path)
    assert out.returncode == 0
    assert "peopleCount" in out.stdout and "WaterObserved" in out.stdout
    db = str(tmp_path / "x.duckdb")
    empty = run("dead-letters", "--db", db, cwd=tmp_path)
    assert empty.returncode == 0 and "0 dead letters" in empty.stderr


def test_serve_rejects_unknown_database_scheme(tmp_path: Path) -> None:
    out = run("keys", "list", "--db", "postgresql://127.0.0.1/test", cwd=tmp_path)
    assert out.returncode != 0
    assert "PostgreSQL backend is not available" in out.stderr
    assert orjson.dumps(out.returncode)  # the command exits, it does not hang


def test_a_database_held_by_another_process_is_a_clear_error(tmp_path: Path) -> None:
    """What an operator meets running ``civica keys create`` while ``civica serve`` holds the
    file: one sentence that says why, not a traceback."""
    db = tmp_path / "city.duckdb"
    held = DuckDBStore(db)  # this process holds the file, as a running server does
    try:
        out = run("keys", "create", "--role", "device", "--db", str(db), cwd=tmp_path)
    finally:
        held.close()
    assert out.returncode != 0
    assert "is open in another process" in out.stderr
    assert "civica serve" in out.stderr
    assert "Traceback" not in out.stderr
    assert run("keys", "create", "--role", "device", "--db", str(db), cwd=tmp_path).returncode == 0


def test_serve_admits_large_batches_in_worker_processes(tmp_path: Path) -> None:
    """``civica serve`` as an operator runs it: a large batch goes through the admission
    worker, good readings are stored, a refused one is named, and stopping the server leaves
    no process behind."""
    db = tmp_path / "city.duckdb"
    key = run("keys", "create", "--role", "admin", "--db", str(db), cwd=tmp_path).stdout.strip()
    port = free_port()
    log = (tmp_path / "serve.log").open("wb")
    proc = subprocess.Popen(
        [*CIVICA, "serve", "--db", str(db), "--port", str(port), "--ingest-workers", "1"],
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}/ngsi-ld/v1"
    try:
        with httpx.Client(headers={"Authorization": f"Bearer {key}"}, timeout=30) as c:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if c.get(f"{url}/types").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert proc.poll() is None and time.monotonic() < deadline, "no server"
                time.sleep(0.2)
            workers = _children(proc.pid)
            assert workers, "the admission worker was not started"
            docs = [
                {
                    "id": f"urn:ngsi-ld:WaterObserved:s{n}",
                    "type": "WaterObserved",
                    "pressure": {
                        "type": "Property",
                        "value": 30.0 + n % 5,
                        "unitCode": "MTR",
                        "observedAt": f"2026-03-01T08:{n % 60:02d}:00Z",
                    },
                }
                for n in range(400)
            ]
            docs[3]["ownerName"] = {"type": "Property", "value": "J. Doe"}  # refused
            body = orjson.dumps(docs)
            assert len(body) > 32 * 1024  # large enough for the worker
            sent = c.post(
                f"{url}/entityOperations/upsert",
                content=body,
                headers={"Content-Type": "application/json"},
            )
            assert sent.status_code == 207, sent.text
            result = sent.json()
            assert len(result["success"]) == 399
            [error] = result["errors"]
            assert error["entityId"] == "urn:ngsi-ld:WaterObserved:s3"
            assert "ownerName" in error["error"]["detail"]
            history = c.get(f"{url}/temporal/entities/urn:ngsi-ld:WaterObserved:s7").json()
            assert [i["value"] for i in history["pressure"]] == [32.0]
            count = c.get(
                f"{url}/entities", params={"type": "WaterObserved", "count": "true", "limit": 0}
            )
            assert count.headers["NGSILD-Results-Count"] == "399"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
    assert b"Application shutdown complete" in (tmp_path / "serve.log").read_bytes()
    deadline = time.monotonic() + 15  # the resource tracker leaves when its pipe closes
    alive = workers
    while alive and time.monotonic() < deadline:
        alive = [pid for pid in workers if Path(f"/proc/{pid}").exists() and not _zombie(pid)]
        time.sleep(0.2)
    assert not alive, f"{[_cmdline(p) for p in alive]} outlived civica serve"


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found.extend(int(c) for c in (task / "children").read_text().split())
    return found


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z")
    except OSError:
        return True


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:120]
    except OSError:
        return str(pid)
