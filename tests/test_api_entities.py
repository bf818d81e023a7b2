"""The NGSI-LD entity and batch API against a real server over a DuckDB file."""

from __future__ import annotations

from typing import Any

import httpx
import orjson

from tests.livesrv import LiveServer

BASE = "/ngsi-ld/v1"
CORE_CTX = "https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context.jsonld"


def light(n: int, status: str = "ok", lon: float = 4.35, lat: float = 50.85) -> dict[str, Any]:
    return {
        "id": f"urn:ngsi-ld:Streetlight:{n}",
        "type": "Streetlight",
        "status": {"type": "Property", "value": status},
        "illuminanceLevel": {"type": "Property", "value": n / 100},
        "location": {"type": "GeoProperty", "value": {"type": "Point", "coordinates": [lon, lat]}},
    }


def test_create_retrieve_and_conflict(live: LiveServer) -> None:
    with live.client() as c:
        r = c.post(f"{BASE}/entities", json=light(1))
        assert r.status_code == 201
        assert r.headers["Location"] == f"{BASE}/entities/urn:ngsi-ld:Streetlight:1"
        again = c.post(f"{BASE}/entities", json=light(1))
        assert again.status_code == 409
        assert again.json()["type"].endswith("/AlreadyExists")
        got = c.get(f"{BASE}/entities/urn:ngsi-ld:Streetlight:1").json()
        assert got["status"] == {"type": "Property", "value": "ok"}
        assert got["location"]["value"]["coordinates"] == [4.35, 50.85]
        missing = c.get(f"{BASE}/entities/urn:ngsi-ld:Streetlight:404")
        assert missing.status_code == 404
        assert missing.json()["type"] == "https://uri.etsi.org/ngsi-ld/errors/ResourceNotFound"


def test_json_ld_body_and_answer(live: LiveServer) -> None:
    doc = {**light(2), "@context": CORE_CTX}
    with live.client() as c:
        r = c.post(
            f"{BASE}/entities",
            content=orjson.dumps(doc),
            headers={"Content-Type": "application/ld+json"},
        )
        assert r.status_code == 201, r.text
        ld = c.get(
            f"{BASE}/entities/urn:ngsi-ld:Streetlight:2", headers={"Accept": "application/ld+json"}
        )
        assert ld.headers["content-type"].startswith("application/ld+json")
        assert "@context" in ld.json()
        plain = c.get(f"{BASE}/entities/urn:ngsi-ld:Streetlight:2")
        assert "@context" not in plain.json()
        no_ctx = c.post(
            f"{BASE}/entities",
            content=orjson.dumps(light(3)),
            headers={"Content-Type": "application/ld+json"},
        )
        assert no_ctx.status_code == 400


