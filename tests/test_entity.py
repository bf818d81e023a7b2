"""The entity model: parsing normalized and keyValues payloads, GeoJSON, observations, shapes."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from civica.core.entity import (
    MAX_DEPTH,
    MAX_ID_LENGTH,
    Observation,
    attribute_value,
    check_geometry,
    compact_entity,
    looks_normalized,
    merge_attribute,
    observations,
    parse_attributes,
    parse_entity,
    project,
    to_key_values,
)
from civica.core.ldcontext import CORE, DEFAULT_VOCAB, LdContext
from civica.core.problems import BAD_REQUEST_DATA, Problem

EID = "urn:ngsi-ld:WaterObserved:meter-1"
RECEIVED = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def bad(fn: Any, *args: Any, **kwargs: Any) -> Problem:
    with pytest.raises(Problem) as err:
        fn(*args, **kwargs)
    assert err.value.kind is BAD_REQUEST_DATA
    return err.value


# ---- normalized -----------------------------------------------------------------------------


def test_parse_normalized_entity() -> None:
    doc = {
        "id": EID,
        "type": "WaterObserved",
        "@context": "https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context.jsonld",
        "scope": "/gent",
        "createdAt": "2020-01-01T00:00:00Z",
        "flow": {
            "type": "Property",
            "value": 0.25,
            "unitCode": "MQS",
            "observedAt": "2026-03-01T13:00:00+01:00",
            "createdAt": "ignored",
            "accuracy": {"type": "Property", "value": 0.01},
        },
        "refDevice": {"type": "Relationship", "object": "urn:ngsi-ld:Device:1"},
        "location": {"type": "GeoProperty", "value": {"type": "Point", "coordinates": [3.7, 51]}},
        "name": {"type": "LanguageProperty", "languageMap": {"nl": "meter", "fr": "compteur"}},
        "status": {"value": "ok"},
        "refOwner": {"object": ["urn:a:1", "urn:a:2"]},
    }
    assert parse_entity(doc) == {
        "id": EID,
        "type": "WaterObserved",
        "flow": {
            "type": "Property",
            "value": 0.25,
            "observedAt": "2026-03-01T12:00:00.000Z",
            "unitCode": "MQS",
            "accuracy": {"type": "Property", "value": 0.01},
        },
        "refDevice": {"type": "Relationship", "object": "urn:ngsi-ld:Device:1"},
        "location": {"type": "GeoProperty", "value": {"type": "Point", "coordinates": [3.7, 51]}},
        "name": {"type": "LanguageProperty", "languageMap": {"nl": "meter", "fr": "compteur"}},
        "status": {"type": "Property", "value": "ok"},
        "refOwner": {"type": "Relationship", "object": ["urn:a:1", "urn:a:2"]},
    }


def test_type_as_a_one_element_list_and_optional_type() -> None:
    assert parse_entity({"id": EID, "type": ["WaterObserved"]})["type"] == "WaterObserved"
    assert parse_entity({"id": EID}, require_type=False) == {"id": EID}
    bad(parse_entity, {"id": EID})
    bad(parse_entity, {"id": EID, "type": ["A", "B"]})
    bad(parse_entity, {"id": EID, "type": ""})
    bad(parse_entity, {"id": EID, "type": "has space"})


def test_a_property_holding_a_point_becomes_a_geoproperty() -> None:
    doc = {
        "id": EID,
        "type": "T",
        "where": {"type": "Property", "value": {"type": "Point", "coordinates": [1, 2]}},
    }
    assert parse_entity(doc)["where"] == {
        "type": "GeoProperty",
        "value": {"type": "Point", "coordinates": [1, 2]},
    }
    loc = {
        "id": EID,
        "type": "T",
        "location": {"type": "Property", "value": {"type": "Point", "coordinates": [1, 2]}},
    }
    assert parse_entity(loc)["location"]["type"] == "GeoProperty"


def test_values_keep_their_json_shape() -> None:
    values: list[Any] = [0, -1.5, "", "naïve ✓", True, False, [1, "a", None], {"a": {"b": [1]}}]
    for v in values:
        attr = parse_attributes({"x": {"type": "Property", "value": v}})["x"]
        assert attr == {"type": "Property", "value": v}
        assert type(attr["value"]) is type(v)


@pytest.mark.parametrize(
    "doc",
    [
        [],
        "urn:x",
        None,
        {"type": "T"},
        {"id": "", "type": "T"},
        {"id": 5, "type": "T"},
        {"id": "not a uri", "type": "T"},
        {"id": "no-scheme", "type": "T"},
        {"id": "urn:" + "x" * MAX_ID_LENGTH, "type": "T"},
        {"id": EID, "type": 3},
        {"id": EID, "type": "T", "a": 5},
        {"id": EID, "type": "T", "a": [{"type": "Property", "value": 1}]},
        {"id": EID, "type": "T", "a": {"type": "Thing", "value": 1}},
        {"id": EID, "type": "T", "a": {"type": "Property"}},
        {"id": EID, "type": "T", "a": {"type": "Property", "value": None}},
        {"id": EID, "type": "T", "a": {"type": "Property", "value": float("nan")}},
        {"id": EID, "type": "T", "a": {"type": "Property", "value": float("inf")}},
        {"id": EID, "type": "T", "a": {"type": "Property", "value": 1, "datasetId": "urn:d"}},
        {"id": EID, "type": "T", "a": {"type": "Relationship", "object": "not a uri"}},
        {"id": EID, "type": "T", "a": {"type": "Relationship", "object": []}},
        {"id": EID, "type": "T", "a": {"type": "Relationship", "value": "urn:x"}},
        {"id": EID, "type": "T", "a": {"type": "LanguageProperty", "languageMap": {"en": 1}}},
        {"id": EID, "type": "T", "a": {"type": "LanguageProperty", "value": "x"}},
        {"id": EID, "type": "T", "a": {"type": "GeoProperty", "value": "here"}},
        {"id": EID, "type": "T", "a": {"type": "Property", "value": 1, "observedAt": "yesterday"}},
        {
            "id": EID,
            "type": "T",
            "a": {"type": "Property", "value": 1, "observedAt": "2026-03-01T12:00:00"},
        },
        {"id": EID, "type": "T", "a": {"type": "Property", "value": 1, "observedAt": 1700000000}},
        {"id": EID, "type": "T", "a": {"type": "Property", "value": 1, "unitCode": ""}},
        {"id": EID, "type": "T", "a": {"type": "Property", "value": 1, "unitCode": "X" * 17}},
        {"id": EID, "type": "T", "a": {"type": "Property", "value": 1, "unitCode": 5}},
        {"id": EID, "type": "T", "a": {"type": "Property", "value": 1, "sub": 5}},
        {"id": EID, "type": "T", "location": {"type": "Property", "value": "here"}},
        {"id": EID, "type": "T", "location": {"type": "Relationship", "object": "urn:x"}},
        {"id": EID, "type": "T", "bad name": {"type": "Property", "value": 1}},
        {"id": EID, "type": "T", "a;b": {"type": "Property", "value": 1}},
        {"id": EID, "type": "T", "": {"type": "Property", "value": 1}},
        {"id": EID, "type": "T", "x" * 257: {"type": "Property", "value": 1}},
    ],
)
def test_invalid_entities_are_refused(doc: Any) -> None:
    bad(parse_entity, doc)


def test_sub_attributes_nest_up_to_the_limit() -> None:
    def nested(depth: int) -> dict[str, Any]:
        attr: dict[str, Any] = {"type": "Property", "value": depth}
        if depth:
            attr["sub"] = nested(depth - 1)
        return attr

    ok = parse_attributes({"a": nested(MAX_DEPTH)})["a"]
    for _ in range(MAX_DEPTH):
        ok = ok["sub"]
    assert ok == {"type": "Property", "value": 0}
    err = bad(parse_attributes, {"a": nested(MAX_DEPTH + 1)})
    assert "deeply" in err.detail


def test_errors_name_the_attribute() -> None:
    err = bad(parse_entity, {"id": EID, "type": "T", "flow": {"type": "Property", "value": None}})
    assert err.to_dict()["attribute"] == "flow"
    sub = bad(
        parse_entity,
        {
            "id": EID,
            "type": "T",
            "flow": {"type": "Property", "value": 1, "acc": {"type": "Property"}},
        },
    )
    assert sub.to_dict()["attribute"] == "flow.acc"


# ---- keyValues ------------------------------------------------------------------------------


def test_parse_key_values() -> None:
    doc = {
        "id": EID,
        "type": "WaterObserved",
        "flow": 0.25,
        "status": "ok",
        "tags": ["a", "b"],
        "address": {"city": "Gent"},
        "location": {"type": "Point", "coordinates": [3.7, 51.0]},
        "area": {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 0]]]},
        "refDevice": "urn:ngsi-ld:Device:1",
        "refNote": "not a uri",
        "deviceRef": "urn:ngsi-ld:Device:2",
        "ok": False,
    }
    assert parse_entity(doc, key_values=True) == {
        "id": EID,
        "type": "WaterObserved",
        "flow": {"type": "Property", "value": 0.25},
        "status": {"type": "Property", "value": "ok"},
        "tags": {"type": "Property", "value": ["a", "b"]},
        "address": {"type": "Property", "value": {"city": "Gent"}},
        "location": {"type": "GeoProperty", "value": {"type": "Point", "coordinates": [3.7, 51.0]}},
        "area": {
            "type": "GeoProperty",
            "value": {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 0]]]},
        },
        "refDevice": {"type": "Relationship", "object": "urn:ngsi-ld:Device:1"},
        "refNote": {"type": "Property", "value": "not a uri"},
        "deviceRef": {"type": "Property", "value": "urn:ngsi-ld:Device:2"},
        "ok": {"type": "Property", "value": False},
    }


@pytest.mark.parametrize(
    "attrs",
    [
        {"location": "here"},
        {"location": {"type": "Point", "coordinates": [500, 0]}},
        {"a": None},
        {"a": float("nan")},
        {"bad name": 1},
    ],
)
def test_invalid_key_values(attrs: dict[str, Any]) -> None:
    bad(parse_entity, {"id": EID, "type": "T", **attrs}, key_values=True)


def test_looks_normalized() -> None:
    typed = {"type": "Property", "value": 1}
    point = {"type": "Point", "coordinates": [1, 2]}
    assert looks_normalized({"id": EID, "type": "T", "a": typed})
    assert looks_normalized({"id": EID, "type": "T", "location": point, "a": typed})
    assert looks_normalized(
        {"id": EID, "type": "T", "r": {"type": "Relationship", "object": "urn:x"}}
    )
    assert not looks_normalized({"id": EID, "type": "T", "a": 1})
    assert not looks_normalized({"id": EID, "type": "T", "a": {"type": "Car"}})
    assert not looks_normalized({"id": EID, "type": "T", "location": point})
    assert not looks_normalized({"id": EID, "type": "T"})


# ---- GeoJSON --------------------------------------------------------------------------------

SQUARE = [[0, 0], [1, 0], [1, 1], [0, 1], [0, 0]]


@pytest.mark.parametrize(
    "geometry",
    [
        {"type": "Point", "coordinates": [-180, -90]},
        {"type": "Point", "coordinates": [180, 90, 12.5]},
        {"type": "MultiPoint", "coordinates": [[0, 0], [1, 1]]},
        {"type": "LineString", "coordinates": [[0, 0], [1, 1]]},
        {"type": "MultiLineString", "coordinates": [[[0, 0], [1, 1]], [[2, 2], [3, 3]]]},
        {"type": "Polygon", "coordinates": [SQUARE]},
        {
            "type": "Polygon",
            "coordinates": [SQUARE, [[0.2, 0.2], [0.4, 0.2], [0.4, 0.4], [0.2, 0.2]]],
        },
        {"type": "MultiPolygon", "coordinates": [[SQUARE], [SQUARE]]},
    ],
)
def test_valid_geometries(geometry: dict[str, Any]) -> None:
    assert check_geometry({**geometry, "bbox": [0, 0, 1, 1], "crs": "x"}) == geometry


@pytest.mark.parametrize(
    "geometry",
    [
        None,
        [0, 0],
        {"type": "Circle", "coordinates": [0, 0]},
        {"type": "GeometryCollection", "geometries": []},
        {"type": "Point"},
        {"type": "Point", "coordinates": []},
        {"type": "Point", "coordinates": [1]},
        {"type": "Point", "coordinates": [1, 2, 3, 4]},
        {"type": "Point", "coordinates": ["1", "2"]},
        {"type": "Point", "coordinates": [True, False]},
        {"type": "Point", "coordinates": [180.0001, 0]},
        {"type": "Point", "coordinates": [0, -90.5]},
        {"type": "Point", "coordinates": [float("nan"), 0]},
        {"type": "Point", "coordinates": [[0, 0]]},
        {"type": "MultiPoint", "coordinates": []},
        {"type": "MultiPoint", "coordinates": [0, 0]},
        {"type": "LineString", "coordinates": [[0, 0]]},
        {"type": "MultiLineString", "coordinates": [[[0, 0], [1, 1]], [[0, 0]]]},
        {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 1]]]},
        {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [0, 0]]]},
        {"type": "Polygon", "coordinates": SQUARE},
        {"type": "Polygon", "coordinates": []},
        {"type": "MultiPolygon", "coordinates": [[[[0, 0], [1, 0], [1, 1], [0, 1]]]]},
    ],
)
def test_invalid_geometries(geometry: Any) -> None:
    bad(check_geometry, geometry, "location")


# ---- observations -------------------------------------------------------------------------


def test_observations_one_per_top_level_property() -> None:
    entity = parse_entity(
        {
            "id": EID,
            "type": "WaterObserved",
            "flow": {
                "type": "Property",
                "value": 2,
                "unitCode": "MQS",
                "observedAt": "2026-03-01T11:00:00Z",
            },
            "status": {
                "type": "Property",
                "value": "ok",
                "accuracy": {"type": "Property", "value": 9},
            },
            "on": {"type": "Property", "value": True},
            "address": {"type": "Property", "value": {"city": "Gent"}},
            "refDevice": {"type": "Relationship", "object": "urn:x:1"},
            "location": {"type": "GeoProperty", "value": {"type": "Point", "coordinates": [1, 2]}},
            "name": {"type": "LanguageProperty", "languageMap": {"en": "m"}},
        }
    )
    rows = observations(entity, RECEIVED)
    at11 = datetime(2026, 3, 1, 11, tzinfo=UTC)
    assert rows == [
        Observation(EID, "WaterObserved", "flow", at11, 2.0, None, "MQS"),
        Observation(EID, "WaterObserved", "status", RECEIVED, None, '"ok"', None),
        Observation(EID, "WaterObserved", "on", RECEIVED, None, "true", None),
        Observation(EID, "WaterObserved", "address", RECEIVED, None, '{"city":"Gent"}', None),
    ]
    assert isinstance(rows[0].value_num, float)
    assert observations({"id": EID, "type": "T"}, RECEIVED) == []


# ---- shapes for the wire ------------------------------------------------------------------

STORED = {
    "id": EID,
    "type": "WaterObserved",
    "flow": {"type": "Property", "value": 2, "unitCode": "MQS"},
    "refDevice": {"type": "Relationship", "object": "urn:x:1"},
    "name": {"type": "LanguageProperty", "languageMap": {"en": "m"}},
    "location": {"type": "GeoProperty", "value": {"type": "Point", "coordinates": [1, 2]}},
}


def test_to_key_values_and_attribute_value() -> None:
    assert to_key_values(STORED) == {
        "id": EID,
        "type": "WaterObserved",
        "flow": 2,
        "refDevice": "urn:x:1",
        "name": {"en": "m"},
        "location": {"type": "Point", "coordinates": [1, 2]},
    }
    assert to_key_values({**STORED, "@context": ["x"]})["@context"] == ["x"]
    assert attribute_value({"type": "Relationship", "object": "urn:y"}) == "urn:y"
    assert attribute_value({"value": 3}) == 3


def test_key_values_round_trip() -> None:
    kv = to_key_values(STORED)
    back = parse_entity(kv, key_values=True)
    assert back["flow"] == {"type": "Property", "value": 2}  # metadata does not travel
    assert {k: v for k, v in back.items() if k not in ("flow", "name")} == {
        k: v for k, v in STORED.items() if k not in ("flow", "name")
    }


def test_project_keeps_id_and_type() -> None:
    assert project(STORED, None) is STORED
    assert project(STORED, ["flow", "nothing"]) == {
        "id": EID,
        "type": "WaterObserved",
        "flow": STORED["flow"],
    }
    assert project(STORED, []) == {"id": EID, "type": "WaterObserved"}


def test_compact_entity_renames_types_attributes_and_sub_attributes() -> None:
    assert compact_entity(STORED, CORE) is STORED
    ctx = LdContext.from_terms(
        {
            "Meter": DEFAULT_VOCAB + "WaterObserved",
            "debit": DEFAULT_VOCAB + "flow",
            "precision": DEFAULT_VOCAB + "accuracy",
        }
    )
    entity = {**STORED, "flow": {**STORED["flow"], "accuracy": {"type": "Property", "value": 0.1}}}
    out = compact_entity(entity, ctx)
    assert out["type"] == "Meter"
    assert out["debit"] == {
        "type": "Property",
        "value": 2,
        "unitCode": "MQS",
        "precision": {"type": "Property", "value": 0.1},
    }
    assert "flow" not in out
    assert out["location"] == STORED["location"]
    assert out["id"] == EID


def test_parse_under_a_context_stores_canonical_names() -> None:
    ctx = LdContext.from_terms(
        {"debit": DEFAULT_VOCAB + "flow", "Meter": DEFAULT_VOCAB + "WaterObserved"}
    )
    doc = {"id": EID, "type": "Meter", "debit": {"type": "Property", "value": 1}}
    assert parse_entity(doc, ctx) == {
        "id": EID,
        "type": "WaterObserved",
        "flow": {"type": "Property", "value": 1},
    }
    assert compact_entity(parse_entity(doc, ctx), ctx) == doc


def test_merge_attribute() -> None:
    old = {"type": "Property", "value": 1, "unitCode": "MTR", "observedAt": "x"}
    assert merge_attribute(old, {"value": 2}) == {**old, "value": 2}
    assert old["value"] == 1  # not mutated
    rel = merge_attribute(old, {"type": "Relationship", "object": "urn:x"})
    assert "value" not in rel
    assert rel["object"] == "urn:x"
    back = merge_attribute(rel, {"type": "Property", "value": 3})
    assert "object" not in back
    assert back["value"] == 3


# ---- properties ---------------------------------------------------------------------------

json_values = st.recursive(
    st.one_of(
        st.integers(-(2**53), 2**53),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=5),
        st.booleans(),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=6,
)


@settings(max_examples=150, deadline=None, derandomize=True, database=None)
@given(
    st.dictionaries(
        st.from_regex(r"[a-z][a-zA-Z0-9_]{0,6}", fullmatch=True), json_values, max_size=5
    )
)
def test_key_values_and_normalized_agree(attrs: dict[str, Any]) -> None:
    attrs = {k: v for k, v in attrs.items() if k not in ("id", "type", "location", "scope")}
    attrs = {k: v for k, v in attrs.items() if not (k.startswith("ref") and isinstance(v, str))}
    attrs = {k: v for k, v in attrs.items() if not (isinstance(v, dict) and "type" in v)}
    kv = parse_entity({"id": EID, "type": "T", **attrs}, key_values=True)
    normalized = parse_entity(
        {"id": EID, "type": "T", **{k: {"type": "Property", "value": v} for k, v in attrs.items()}}
    )
    assert kv == normalized
    assert to_key_values(kv) == {"id": EID, "type": "T", **attrs}
