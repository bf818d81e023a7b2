"""Drive a Civica server with the third-party ``ngsildclient`` (0.5.2) and record what it saw.

Runs inside ``.venv-ngsildclient`` (ngsildclient pins old rich/httpx, so it cannot share the
project venv); ``tests/test_ngsildclient.py`` starts the server and runs this file::

    CIVICA_KEY=civ_... .venv-ngsildclient/bin/python tests/ngsildclient_script.py \
        http://127.0.0.1:8123 entities|temporal result.json

It imports nothing from Civica: everything it learns comes over HTTP through the client.
Each step's outcome goes into one JSON document (written to the second argument) that the
pytest side asserts on.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import requests
from ngsildclient import Client, Entity
from ngsildclient.api.exceptions import (
    NgsiAlreadyExistsError,
    NgsiBadRequestDataError,
    NgsiResourceNotFoundError,
)
from ngsildclient.api.helper.temporal import TemporalQuery

PREFIX = "urn:ngsi-ld:WaterObserved:"
T0 = datetime(2024, 5, 1, 6, 0, tzinfo=UTC)


class BearerAuth(requests.auth.AuthBase):
    """Adds Civica's API key to every request the client's session sends."""

    def __init__(self, key: str) -> None:
        self.key = key

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = f"Bearer {self.key}"
        return request


def meter(name: str, pressure: float, *, lat: float, lon: float, at: datetime) -> Entity:
    """A WaterObserved entity built with ngsildclient's own model (normalized, with @context)."""
    entity = Entity("WaterObserved", name)
    entity.prop("pressure", pressure, unitcode="MTR", observedat=at)
    entity.prop("temperature", 11.5, unitcode="CEL", observedat=at)
    entity.loc(lat, lon)  # ngsildclient takes (lat, lon) and writes GeoJSON [lon, lat]
    entity.prop("name", f"meter {name}")
    return entity


def expect_error(kind: type[Exception], call: Any) -> dict[str, Any]:
    """Run ``call`` expecting the client to raise ``kind``; report what it raised."""
    try:
        call()
    except kind as err:
        details = err.problemdetails
        return {"raised": kind.__name__, "status": details.status, "title": details.title}
    except Exception as err:  # report anything else for the pytest side to show
        return {"raised": type(err).__name__, "message": str(err)[:300]}
    return {"raised": None}


def connect(url: str, key: str) -> Client:
    parts = urlsplit(url)
    return Client(
        hostname=parts.hostname or "127.0.0.1",
        port=parts.port or 80,
        custom_auth=BearerAuth(key),
        verbose=False,
    )


def entities_scenario(client: Client) -> dict[str, Any]:
    """Create, batch upsert, get, query, count and delete through the client's facade."""
    out: dict[str, Any] = {"connected": client.is_connected()}

    # Create one entity (POST /entities/ with application/ld+json and an @context).
    main = meter("main-1", 42.5, lat=48.8566, lon=2.3522, at=T0)
    main.prop("flow", 120.0, unitcode="G51", observedat=T0)  # litres per second
    out["create"] = client.create(main)
    out["create_again"] = expect_error(NgsiAlreadyExistsError, lambda: client.entities.create(main))

    # Batch upsert (POST /entityOperations/upsert/?options=replace) of new entities.
    batch = [
        meter(f"zone-{i}", 30.0 + i * 5, lat=48.85 + i / 1000, lon=2.35, at=T0) for i in range(5)
    ]
    created = client.upsert(batch)
    out["upsert"] = {"success": sorted(created.success), "errors": created.errors}

    # Upsert again in update mode with a later reading: existing entities are merged.
    later = T0 + timedelta(minutes=1)
    again = [meter(f"zone-{i}", 31.0 + i * 5, lat=48.85, lon=2.35, at=later) for i in range(2)]
    updated = client.upsert(again, update=True)
    out["upsert_update"] = {"success": sorted(updated.success), "errors": updated.errors}

    # A batch with one entity the catalogue refuses: the good one is stored, 207 says which.
    bad = Entity("WaterObserved", "bad-1")
    bad.prop("ownerName", "somebody")
    mixed = client.upsert([meter("zone-9", 50.0, lat=48.9, lon=2.4, at=T0), bad])
    out["upsert_mixed"] = {
        "success": sorted(mixed.success),
        "error_ids": sorted(e.get("entityId", "") for e in mixed.errors),
    }

    out["get"] = client.get(PREFIX + "main-1").to_dict()
    out["exists"] = client.exists(PREFIX + "main-1")
    out["get_missing"] = expect_error(
        NgsiResourceNotFoundError, lambda: client.get(PREFIX + "nowhere")
    )

    out["query_type"] = sorted(e.id for e in client.query(type="WaterObserved"))
    out["query_q"] = sorted(e.id for e in client.query(type="WaterObserved", q="pressure>=40"))
    out["query_small_pages"] = len(client.query(type="WaterObserved", limit=2))
    out["count_type"] = client.count(type="WaterObserved")
    out["count_q"] = client.count(type="WaterObserved", q="pressure>=40")
    out["types"] = client.types.list()
    out["bad_query"] = expect_error(
        NgsiBadRequestDataError, lambda: client.query(type="WaterObserved", q="(pressure>1")
    )

    # Delete one entity (DELETE /entities/{id}) and a batch (POST /entityOperations/delete/).
    out["delete_one"] = client.delete(main)
    # Entity objects, not ids: the client reads ``.id`` of each item after a 204.
    deleted = client.delete([Entity("WaterObserved", "zone-0"), Entity("WaterObserved", "zone-1")])
    out["delete_batch"] = {"success": sorted(deleted.success), "errors": deleted.errors}
    out["exists_after_delete"] = client.exists(PREFIX + "main-1")
    out["count_after_delete"] = client.count(type="WaterObserved")
    return out


def temporal_scenario(client: Client) -> dict[str, Any]:
    """Write a short history, then read it back through /temporal/entities."""
    out: dict[str, Any] = {}
    out["create"] = client.create(meter("main-1", 42.5, lat=48.8566, lon=2.3522, at=T0))
    client.upsert([meter(f"zone-{i}", 30.0 + i, lat=48.85, lon=2.35, at=T0) for i in range(3)])
    for minute in range(1, 6):  # one reading per request, as a meter would send them
        reading = meter(
            "main-1", 40.0 + minute, lat=48.8566, lon=2.3522, at=T0 + timedelta(minutes=minute)
        )
        client.upsert([reading], update=True)
    out["temporal_get"] = client.temporal.get(PREFIX + "main-1", attrs=["pressure"])
    # End the window between two readings so the test does not hinge on end-inclusiveness.
    window = TemporalQuery().between(T0, T0 + timedelta(minutes=2, seconds=30))
    out["temporal_query"] = client.temporal.query(
        type="WaterObserved", attrs=["pressure"], tq=window
    )
    return out


SCENARIOS = {"entities": entities_scenario, "temporal": temporal_scenario}


def main() -> int:
    url, scenario, target = sys.argv[1], sys.argv[2], sys.argv[3]
    try:
        client = connect(url, os.environ["CIVICA_KEY"])
        try:
            result = SCENARIOS[scenario](client)
        finally:
            client.close()
    except Exception:
        result = {"crashed": traceback.format_exc()}
    with open(target, "w", encoding="utf-8") as fh:
        json.dump(result, fh, indent=2, default=str)
    return 1 if "crashed" in result else 0


if __name__ == "__main__":
    sys.exit(main())
