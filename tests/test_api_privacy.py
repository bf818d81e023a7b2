"""The privacy gate seen from outside: forbidden kinds are refused by name, nothing is stored."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from tests.livesrv import LiveServer

BASE = "/ngsi-ld/v1"
CROWD = "urn:ngsi-ld:CrowdFlowObserved:plaza"


def crowd(**attrs: Any) -> dict[str, Any]:
    return {
        "id": CROWD,
        "type": "CrowdFlowObserved",
        "peopleCount": {"type": "Property", "value": 120},
        **attrs,
    }


REFUSED = [
    ("faceImage", {"type": "Property", "value": "data:image/jpeg;base64," + "A" * 100}),
    ("faceEmbedding", {"type": "Property", "value": [0.1, 0.2, 0.3]}),
    ("ethnicity", {"type": "Property", "value": "x"}),
    ("religion", {"type": "Property", "value": "x"}),
    ("dominantEmotion", {"type": "Property", "value": "angry"}),
    ("driverFatigue", {"type": "Property", "value": 0.8}),
    ("macAddress", {"type": "Property", "value": "aa:bb:cc:dd:ee:ff"}),
    ("imsi", {"type": "Property", "value": "208011234567890"}),
    ("licensePlate", {"type": "Property", "value": "1-ABC-123"}),
    ("personName", {"type": "Property", "value": "Jane Doe"}),
    ("phoneNumber", {"type": "Property", "value": "+32 470 00 00 00"}),
]


@pytest.mark.parametrize(("name", "attr"), REFUSED, ids=[n for n, _ in REFUSED])
def test_forbidden_kinds_are_refused_naming_the_attribute(
    live: LiveServer, name: str, attr: dict[str, Any]
) -> None:
    with live.client() as c:
        r = c.post(f"{BASE}/entities", json=crowd(**{name: attr}))
        assert r.status_code == 400
        problem = r.json()
        assert problem["attribute"] == name
        assert name in problem["detail"]
        assert problem["type"] == "https://civica.city/problems/PrivacyViolation"
    assert live.services.store.get_entities("default", [CROWD]) == {}


def test_forbidden_data_hidden_inside_values_is_found(live: LiveServer) -> None:
    with live.client() as c:
        nested = c.post(
            f"{BASE}/entities",
            json={
                "id": "urn:ngsi-ld:Device:d1",
                "type": "Device",
                "category": {"type": "Property", "value": {"sensor": {"faceTemplate": "x"}}},
            },
        )
        assert nested.status_code == 400
        assert nested.json()["attribute"] == "category.faceTemplate"
        mac_in_text = c.post(
            f"{BASE}/entities",
            json={
                "id": "urn:ngsi-ld:Device:d2",
                "type": "Device",
                "serialNumber": {"type": "Property", "value": "seen 01:23:45:67:89:ab at gate"},
            },
        )
        assert mac_in_text.status_code == 400
        sub = c.post(
            f"{BASE}/entities",
            json=crowd(
                peopleCount={
                    "type": "Property",
                    "value": 5,
                    "personName": {"type": "Property", "value": "x"},
                }
            ),
        )
        assert sub.status_code == 400
        mac_id = c.post(
            f"{BASE}/entities",
            json={"id": "urn:ngsi-ld:Device:aa-bb-cc-dd-ee-ff", "type": "Device"},
        )
        assert mac_id.status_code == 400


def test_undeclared_attributes_and_types_are_refused(live: LiveServer) -> None:
    with live.client() as c:
        r = c.post(f"{BASE}/entities", json=crowd(shoeSize={"type": "Property", "value": 42}))
        assert r.status_code == 400
        assert r.json()["attribute"] == "shoeSize"
        assert "not declared" in r.json()["detail"]
        person = c.post(f"{BASE}/entities", json={"id": "urn:ngsi-ld:Person:1", "type": "Person"})
        assert person.status_code == 400
        assert c.post(f"{BASE}/entities", json=crowd()).status_code == 201
        # Refused attribute appended later: refused too, entity unchanged.
        r = c.post(
            f"{BASE}/entities/{CROWD}/attrs",
            json={"macAddress": {"type": "Property", "value": "x"}},
        )
        assert r.status_code == 400
        assert "macAddress" not in c.get(f"{BASE}/entities/{CROWD}").json()


def test_renamed_through_a_context_is_still_refused(live: LiveServer) -> None:
    """A user @context cannot smuggle a forbidden IRI in under an innocent name."""
    inline = {
        "@context": {"crowdInfo": "https://example.org/vocab#faceEmbedding"},
        "id": CROWD,
        "type": "CrowdFlowObserved",
        "crowdInfo": {"type": "Property", "value": [0.1]},
    }
    with live.client() as c:
        r = c.post(
            f"{BASE}/entities",
            content=orjson.dumps(inline),
            headers={"Content-Type": "application/ld+json"},
        )
        assert r.status_code == 400
        assert "face" in r.json()["detail"]
