"""The NGSI-LD temporal API against a real server: timerel, lastN, shapes, aggregation."""

from __future__ import annotations

import math
from typing import Any

import httpx
import pytest

from tests.livesrv import LiveServer

BASE = "/ngsi-ld/v1"
W1, W2 = "urn:ngsi-ld:WaterObserved:w1", "urn:ngsi-ld:WaterObserved:w2"
PRESSURES = [
    ("10:00", 10),
    ("10:15", 20),
    ("10:30", 30),
    ("10:45", 40),
    ("11:00", 50),
    ("11:15", 60),
]
FLOWS = {"10:00": 1.0, "11:00": 3.0}


def at(hhmm: str) -> str:
    return f"2026-03-01T{hhmm}:00Z"


def reading(eid: str, hhmm: str, pressure: float, flow: float | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "id": eid,
        "type": "WaterObserved",
        "pressure": {
            "type": "Property",
            "value": pressure,
            "observedAt": at(hhmm),
            "unitCode": "MTR",
        },
    }
    if flow is not None:
        doc["flow"] = {"type": "Property", "value": flow, "observedAt": at(hhmm)}
    return doc


def write(c: httpx.Client, doc: dict[str, Any], **headers: str) -> None:
    # One request per reading, as a sensor would send them.
    r = c.post(f"{BASE}/entityOperations/upsert", json=[doc], headers=headers)
    assert r.status_code in (201, 204), r.text


def seed(c: httpx.Client) -> None:
    for hhmm, p in PRESSURES:
        write(c, reading(W1, hhmm, p, FLOWS.get(hhmm)))
    write(c, reading(W2, "10:00", 5))


def history(c: httpx.Client, eid: str = W1, **params: Any) -> httpx.Response:
    return c.get(f"{BASE}/temporal/entities/{eid}", params=params)


def values(attr: list[dict[str, Any]]) -> list[Any]:
    return [i["value"] for i in attr]


def test_normalized_history_and_timerel(live: LiveServer) -> None:
    with live.client() as c:
        seed(c)
        r = history(c)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["id"] == W1 and body["type"] == "WaterObserved"
        assert body["pressure"][0] == {
            "type": "Property",
            "value": 10,
            "observedAt": "2026-03-01T10:00:00.000Z",
            "unitCode": "MTR",
        }
        assert values(body["pressure"]) == [10, 20, 30, 40, 50, 60]
        assert values(body["flow"]) == [1, 3]
        before = history(c, timerel="before", timeAt=at("10:30")).json()
        assert values(before["pressure"]) == [10, 20]
        after = history(c, timerel="after", timeAt=at("10:30")).json()
        assert values(after["pressure"]) == [40, 50, 60]
        between = history(c, timerel="between", timeAt=at("10:15"), endTimeAt=at("11:00")).json()
        assert values(between["pressure"]) == [20, 30, 40]
        assert "flow" not in between
        offset = history(c, timerel="before", timeAt="2026-03-01T11:30:00+01:00").json()
        assert values(offset["pressure"]) == [10, 20]  # before 10:30 UTC


def test_last_n_attrs_and_temporal_values(live: LiveServer) -> None:
    with live.client() as c:
        seed(c)
        last = history(c, lastN=2).json()
        assert values(last["pressure"]) == [50, 60]
        assert values(last["flow"]) == [1, 3]
        windowed = history(c, lastN=2, timerel="before", timeAt=at("11:00")).json()
        assert values(windowed["pressure"]) == [30, 40]
        only = history(c, attrs="flow").json()
        assert set(only) == {"id", "type", "flow"}
        simple = history(c, options="temporalValues", attrs="pressure", lastN=2).json()
        assert simple["pressure"] == {
            "type": "Property",
            "values": [[50, "2026-03-01T11:00:00.000Z"], [60, "2026-03-01T11:15:00.000Z"]],
        }
        assert history(c, format="temporalValues").json()["flow"]["values"][0][0] == 1
        empty = history(c, timerel="before", timeAt=at("09:00")).json()
        assert empty == {"id": W1, "type": "WaterObserved"}