def test_query_filters_pagination_and_count(live: LiveServer) -> None:
    with live.client() as c:
        batch = [light(n, "ok" if n % 3 else "defectiveLamp", 4.30 + n * 0.001) for n in range(30)]
        r = c.post(f"{BASE}/entityOperations/create", json=batch)
        assert r.status_code == 201 and len(r.json()) == 30
        broken = c.get(
            f"{BASE}/entities",
            params={
                "type": "Streetlight",
                "q": 'status=="defectiveLamp"',
                "count": "true",
                "limit": 4,
            },
        )
        assert broken.headers["NGSILD-Results-Count"] == "10"
        assert len(broken.json()) == 4
        ids = [e["id"] for e in broken.json()]
        assert ids == sorted(ids)
        page2 = c.get(
            f"{BASE}/entities",
            params={"type": "Streetlight", "q": 'status=="defectiveLamp"', "limit": 4, "offset": 4},
        )
        assert not set(ids) & {e["id"] for e in page2.json()}
        ranged = c.get(
            f"{BASE}/entities",
            params={
                "type": "Streetlight",
                "q": "illuminanceLevel==0.10..0.14",
                "count": "true",
                "limit": 0,
            },
        )
        assert ranged.headers["NGSILD-Results-Count"] == "5"
        assert ranged.json() == []
        either = c.get(
            f"{BASE}/entities",
            params={
                "type": "Streetlight",
                "q": "illuminanceLevel<0.02|illuminanceLevel>=0.28",
                "options": "keyValues",
            },
        ).json()
        assert sorted(e["illuminanceLevel"] for e in either) == [0.0, 0.01, 0.28, 0.29]
        assert isinstance(either[0]["status"], str)
        by_id = c.get(
            f"{BASE}/entities", params={"id": "urn:ngsi-ld:Streetlight:1,urn:ngsi-ld:Streetlight:2"}
        ).json()
        assert {e["id"] for e in by_id} == {
            "urn:ngsi-ld:Streetlight:1",
            "urn:ngsi-ld:Streetlight:2",
        }
        pattern = c.get(
            f"{BASE}/entities",
            params={"idPattern": r"urn:ngsi-ld:Streetlight:2\d", "count": "true"},
        )
        assert pattern.headers["NGSILD-Results-Count"] == "10"
        projected = c.get(
            f"{BASE}/entities", params={"type": "Streetlight", "attrs": "status", "limit": 1}
        ).json()[0]
        assert set(projected) == {"id", "type", "status"}
        assert c.get(f"{BASE}/entities").status_code == 400  # no filter at all
        assert (
            c.get(f"{BASE}/entities", params={"type": "Streetlight", "q": "status=="}).status_code
            == 400
        )
        assert (
            c.get(f"{BASE}/entities", params={"type": "Streetlight", "limit": "x"}).status_code
            == 400
        )
        assert (
            c.get(f"{BASE}/entities", params={"type": "Streetlight", "limit": 100_000}).status_code
            == 403
        )


def test_geo_queries(live: LiveServer) -> None:
    with live.client() as c:
        # Points 0.001° of longitude apart at 50.85°N: about 70 m each.
        c.post(
            f"{BASE}/entityOperations/create",
            json=[light(n, lon=4.350 + n * 0.001, lat=50.85) for n in range(10)],
        )
        near = c.get(
            f"{BASE}/entities",
            params={
                "type": "Streetlight",
                "georel": "near;maxDistance==150",
                "geometry": "Point",
                "coordinates": "[4.350,50.85]",
            },
        ).json()
        assert {e["id"] for e in near} == {f"urn:ngsi-ld:Streetlight:{n}" for n in (0, 1, 2)}
        far = c.get(
            f"{BASE}/entities",
            params={
                "type": "Streetlight",
                "georel": "near;minDistance==500",
                "geometry": "Point",
                "coordinates": "[4.350,50.85]",
                "count": "true",
                "limit": 0,
            },
        )
        assert far.headers["NGSILD-Results-Count"] == "2"  # n=8 (≈562 m) and n=9 (≈632 m)
        box = [
            [[4.3525, 50.84], [4.3555, 50.84], [4.3555, 50.86], [4.3525, 50.86], [4.3525, 50.84]]
        ]
        within = c.get(
            f"{BASE}/entities",
            params={
                "type": "Streetlight",
                "georel": "within",
                "geometry": "Polygon",
                "coordinates": orjson.dumps(box).decode(),
            },
        ).json()
        assert {e["id"] for e in within} == {f"urn:ngsi-ld:Streetlight:{n}" for n in (3, 4, 5)}
        hits = c.get(
            f"{BASE}/entities",
            params={
                "type": "Streetlight",
                "georel": "intersects",
                "geometry": "Polygon",
                "coordinates": orjson.dumps(box).decode(),
            },
        ).json()
        assert len(hits) == 3
        geojson = c.get(
            f"{BASE}/entities",
            params={"type": "Streetlight", "limit": 2},
            headers={"Accept": "application/geo+json"},
        ).json()
        assert geojson["type"] == "FeatureCollection"
        assert geojson["features"][0]["geometry"]["type"] == "Point"
        bad = c.get(
            f"{BASE}/entities",
            params={
                "type": "Streetlight",
                "georel": "near",
                "geometry": "Point",
                "coordinates": "[4.35,50.85]",
            },
        )
        assert bad.status_code == 400
        assert (
            c.get(
                f"{BASE}/entities",
                params={
                    "type": "Streetlight",
                    "georel": "within",
                    "geometry": "Polygon",
                    "coordinates": "[[[0,0],[1,1]]]",
                },
            ).status_code
            == 400
        )


