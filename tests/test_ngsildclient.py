"""A third-party NGSI-LD client (Orange's ``ngsildclient`` 0.5.2) works against a live server.

ngsildclient pins old ``rich`` and ``httpx``, so it lives in its own venv
(``.venv-ngsildclient``, built by ``make .venv-ngsildclient``) and runs
``tests/ngsildclient_script.py`` in a subprocess. The script reports what the client saw;
this side asserts on that and, independently, on what the server stored.
"""

from __future__ import annotations

import json
import os
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from civica.core.store import ObservationQuery
from tests.conftest import REQUIRE_SERVICES
from tests.livesrv import LiveServer

ROOT = Path(__file__).resolve().parent.parent
CLIENT_PYTHON = ROOT / ".venv-ngsildclient" / "bin" / "python"
SCRIPT = Path(__file__).resolve().parent / "ngsildclient_script.py"
PREFIX = "urn:ngsi-ld:WaterObserved:"
T0 = datetime(2024, 5, 1, 6, 0, tzinfo=UTC)


def run_client(live: LiveServer, scenario: str, tmp_path: Path) -> dict[str, Any]:
    """Run one scenario of the script with the client's own interpreter; return its report."""
    if not CLIENT_PYTHON.exists():
        message = (
            f"{CLIENT_PYTHON.relative_to(ROOT)} is missing; build it with "
            "`make .venv-ngsildclient` (make test does)"
        )
        if REQUIRE_SERVICES:
            pytest.fail(f"{message}; CIVICA_REQUIRE_SERVICES=1 demands it")
        pytest.skip(message)
    report = tmp_path / f"{scenario}.json"
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "CIVICA_KEY": live.admin_key,
        "NO_PROXY": "127.0.0.1,localhost",  # the client must reach the loopback server directly
    }
    proc = subprocess.run(
        [str(CLIENT_PYTHON), str(SCRIPT), live.url, scenario, str(report)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if not report.exists():
        pytest.fail(f"the client script wrote no report (exit {proc.returncode}):\n{proc.stderr}")
    result: dict[str, Any] = json.loads(report.read_text())
    assert "crashed" not in result, result.get("crashed")
    assert proc.returncode == 0, proc.stderr
    return result


def test_ngsildclient_entities(live: LiveServer, tmp_path: Path) -> None:
    out = run_client(live, "entities", tmp_path)

    assert out["connected"] is True
    assert out["create"] is True
    assert out["create_again"] == {
        "raised": "NgsiAlreadyExistsError",
        "status": 409,
        "title": "AlreadyExists",
    }
    zones = [f"{PREFIX}zone-{i}" for i in range(5)]
    assert out["upsert"] == {"success": zones, "errors": []}
    assert out["upsert_update"] == {"success": zones[:2], "errors": []}
    assert out["upsert_mixed"] == {"success": [PREFIX + "zone-9"], "error_ids": [PREFIX + "bad-1"]}

    got = out["get"]
    assert got["id"] == PREFIX + "main-1"
    assert got["type"] == "WaterObserved"
    assert got["pressure"] == {
        "type": "Property",
        "value": 42.5,
        "observedAt": "2024-05-01T06:00:00.000Z",
        "unitCode": "MTR",
    }
    # 120 L/s sent as unitCode G51 comes back in the catalogue's canonical m³/s.
    assert got["flow"]["unitCode"] == "MQS"
    assert got["flow"]["value"] == pytest.approx(0.12)
    assert got["location"]["value"] == {"type": "Point", "coordinates": [2.3522, 48.8566]}
    assert got["name"]["value"] == "meter main-1"
    assert "@context" in got
    assert out["exists"] is True
    assert out["get_missing"]["raised"] == "NgsiResourceNotFoundError"

    everyone = sorted([PREFIX + "main-1", *zones, PREFIX + "zone-9"])
    assert out["query_type"] == everyone
    high = [PREFIX + "main-1", zones[2], zones[3], zones[4], PREFIX + "zone-9"]
    assert out["query_q"] == sorted(high)
    assert out["query_small_pages"] == len(everyone)  # paged two at a time via limit/offset
    assert out["count_type"] == len(everyone)
    assert out["count_q"] == len(high)
    assert out["types"] == ["WaterObserved"]
    assert out["bad_query"]["raised"] == "NgsiBadRequestDataError"

    assert out["delete_one"] is True
    assert out["delete_batch"] == {"success": zones[:2], "errors": []}
    assert out["exists_after_delete"] is False
    assert out["count_after_delete"] == len(everyone) - 3

    # What the server holds, read from its store rather than through the API.
    store = live.services.store
    left = store.get_entities("default", everyone)
    assert sorted(left) == sorted([zones[2], zones[3], zones[4], PREFIX + "zone-9"])
    assert left[zones[2]].entity["pressure"]["value"] == 40.0
    assert PREFIX + "bad-1" not in store.get_entities("default", [PREFIX + "bad-1"])
    history = store.query_observations(
        "default", ObservationQuery(entity_ids=(PREFIX + "main-1",), attrs=("flow", "pressure"))
    )
    # Deleting an entity keeps its history; units are canonical there too.
    assert [(o.attribute, o.value_num, o.unit, o.observed_at) for o in history] == [
        ("flow", pytest.approx(0.12), "MQS", T0),
        ("pressure", 42.5, "MTR", T0),
    ]
    zone0 = store.query_observations(
        "default", ObservationQuery(entity_ids=(zones[0],), attrs=("pressure",))
    )
    assert [(o.value_num, o.observed_at) for o in zone0] == [
        (30.0, T0),
        (31.0, T0 + timedelta(minutes=1)),
    ]


def _has_temporal_api(live: LiveServer) -> bool:
    with live.client() as http:
        paths = http.get("/openapi.json").json().get("paths", {})
    return any(p.startswith("/ngsi-ld/v1/temporal/entities") for p in paths)


def _values(troe: dict[str, Any], attr: str) -> list[tuple[float, datetime]]:
    """(value, observedAt) pairs of a simplified (options=temporalValues) attribute."""
    member = troe[attr]
    assert member["type"] == "Property", member
    return [(v, datetime.fromisoformat(t)) for v, t in member["values"]]


def test_ngsildclient_temporal(live: LiveServer, tmp_path: Path) -> None:
    if not _has_temporal_api(live):
        pytest.skip("the server has no /ngsi-ld/v1/temporal/entities endpoint yet")
    out = run_client(live, "temporal", tmp_path)

    assert out["create"] is True
    troe = out["temporal_get"]
    troe = troe[0] if isinstance(troe, list) else troe
    assert troe["id"] == PREFIX + "main-1"
    assert troe["type"] == "WaterObserved"
    expected = [(42.5, T0)] + [(40.0 + m, T0 + timedelta(minutes=m)) for m in range(1, 6)]
    assert sorted(_values(troe, "pressure"), key=lambda p: p[1]) == expected

    by_id = {t["id"]: t for t in out["temporal_query"]}
    assert sorted(by_id) == sorted([PREFIX + "main-1"] + [f"{PREFIX}zone-{i}" for i in range(3)])
    assert sorted(_values(by_id[PREFIX + "main-1"], "pressure"), key=lambda p: p[1]) == expected[:3]
    assert _values(by_id[PREFIX + "zone-2"], "pressure") == [(32.0, T0)]

    stored = live.services.store.query_observations(
        "default", ObservationQuery(entity_ids=(PREFIX + "main-1",), attrs=("pressure",))
    )
    assert [(o.value_num, o.observed_at) for o in stored] == expected