def test_aggregation_by_period_and_whole_interval(live: LiveServer) -> None:
    with live.client() as c:
        seed(c)
        r = history(
            c,
            attrs="pressure",
            timerel="between",
            timeAt=at("10:00"),
            endTimeAt=at("11:20"),
            aggrMethods="avg,min,max,sum,totalCount,stddev,sumsq,distinctCount",
            aggrPeriodDuration="PT30M",
            options="aggregatedValues",
        )
        assert r.status_code == 200, r.text
        p = r.json()["pressure"]
        assert p["type"] == "Property"
        assert p["avg"] == [
            [15, at("10:00").replace(":00Z", ":00.000Z"), "2026-03-01T10:30:00.000Z"],
            [35, "2026-03-01T10:30:00.000Z", "2026-03-01T11:00:00.000Z"],
            [55, "2026-03-01T11:00:00.000Z", "2026-03-01T11:20:00.000Z"],  # cut at endTimeAt
        ]
        assert [v[0] for v in p["min"]] == [10, 30, 50]
        assert [v[0] for v in p["max"]] == [20, 40, 60]
        assert [v[0] for v in p["sum"]] == [30, 70, 110]
        assert [v[0] for v in p["totalCount"]] == [2, 2, 2]
        assert [v[0] for v in p["distinctCount"]] == [2, 2, 2]
        assert [v[0] for v in p["sumsq"]] == [500, 2500, 6100]
        assert [v[0] for v in p["stddev"]] == [5, 5, 5]

        whole = history(c, aggrMethods="avg,sum,totalCount,stddev", options="aggregatedValues")
        w = whole.json()
        assert w["pressure"]["avg"] == [
            [35, "2026-03-01T10:00:00.000Z", "2026-03-01T11:15:00.000Z"]
        ]
        assert w["pressure"]["sum"][0][0] == 210
        assert w["pressure"]["stddev"][0][0] == pytest.approx(math.sqrt(1750 / 6))
        assert w["flow"]["avg"][0][0] == 2
        assert w["flow"]["totalCount"][0][0] == 2

        # Periods are aligned to timeAt, here counted back from it.
        before = history(
            c,
            attrs="pressure",
            timerel="before",
            timeAt=at("11:10"),
            aggrMethods="max",
            aggrPeriodDuration="PT1H",
        ).json()
        assert before["pressure"]["max"] == [
            [10, "2026-03-01T09:10:00.000Z", "2026-03-01T10:10:00.000Z"],
            [50, "2026-03-01T10:10:00.000Z", "2026-03-01T11:10:00.000Z"],
        ]


def test_aggregation_of_text_values_counts_only(live: LiveServer) -> None:
    lamp = "urn:ngsi-ld:Streetlight:9"
    with live.client() as c:
        for hhmm, status in (("20:00", "ok"), ("21:00", "defectiveLamp"), ("22:00", "ok")):
            write(
                c,
                {
                    "id": lamp,
                    "type": "Streetlight",
                    "status": {"type": "Property", "value": status, "observedAt": at(hhmm)},
                },
            )
        plain = history(c, lamp).json()
        assert values(plain["status"]) == ["ok", "defectiveLamp", "ok"]
        agg = history(c, lamp, aggrMethods="totalCount,distinctCount,avg").json()["status"]
        assert agg["totalCount"][0][0] == 3
        assert agg["distinctCount"][0][0] == 2
        assert agg["avg"] == []


def test_query_many_entities_with_count_and_q(live: LiveServer) -> None:
    with live.client() as c:
        seed(c)
        r = c.get(
            f"{BASE}/temporal/entities",
            params={"type": "WaterObserved", "count": "true", "lastN": 1},
        )
        assert r.status_code == 200, r.text
        assert r.headers["NGSILD-Results-Count"] == "2"
        body = r.json()
        assert [e["id"] for e in body] == [W1, W2]
        assert values(body[0]["pressure"]) == [60] and values(body[1]["pressure"]) == [5]
        page = c.get(
            f"{BASE}/temporal/entities",
            params={"type": "WaterObserved", "count": "true", "limit": 1, "offset": 1},
        )
        assert page.headers["NGSILD-Results-Count"] == "2"
        assert [e["id"] for e in page.json()] == [W2]
        # q filters on the entities' current state (W1's pressure is 60 now).
        high = c.get(
            f"{BASE}/temporal/entities",
            params={
                "type": "WaterObserved",
                "q": "pressure>50",
                "timerel": "before",
                "timeAt": at("10:20"),
            },
        ).json()
        assert [e["id"] for e in high] == [W1]
        assert values(high[0]["pressure"]) == [10, 20]
        pattern = c.get(
            f"{BASE}/temporal/entities", params={"idPattern": ".*w2$", "attrs": "pressure"}
        ).json()
        assert [e["id"] for e in pattern] == [W2]
        assert c.get(f"{BASE}/temporal/entities").status_code == 400