def test_batch_upsert_partial_failure_keeps_good_entities(live: LiveServer) -> None:
    good = light(1)
    bad_unit = {
        "id": "urn:ngsi-ld:WaterObserved:w1",
        "type": "WaterObserved",
        "pressure": {"type": "Property", "value": 3.0, "unitCode": "FURLONG"},
    }
    out_of_range = {
        "id": "urn:ngsi-ld:WaterObserved:w2",
        "type": "WaterObserved",
        "pressure": {"type": "Property", "value": 9000.0},
    }
    naive_time = {
        "id": "urn:ngsi-ld:WaterObserved:w3",
        "type": "WaterObserved",
        "pressure": {"type": "Property", "value": 40.0, "observedAt": "2026-01-01T10:00:00"},
    }
    wrong_type = {
        "id": "urn:ngsi-ld:WaterObserved:w4",
        "type": "WaterObserved",
        "pressure": {"type": "Property", "value": "high"},
    }
    converted = {
        "id": "urn:ngsi-ld:WaterObserved:w5",
        "type": "WaterObserved",
        "pressure": {"type": "Property", "value": 4.0, "unitCode": "BAR"},
    }
    with live.client() as c:
        r = c.post(
            f"{BASE}/entityOperations/upsert",
            json=[good, bad_unit, out_of_range, naive_time, wrong_type, converted],
        )
        assert r.status_code == 207
        body = r.json()
        assert sorted(body["success"]) == [
            "urn:ngsi-ld:Streetlight:1",
            "urn:ngsi-ld:WaterObserved:w5",
        ]
        reasons = {e["entityId"]: e["error"] for e in body["errors"]}
        assert set(reasons) == {
            "urn:ngsi-ld:WaterObserved:w1",
            "urn:ngsi-ld:WaterObserved:w2",
            "urn:ngsi-ld:WaterObserved:w3",
            "urn:ngsi-ld:WaterObserved:w4",
        }
        assert "FURLONG" in reasons["urn:ngsi-ld:WaterObserved:w1"]["detail"]
        assert "physical range" in reasons["urn:ngsi-ld:WaterObserved:w2"]["detail"]
        assert "timezone" in reasons["urn:ngsi-ld:WaterObserved:w3"]["detail"]
        assert all(e["status"] == 400 for e in reasons.values())
        w5 = c.get(f"{BASE}/entities/urn:ngsi-ld:WaterObserved:w5").json()
        # 4 bar = 400 kPa = 40.79 m of water head.
        assert abs(w5["pressure"]["value"] - 400_000 / 9806.65) < 1e-6
        assert w5["pressure"]["unitCode"] == "MTR"
        # Upserting only existing entities answers 204; update merges attributes.
        again = c.post(
            f"{BASE}/entityOperations/upsert",
            json=[
                {
                    "id": good["id"],
                    "type": "Streetlight",
                    "powerState": {"type": "Property", "value": "on"},
                }
            ],
        )
        assert again.status_code == 204
        merged = c.get(f"{BASE}/entities/{good['id']}").json()
        assert merged["powerState"]["value"] == "on" and merged["status"]["value"] == "ok"
        replaced = c.post(
            f"{BASE}/entityOperations/upsert",
            params={"options": "replace"},
            json=[
                {
                    "id": good["id"],
                    "type": "Streetlight",
                    "powerState": {"type": "Property", "value": "off"},
                }
            ],
        )
        assert replaced.status_code == 204
        assert "status" not in c.get(f"{BASE}/entities/{good['id']}").json()


