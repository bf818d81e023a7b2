"""The privacy gate, the forbidden kinds and the data catalogue."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from civica.core.entity import parse_entity
from civica.core.problems import BAD_REQUEST_DATA, PRIVACY_VIOLATION, Problem, ProblemKind
from civica.core.units import KNOWN_CODES
from civica.privacy import (
    AttributeSpec,
    Catalogue,
    EntityTypeSpec,
    PrivacyGate,
    forbidden_name,
    forbidden_value,
)
from civica.privacy.catalogue import NUMBER, SMART_DATA_MODELS, TEXT

MAC = "a4:5e:60:d2:1f:09"
JPEG_B64 = "/9j/" + "A" * 100


# ---- forbidden names ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "face", "faceImage", "face_image", "FACE-IMAGE", "detectedFaces", "faceEmbedding",
        "biometricTemplate", "fingerprintHash", "iris", "irisScan", "IRIS", "gait", "gaitSignature",
        "ethnicity", "ethnicGroup", "race", "perceivedRace", "religion", "religiousAffiliation",
        "emotion", "dominantEmotion", "sentiment", "driverFatigue", "personEmbedding",
        "macAddress", "mac_address", "MAC-Address", "wifiMacAddress", "bssid", "imsi", "IMSI",
        "imei", "deviceImei", "licensePlate", "licencePlate", "number_plate", "plateNumber",
        "plateIdentifier", "personName", "firstName", "lastName", "givenName", "familyName",
        "fullName", "surname", "phoneNumber", "telephone", "msisdn", "email", "e-mail",
        "contactEmail", "socialScore", "personId", "nationalId",
        "https://example.org/ns#faceImage", "ex:macAddress", "urn:x:licensePlate",
        "surfaceFaceImage", "timeImei",
    ],
)  # fmt: skip
def test_forbidden_names(name: str) -> None:
    assert forbidden_name(name)


@pytest.mark.parametrize(
    "name",
    [
        "temperature", "peopleCount", "name", "address", "trace", "traceability", "grace",
        "terrace", "embrace", "bracelet", "irises", "iridium", "gaiter", "surfaceTemperature",
        "roadSurface", "interface", "networkInterface", "timeInterval", "dateTimeIndex",
        "refDevice", "status", "plate", "platform", "phone", "macro", "faction",
    ],
)  # fmt: skip
def test_innocent_names(name: str) -> None:
    assert forbidden_name(name) is None


def test_reasons_say_what_is_refused() -> None:
    assert "MAC" in (forbidden_name("macAddress") or "")
    assert "plate" in (forbidden_name("licensePlate") or "")
    assert "face" in (forbidden_name("faceImage") or "")


# ---- forbidden values ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        MAC,
        MAC.upper(),
        MAC.replace(":", "-"),
        f"seen {MAC} at the gate",
        f"dev_{MAC}",
        f"id={MAC.upper()};rssi=-70",
        "a45e.60d2.1f09",
        ["ok", [MAC]],
        {"devices": [{"addr": MAC}]},
        {MAC: 3},
        f"urn:ngsi-ld:Device:{MAC}",
        "data:image/png;base64," + "A" * 80,
        JPEG_B64,
        "iVBORw0KGgo" + "A" * 80,
        {"snapshot": JPEG_B64},
    ],
)
def test_forbidden_values(value: Any) -> None:
    assert forbidden_value(value)


@pytest.mark.parametrize(
    "value",
    [
        "ok",
        "2026-03-01T08:00:00.000Z",
        "12:34:56",
        "10.0.0.1",
        "fe80::1ff:fe23:4567:890a",
        "550e8400-e29b-41d4-a716-446655440000",
        "a4:5e:60:d2:1f",  # five groups: not a MAC
        "a4:5e-60:d2:1f:09",  # mixed separators
        "data:image/png;base64,AAAA",  # too short to be a picture
        "1.2.3",
        12,
        None,
        {"nested": {"deeper": ["fine", 3.5]}},
    ],
)
def test_innocent_values(value: Any) -> None:
    assert forbidden_value(value) is None


def test_values_nested_too_deeply_to_check_are_refused() -> None:
    deep: Any = MAC
    for _ in range(20):
        deep = {"x": deep}
    assert forbidden_value(deep)
    shallow: Any = "ok"
    for _ in range(3):
        shallow = [shallow]
    assert forbidden_value(shallow) is None


# ---- the gate -----------------------------------------------------------------------------

gate = PrivacyGate()


def water(**attrs: Any) -> dict[str, Any]:
    return {"id": "urn:ngsi-ld:WaterObserved:w1", "type": "WaterObserved", **attrs}


def device(**attrs: Any) -> dict[str, Any]:
    return {"id": "urn:ngsi-ld:Device:d1", "type": "Device", **attrs}


def prop(value: Any, **extra: Any) -> dict[str, Any]:
    return {"type": "Property", "value": value, **extra}


def refused(entity: dict[str, Any], kind: ProblemKind = PRIVACY_VIOLATION) -> Problem:
    with pytest.raises(Problem) as err:
        gate.admit(parse_entity(entity))
    assert err.value.kind is kind, err.value.detail
    return err.value


def test_a_declared_entity_is_admitted_unchanged() -> None:
    entity = parse_entity(
        device(
            name=prop("gateway 7"),
            batteryLevel=prop(0.5, observedAt="2026-03-01T08:00:00Z"),
            deviceState=prop("ok"),
            category=prop(["sensor"]),
            refDeviceModel={"type": "Relationship", "object": "urn:ngsi-ld:DeviceModel:1"},
            location={"type": "GeoProperty", "value": {"type": "Point", "coordinates": [3, 51]}},
            dateLastValueReported=prop("2026-03-01T08:00:00.000Z"),
        )
    )
    before = {k: (dict(v) if isinstance(v, dict) else v) for k, v in entity.items()}
    assert gate.admit(entity) == entity
    assert entity == before


def test_units_are_converted_to_the_catalogue_unit() -> None:
    out = gate.admit(
        parse_entity(
            water(
                pressure=prop(3.0, unitCode="BAR"),
                temperature=prop(50.0, unitCode="FAH"),
                flow=prop(36.0, unitCode="MQH"),
                height=prop(250, unitCode="CMT"),
                volume=prop(5, unitCode="C62"),
            )
        )
    )
    assert out["pressure"]["value"] == pytest.approx(300.0 / 9.80665)
    assert out["pressure"]["unitCode"] == "MTR"
    assert out["temperature"]["value"] == pytest.approx(10.0)
    assert out["temperature"]["unitCode"] == "CEL"
    assert out["flow"]["value"] == pytest.approx(0.01)
    assert out["height"]["value"] == pytest.approx(2.5)
    assert out["height"]["unitCode"] == "MTR"
    assert out["volume"] == {"type": "Property", "value": 5}
    plain = gate.admit(parse_entity(water(flow=prop(2))))
    assert plain["flow"] == {"type": "Property", "value": 2.0, "unitCode": "MQS"}


@pytest.mark.parametrize(
    ("attrs", "fragment"),
    [
        ({"pressure": prop(60.0, unitCode="BAR")}, "outside the physical range"),  # 612 m head
        ({"temperature": prop(90)}, "outside"),
        ({"temperature": prop(-10, unitCode="CEL")}, "outside"),
        ({"flow": prop(1, unitCode="XYZ")}, "unknown unit"),
        ({"flow": prop(1, unitCode="CEL")}, "temperature"),
        ({"volume": prop(1, unitCode="MTR")}, "dimensionless"),
        ({"flow": prop("1")}, "must be a number"),
        ({"flow": prop(True)}, "must be a number"),
        ({"name": prop(5)}, "must be a string"),
        ({"dateObserved": prop("yesterday")}, "dateObserved"),
        ({"name": prop("x", unitCode="MTR")}, "no unitCode"),
        ({"refDevice": prop("urn:x:1")}, "Relationship"),
        ({"flow": {"type": "Relationship", "object": "urn:x:1"}}, "Property"),
        ({"flow": prop(1, bogus=prop(1))}, "not declared"),
        ({"colour": prop("blue")}, "not declared"),
    ],
)
def test_kind_unit_and_range_checks(attrs: dict[str, Any], fragment: str) -> None:
    err = refused(water(**attrs), BAD_REQUEST_DATA)
    assert fragment in err.detail
    assert err.to_dict()["attribute"].split(".")[0] == next(iter(attrs))


def test_choices_and_booleans_and_datetimes() -> None:
    light = {"id": "urn:ngsi-ld:Streetlight:1", "type": "Streetlight"}
    with pytest.raises(Problem) as err:
        gate.admit(parse_entity({**light, "status": prop("exploded")}))
    assert "must be one of" in err.value.detail
    traffic = {"id": "urn:ngsi-ld:TrafficFlowObserved:1", "type": "TrafficFlowObserved"}
    with pytest.raises(Problem):
        gate.admit(parse_entity({**traffic, "congested": prop("yes")}))
    assert (
        gate.admit(parse_entity({**traffic, "congested": prop(False)}))["congested"]["value"]
        is False
    )
    when = gate.admit(
        parse_entity({**light, "dateLastSwitchingOn": prop("2026-03-01T09:30:00+01:00")})
    )
    assert when["dateLastSwitchingOn"]["value"] == "2026-03-01T08:30:00.000Z"
    typed = prop({"@type": "DateTime", "@value": "2026-03-01T08:30:00Z"})
    assert (
        gate.admit(parse_entity({**light, "dateLastLampChange": typed}))["dateLastLampChange"][
            "value"
        ]
        == "2026-03-01T08:30:00.000Z"
    )


def test_undeclared_type_lists_the_declared_ones() -> None:
    err = refused({"id": "urn:x:1", "type": "Spaceship"}, BAD_REQUEST_DATA)
    assert "Spaceship" in err.detail
    assert "WaterObserved" in err.detail


def test_forbidden_type_is_a_privacy_violation() -> None:
    refused({"id": "urn:x:1", "type": "FaceCapture"})


def test_forbidden_attribute_names_are_refused_before_the_catalogue() -> None:
    err = refused(device(licensePlate=prop("1-ABC-123")))
    assert err.to_dict()["attribute"] == "licensePlate"
    assert err.title == "Refused by the privacy gate"
    assert err.status == 400


@pytest.mark.parametrize(
    ("attrs", "where"),
    [
        ({"address": prop({"ownerFirstName": "Jan"})}, "address.ownerFirstName"),
        ({"address": prop({"contact": [{"phoneNumber": "+32"}]})}, "address.phoneNumber"),
        ({"address": prop({"note": f"router {MAC}"})}, "address"),
        ({"name": prop(MAC)}, "name"),
        ({"description": prop(f"last seen {MAC.upper()}")}, "description"),
        ({"seeAlso": prop([JPEG_B64])}, "seeAlso"),
        ({"batteryLevel": prop(0.5, faceCount=prop(1))}, "batteryLevel.faceCount"),
        ({"batteryLevel": prop(0.5, observedBy=prop(MAC))}, "batteryLevel.observedBy"),
        (
            {"batteryLevel": prop(0.5, accuracy=prop(0.1, faceImage=prop("x")))},
            "batteryLevel.accuracy",
        ),
        (
            {"refDeviceModel": {"type": "Relationship", "object": f"urn:ngsi-ld:Model:{MAC}"}},
            "refDeviceModel",
        ),
        (
            {"address": {"type": "LanguageProperty", "languageMap": {"en": f"mac {MAC}"}}},
            "address",
        ),
    ],
)
def test_forbidden_content_anywhere_in_an_attribute(attrs: dict[str, Any], where: str) -> None:
    err = refused(device(**attrs))
    assert err.to_dict()["attribute"].startswith(where)


def test_forbidden_content_in_the_id() -> None:
    refused({"id": f"urn:ngsi-ld:Device:{MAC}", "type": "Device"})


def test_numbers_and_booleans_are_not_sniffed() -> None:
    # A number cannot carry a MAC; the check is skipped (and must not fail on them).
    out = gate.admit(parse_entity(device(rssi=prop(-70), batteryLevel=prop(1))))
    assert out["rssi"]["value"] == -70


def test_declared_metadata_sub_properties_are_accepted() -> None:
    attr = prop(0.5, accuracy=prop(0.01), reliability=prop(0.9))
    out = gate.admit(parse_entity(device(batteryLevel=attr)))
    assert out["batteryLevel"]["accuracy"] == prop(0.01)


def test_admit_attributes_for_a_fragment() -> None:
    spec = gate.type_spec("WaterObserved")
    attrs = parse_entity(water(flow=prop(3.6, unitCode="MQH")))
    out = gate.admit_attributes(spec, attrs)
    assert set(out) == {"flow"}
    assert out["flow"]["value"] == pytest.approx(0.001)


def test_a_custom_catalogue() -> None:
    spec = EntityTypeSpec(
        "Beehive",
        "a beehive",
        {"weight": AttributeSpec("weight", NUMBER, "hive weight", minimum=0, maximum=200)},
    )
    custom = PrivacyGate(Catalogue([spec]))
    out = custom.admit(parse_entity({"id": "urn:b:1", "type": "Beehive", "weight": prop(40)}))
    assert out["weight"]["value"] == 40
    with pytest.raises(Problem):
        custom.admit(parse_entity(water()))


# ---- the catalogue ------------------------------------------------------------------------


def test_catalogue_add_merges_attributes() -> None:
    cat = Catalogue()
    assert "WaterObserved" in cat
    assert "Beehive" not in cat
    extra = AttributeSpec("leakIndex", NUMBER, "leak score", minimum=0, maximum=1, extension=True)
    cat.add(EntityTypeSpec("WaterObserved", "again", {"leakIndex": extra}))
    spec = cat.get("WaterObserved")
    assert spec is not None
    assert spec.attribute("leakIndex") == extra
    assert spec.attribute("flow") is not None
    assert [t.type for t in cat.types()] == sorted(t.type for t in cat.types())
    assert cat.get("Nope") is None


@pytest.mark.parametrize("spec", SMART_DATA_MODELS, ids=lambda s: s.type)
def test_every_catalogue_entry_is_coherent(spec: EntityTypeSpec) -> None:
    assert forbidden_name(spec.type) is None
    assert "location" in spec.attributes
    for name, attr in spec.attributes.items():
        assert name == attr.name
        assert forbidden_name(name) is None, name  # the gate would refuse it anyway
        assert attr.purpose
        assert attr.retention_days > 0
        if attr.unit is not None:
            assert attr.unit in KNOWN_CODES
            assert attr.unit_dimension
        if attr.minimum is not None and attr.maximum is not None:
            assert attr.minimum < attr.maximum
        if attr.choices is not None:
            assert attr.kind == TEXT
            assert attr.choices
        if attr.person_derived:
            assert spec.type == "CrowdFlowObserved"


def test_person_derived_data_is_kept_for_less_time() -> None:
    crowd = Catalogue().get("CrowdFlowObserved")
    assert crowd is not None
    counted = crowd.attribute("peopleCount")
    assert counted is not None
    assert counted.person_derived
    assert counted.retention_days <= 90


# ---- the fast path for plain readings ------------------------------------------------------
_NAMES = ["pressure", "flow"] * 6 + [
    "temperature", "illuminance", "conductivity", "location", "scope", "name", "macAddress",
    "faceImage", "undeclaredThing", "bad name", "dateObserved", "refDevice", "ph",
]  # fmt: skip
_VALUES = st.one_of(
    st.floats(0, 50),  # most readings are in range
    st.floats(0, 50),
    st.floats(0, 50),
    st.integers(0, 20),
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.none(),
    st.text(max_size=8),
    st.just(MAC),
)
_IDS = st.sampled_from(
    ["urn:ngsi-ld:WaterObserved:w1"] * 8
    + ["no-uri", f"urn:x:{MAC}", "urn:ngsi-ld:X:" + "y" * 300, 7]
)
_TYPES = st.sampled_from(
    ["WaterObserved"] * 6 + ["WaterQualityObserved", "Unknown", "faceImage", 3]
)


@settings(max_examples=400, deadline=None)
@given(
    eid=_IDS,
    etype=_TYPES,
    attrs=st.dictionaries(st.sampled_from(_NAMES), _VALUES, max_size=3),
)
def test_the_plain_reading_path_agrees_with_the_full_path(
    eid: Any, etype: Any, attrs: dict[str, Any]
) -> None:
    """``admit_readings`` answers only for documents the full path admits, and then with
    exactly what the full path gives; for anything else (refusals included) it says None."""
    gate = PrivacyGate()
    doc = {"id": eid, "type": etype, **attrs}
    fast = gate.admit_readings(dict(doc))
    try:
        full: Any = gate.admit(parse_entity(dict(doc), key_values=True))
    except Problem:
        full = None
    event("admitted by the plain path" if fast is not None else "left to the full path")
    if fast is not None:
        assert full is not None
        assert fast == full
        assert list(fast) == list(full)  # the same attribute order
        for name in fast:
            if name not in ("id", "type"):
                assert list(fast[name]) == list(full[name])
                assert type(fast[name]["value"]) is type(full[name]["value"])


def test_the_plain_reading_path_takes_the_usual_sensor_message() -> None:
    gate = PrivacyGate()
    doc = {"id": "urn:ngsi-ld:WaterObserved:w1", "type": "WaterObserved", "pressure": 3}
    doc["flow"] = 0.5
    fast = gate.admit_readings(doc)
    assert fast is not None
    assert fast == gate.admit(parse_entity(doc, key_values=True))
    assert fast["pressure"]["value"] == 3.0 and type(fast["pressure"]["value"]) is float
    # A reading out of range, or any attribute that is not a plain number, takes the full path.
    assert gate.admit_readings({**doc, "pressure": -500}) is None
    assert gate.admit_readings({**doc, "name": "hydrant 4"}) is None
