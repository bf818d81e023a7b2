"""The command line as an operator uses it: real processes, real DuckDB files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import orjson

from civica.app import build_services
from civica.storage import DuckDBStore
from tests.livesrv import serve

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