def test_batch_update_and_delete(live: LiveServer) -> None:
    with live.client() as c:
        c.post(f"{BASE}/entityOperations/create", json=[light(1), light(2)])
        r = c.post(
            f"{BASE}/entityOperations/update",
            json=[
                {
                    "id": "urn:ngsi-ld:Streetlight:1",
                    "type": "Streetlight",
                    "status": {"type": "Property", "value": "columnIssue"},
                },
                {
                    "id": "urn:ngsi-ld:Streetlight:9",
                    "type": "Streetlight",
                    "status": {"type": "Property", "value": "ok"},
                },
            ],
        )
        assert r.status_code == 207
        assert r.json()["success"] == ["urn:ngsi-ld:Streetlight:1"]
        assert r.json()["errors"][0]["error"]["status"] == 404
        kept = c.post(
            f"{BASE}/entityOperations/update",
            params={"options": "noOverwrite"},
            json=[
                {
                    "id": "urn:ngsi-ld:Streetlight:1",
                    "type": "Streetlight",
                    "status": {"type": "Property", "value": "ok"},
                }
            ],
        )
        assert kept.status_code == 204
        status = c.get(f"{BASE}/entities/urn:ngsi-ld:Streetlight:1").json()["status"]["value"]
        assert status == "columnIssue"
        d = c.post(
            f"{BASE}/entityOperations/delete",
            json=["urn:ngsi-ld:Streetlight:1", "urn:ngsi-ld:Streetlight:404", "not a uri"],
        )
        assert d.status_code == 207
        assert d.json()["success"] == ["urn:ngsi-ld:Streetlight:1"]
        assert len(d.json()["errors"]) == 2
        assert (
            c.post(
                f"{BASE}/entityOperations/delete", json=["urn:ngsi-ld:Streetlight:2"]
            ).status_code
            == 204
        )
        assert c.post(f"{BASE}/entityOperations/upsert", json={"id": "x"}).status_code == 400


def test_attribute_operations(live: LiveServer) -> None:
    eid = "urn:ngsi-ld:Streetlight:1"
    with live.client() as c:
        c.post(f"{BASE}/entities", json=light(1))
        r = c.post(
            f"{BASE}/entities/{eid}/attrs", json={"powerState": {"type": "Property", "value": "on"}}
        )
        assert r.status_code == 204
        r = c.post(
            f"{BASE}/entities/{eid}/attrs",
            params={"options": "noOverwrite"},
            json={"powerState": {"type": "Property", "value": "off"}},
        )
        assert r.status_code == 207
        assert r.json()["notUpdated"][0]["attributeName"] == "powerState"
        r = c.patch(
            f"{BASE}/entities/{eid}/attrs",
            json={
                "powerState": {"type": "Property", "value": "low"},
                "circuit": {"type": "Property", "value": "C7"},
            },
        )
        assert r.status_code == 207
        assert [n["attributeName"] for n in r.json()["notUpdated"]] == ["circuit"]
        r = c.patch(f"{BASE}/entities/{eid}/attrs/illuminanceLevel", json={"value": 0.5})
        assert r.status_code == 204
        entity = c.get(f"{BASE}/entities/{eid}").json()
        assert entity["powerState"]["value"] == "low"
        assert entity["illuminanceLevel"] == {"type": "Property", "value": 0.5}
        assert (
            c.patch(f"{BASE}/entities/{eid}/attrs/illuminanceLevel", json={"value": 7}).status_code
            == 400
        )  # range 0..1
        assert c.delete(f"{BASE}/entities/{eid}/attrs/powerState").status_code == 204
        assert c.delete(f"{BASE}/entities/{eid}/attrs/powerState").status_code == 404
        assert (
            c.patch(
                f"{BASE}/entities/{eid}", json={"circuit": {"type": "Property", "value": "C9"}}
            ).status_code
            == 204
        )
        assert c.get(f"{BASE}/entities/{eid}").json()["circuit"]["value"] == "C9"
        r = c.put(
            f"{BASE}/entities/{eid}",
            json={"type": "Streetlight", "status": {"type": "Property", "value": "brokenLantern"}},
        )
        assert r.status_code == 204
        assert set(c.get(f"{BASE}/entities/{eid}").json()) == {"id", "type", "status"}
        assert c.delete(f"{BASE}/entities/{eid}").status_code == 204
        assert c.get(f"{BASE}/entities/{eid}").status_code == 404