def test_errors(live: LiveServer) -> None:
    with live.client() as c:
        seed(c)
        bad: list[dict[str, Any]] = [
            {"timerel": "before", "timeAt": "2026-03-01T10:00:00"},  # no zone
            {"timerel": "before", "timeAt": "yesterday"},
            {"timerel": "before"},
            {"timeAt": at("10:00")},
            {"timerel": "during", "timeAt": at("10:00")},
            {"timerel": "between", "timeAt": at("10:00")},
            {"timerel": "between", "timeAt": at("11:00"), "endTimeAt": at("10:00")},
            {"timerel": "after", "timeAt": at("10:00"), "endTimeAt": at("11:00")},
            {"lastN": 0},
            {"lastN": "two"},
            {"aggrMethods": "median"},
            {"aggrMethods": "avg", "aggrPeriodDuration": "P1M"},
            {"aggrMethods": "avg", "aggrPeriodDuration": "an hour"},
            {"options": "aggregatedValues"},
            {"options": "temporalValues,aggregatedValues", "aggrMethods": "avg"},
            {"timeproperty": "modifiedAt"},
        ]
        for params in bad:
            r = history(c, **params)
            assert r.status_code == 400, (params, r.text)
            assert r.json()["type"].endswith("/BadRequestData"), params
        missing = history(c, "urn:ngsi-ld:WaterObserved:nope")
        assert missing.status_code == 404
        assert missing.json()["type"].endswith("/ResourceNotFound")
        assert history(c, "not a uri").status_code == 400


def test_tenants_contexts_and_roles(live: LiveServer) -> None:
    w3 = "urn:ngsi-ld:WaterObserved:w3"
    with live.client() as c:
        seed(c)
        write(c, reading(w3, "10:00", 7), **{"NGSILD-Tenant": "east"})
        assert history(c, w3).status_code == 404
        east = c.get(f"{BASE}/temporal/entities/{w3}", headers={"NGSILD-Tenant": "east"})
        assert values(east.json()["pressure"]) == [7]
        listed = c.get(
            f"{BASE}/temporal/entities",
            params={"type": "WaterObserved"},
            headers={"NGSILD-Tenant": "east"},
        ).json()
        assert [e["id"] for e in listed] == [w3]
        unknown = c.get(f"{BASE}/temporal/entities/{W1}", headers={"NGSILD-Tenant": "nowhere"})
        assert unknown.status_code == 404
        assert unknown.json()["type"].endswith("/NonexistentTenant")

        ld = c.get(
            f"{BASE}/temporal/entities/{W1}",
            params={"lastN": 1},
            headers={"Accept": "application/ld+json"},
        )
        assert ld.headers["content-type"].startswith("application/ld+json")
        assert "@context" in ld.json()
        assert "@context" not in history(c, lastN=1).json()

        url = "http://contexts.example/water.jsonld"
        vocab = "https://uri.etsi.org/ngsi-ld/default-context/"
        live.services.resolver.store(
            url,
            {"@context": {"druk": vocab + "pressure", "Water": vocab + "WaterObserved"}},
            "Hosted",
        )
        link = f'<{url}>; rel="http://www.w3.org/ns/json-ld#context"'
        mine = c.get(
            f"{BASE}/temporal/entities/{W1}",
            params={"attrs": "druk", "lastN": 1},
            headers={"Link": link},
        )
        assert mine.json() == {
            "id": W1,
            "type": "Water",
            "druk": [
                {
                    "type": "Property",
                    "value": 60,
                    "observedAt": at("11:15").replace("Z", ".000Z"),
                    "unitCode": "MTR",
                }
            ],
        }
    with live.client(live.key("device")) as device:
        assert history(device).status_code == 403
    with live.client(live.key("operator")) as operator:
        assert history(operator).status_code == 200