def test_sys_attrs_types_and_attributes(live: LiveServer) -> None:
    with live.client() as c:
        c.post(
            f"{BASE}/entityOperations/create",
            json=[
                light(1),
                light(2),
                {
                    "id": "urn:ngsi-ld:AirQualityObserved:a1",
                    "type": "AirQualityObserved",
                    "no2": {"type": "Property", "value": 21.5, "unitCode": "GQ"},
                },
            ],
        )
        sys = c.get(
            f"{BASE}/entities/urn:ngsi-ld:Streetlight:1", params={"options": "sysAttrs"}
        ).json()
        assert sys["createdAt"].endswith("Z") and sys["modifiedAt"] >= sys["createdAt"]
        assert c.get(f"{BASE}/types").json()["typeList"] == ["AirQualityObserved", "Streetlight"]
        info = c.get(f"{BASE}/types/Streetlight").json()
        assert info["entityCount"] == 2
        assert {a["attributeName"] for a in info["attributeDetails"]} == {
            "status",
            "illuminanceLevel",
            "location",
        }
        assert "no2" in c.get(f"{BASE}/attributes").json()["attributeList"]
        assert c.get(f"{BASE}/attributes/no2").json()["typeNames"] == ["AirQualityObserved"]
        assert c.get(f"{BASE}/types/Nothing").status_code == 404


def test_tenants_are_isolated(live: LiveServer) -> None:
    with live.client(**{"NGSILD-Tenant": "waterco"}) as water, live.client() as default:
        assert water.post(f"{BASE}/entities", json=light(1)).status_code == 201
        assert default.get(f"{BASE}/entities/urn:ngsi-ld:Streetlight:1").status_code == 404
        assert water.get(f"{BASE}/entities/urn:ngsi-ld:Streetlight:1").status_code == 200
        unknown = default.get(
            f"{BASE}/entities", params={"type": "Streetlight"}, headers={"NGSILD-Tenant": "nobody"}
        )
        assert unknown.status_code == 404
        assert unknown.json()["type"].endswith("/NonexistentTenant")
        assert (
            default.get(f"{BASE}/types", headers={"NGSILD-Tenant": "bad tenant!"}).status_code
            == 400
        )


def test_credentials_and_roles(live: LiveServer) -> None:
    device, operator = live.key("device"), live.key("operator")
    with httpx.Client(base_url=live.url) as anon:
        r = anon.post(f"{BASE}/entities", json=light(1))
        assert r.status_code == 401 and r.json()["title"] == "Unauthorized"
        assert anon.get(f"{BASE}/types").status_code == 401
        wrong = anon.get(f"{BASE}/types", headers={"Authorization": "Bearer civ_00_nope"})
        assert wrong.status_code == 401
    with live.client(device) as dev:
        assert dev.post(f"{BASE}/entities", json=light(1)).status_code == 201
        assert dev.get(f"{BASE}/types").status_code == 403
        assert dev.delete(f"{BASE}/entities/urn:ngsi-ld:Streetlight:1").status_code == 403
    with live.client(operator) as op:
        assert op.get(f"{BASE}/entities/urn:ngsi-ld:Streetlight:1").status_code == 200
        assert op.delete(f"{BASE}/entities/urn:ngsi-ld:Streetlight:1").status_code == 403
    # Keys are stored hashed: the secret appears nowhere in the database.
    # The secret is url-safe base64 and may itself hold "_": split off only "civ" and the key id.
    secret = device.split("_", 2)[2]
    assert len(secret) >= 40
    assert all(secret not in k.key_hash for k in live.services.store.api_keys())


def test_bad_input_is_4xx_problem_details(live: LiveServer) -> None:
    cases: list[tuple[str, bytes, dict[str, str]]] = [
        ("/entities", b"{not json", {}),
        ("/entities", b"[1, 2]", {}),
        ("/entities", b'{"id": "no-uri", "type": "Streetlight"}', {}),
        ("/entities", b'{"id": "urn:x:1"}', {}),
        ("/entities", b'{"id": "urn:x:1", "type": "Streetlight", "status": 5}', {}),
        ("/entities", b'{"id": "urn:x:1", "type": "Streetlight", "status": {"type": "Nope"}}', {}),
        ("/entities", b'{"id": "urn:x:1", "type": "Unheard"}', {}),
        ("/entities", b'{"id": "urn:x:1", "type": "Streetlight"}', {"Content-Type": "text/plain"}),
        ("/entityOperations/upsert", b'{"id": "urn:x:1"}', {}),
        ("/entityOperations/upsert", b"[" + b"[" * 5000 + b"]" * 5000 + b"]", {}),
    ]
    with live.client() as c:
        for path, body, headers in cases:
            hdrs = {"Content-Type": "application/json", **headers}
            r = c.post(BASE + path, content=body, headers=hdrs)
            assert 400 <= r.status_code < 500, (path, body[:60], r.status_code, r.text)
            problem = r.json()
            if isinstance(problem, dict) and "errors" in problem:  # a 207 would fail above
                raise AssertionError(problem)
            assert {"type", "title", "status", "detail"} <= set(problem), r.text
            assert problem["status"] == r.status_code


def test_oversized_body_is_413(live: LiveServer) -> None:
    limit = live.services.settings.max_body_bytes
    big = b"[" + b" " * (limit + 10) + b"]"
    with live.client() as c:
        r = c.post(
            f"{BASE}/entityOperations/upsert",
            content=big,
            headers={"Content-Type": "application/json"},
        )
        assert r.status_code == 413
        assert r.json()["type"].endswith("/PayloadTooLarge")

        def chunks() -> Any:
            for _ in range(limit // 65536 + 2):
                yield b" " * 65536

        chunked = c.post(
            f"{BASE}/entityOperations/upsert",
            content=chunks(),
            headers={"Content-Type": "application/json"},
        )
        assert chunked.status_code == 413


def test_trailing_slash_and_openapi(live: LiveServer) -> None:
    with live.client() as c:
        assert c.post(f"{BASE}/entities/", json=light(5)).status_code == 201
        assert c.get(f"{BASE}/entities/", params={"type": "Streetlight"}).status_code == 200
        spec = c.get("/openapi.json").json()
        assert f"{BASE}/entityOperations/upsert" in spec["paths"]
        assert c.get("/health").json()["status"] == "ok"
        home = c.get("/")
        assert home.status_code == 200 and "text/html" in home.headers["content-type"]
        assert "application/geo+json" in home.text  # the map reads the GeoJSON answer


def test_create_in_key_values_form(live: LiveServer) -> None:
    doc = {"id": "urn:ngsi-ld:Streetlight:kv1", "type": "Streetlight", "status": "ok"}
    with live.client() as c:
        plain = c.post(f"{BASE}/entities", json=doc)
        assert plain.status_code == 400  # a bare value is not normalized NGSI-LD
        r = c.post(f"{BASE}/entities", json=doc, params={"options": "keyValues"})
        assert r.status_code == 201, r.text
        got = c.get(f"{BASE}/entities/urn:ngsi-ld:Streetlight:kv1").json()
        assert got["status"] == {"type": "Property", "value": "ok"}
