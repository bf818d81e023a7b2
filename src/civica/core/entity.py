"""The NGSI-LD entity model: parse and validate payloads into one normalized form.

An entity is held as a plain dict in NGSI-LD *normalized* form with canonical names
(see ``ldcontext``): ``{"id": ..., "type": ..., "<attr>": {"type": "Property", ...}}``.
Plain dicts keep the ingest hot path cheap; this module is the only place that shapes them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any, NamedTuple

import orjson

from civica.core.ldcontext import CORE, LdContext
from civica.core.problems import bad_request
from civica.core.timefmt import normalise_time, parse_time

Entity = dict[str, Any]

PROPERTY = "Property"
RELATIONSHIP = "Relationship"
GEO_PROPERTY = "GeoProperty"
LANGUAGE_PROPERTY = "LanguageProperty"
ATTRIBUTE_TYPES = frozenset({PROPERTY, RELATIONSHIP, GEO_PROPERTY, LANGUAGE_PROPERTY})
GEO_ATTRIBUTES = frozenset({"location", "observationSpace", "operationSpace"})
SYSTEM_MEMBERS = frozenset({"createdAt", "modifiedAt"})
ID_AND_TYPE = frozenset({"id", "type"})  # every other top-level member is an attribute
ENTITY_MEMBERS = frozenset({"id", "type", "@context", "scope"}) | SYSTEM_MEMBERS
# Attribute members a client may send besides sub-attributes.
_ATTRIBUTE_MEMBERS = (
    frozenset({"type", "value", "object", "languageMap", "observedAt", "unitCode", "datasetId"})
    | SYSTEM_MEMBERS
)

MAX_ID_LENGTH = 256
MAX_NAME_LENGTH = 256
MAX_DEPTH = 4
# JSON values nest at most this deep: orjson stops at 255 levels when a document is stored
# or echoed back, and no city data needs more.
MAX_VALUE_DEPTH = 64
_NAME_RE = re.compile(r"^[^\s<>\"'=;()\[\]\\]+$")
_IRI_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:[^\s<>\"]+$")
GEOMETRY_TYPES = frozenset(
    {"Point", "MultiPoint", "LineString", "MultiLineString", "Polygon", "MultiPolygon"}
)


class Observation(NamedTuple):
    """One observed value of one attribute; the row of the temporal history.

    A named tuple rather than a frozen dataclass: ingest makes one per reading and a history
    query one per instance, and a tuple is built about ten times faster.
    """

    entity_id: str
    entity_type: str
    attribute: str
    observed_at: datetime
    value_num: float | None
    value_json: str | None
    unit: str | None


def is_entity_id(value: str) -> bool:
    """Whether a string is a valid entity id: a URI of at most ``MAX_ID_LENGTH`` characters."""
    return len(value) <= MAX_ID_LENGTH and _IRI_RE.match(value) is not None


def check_entity_id(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise bad_request("entity 'id' must be a non-empty string (a URI)")
    if not is_entity_id(value):
        raise bad_request(f"entity id {value[:80]!r} is not a URI of at most {MAX_ID_LENGTH} chars")
    return value


_GOOD_NAMES: set[str] = set()  # a city sends the same few dozen names over and over


def check_name(name: str, what: str = "attribute name") -> str:
    if name in _GOOD_NAMES:
        return name
    if not name or len(name) > MAX_NAME_LENGTH or not _NAME_RE.match(name):
        raise bad_request(f"{what} {name[:80]!r} is not valid", attribute=name[:80])
    if len(_GOOD_NAMES) < 4096:
        _GOOD_NAMES.add(name)
    return name


def _entity_type(value: object, ctx: LdContext) -> str:
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if not isinstance(value, str) or not value:
        raise bad_request("entity 'type' must be one non-empty string")
    return ctx.to_canonical(check_name(value, "entity type"))


def parse_entity(
    doc: object,
    ctx: LdContext = CORE,
    *,
    key_values: bool = False,
    require_type: bool = True,
) -> Entity:
    """Validate one NGSI-LD entity (normalized or keyValues) into canonical normalized form."""
    if not isinstance(doc, dict):
        raise bad_request("an entity must be a JSON object")
    entity: Entity = {"id": check_entity_id(doc.get("id"))}
    if "type" in doc or require_type:
        entity["type"] = _entity_type(doc.get("type"), ctx)
    attrs = parse_attributes(
        {k: v for k, v in doc.items() if k not in ENTITY_MEMBERS}, ctx, key_values=key_values
    )
    entity.update(attrs)
    return entity


def parse_attributes(
    doc: Mapping[str, Any], ctx: LdContext = CORE, *, key_values: bool = False
) -> dict[str, Any]:
    """Validate a fragment of attributes (as in PATCH/POST .../attrs)."""
    out: dict[str, Any] = {}
    for raw_name, raw in doc.items():
        if raw_name in ENTITY_MEMBERS:
            continue
        name = ctx.to_canonical(check_name(raw_name))
        if key_values:
            out[name] = _from_key_value(name, raw)
        else:
            out[name] = parse_attribute(name, raw, ctx, 0)
    return out


def _from_key_value(name: str, raw: Any) -> dict[str, Any]:
    if isinstance(raw, dict) and raw.get("type") in GEOMETRY_TYPES:
        return {"type": GEO_PROPERTY, "value": check_geometry(raw, name)}
    if name in GEO_ATTRIBUTES:
        raise bad_request(f"{name!r} must be a GeoJSON geometry", attribute=name)
    if name.startswith("ref") and isinstance(raw, str) and _IRI_RE.match(raw):
        return {"type": RELATIONSHIP, "object": raw}
    return {"type": PROPERTY, "value": _check_value(name, raw)}


# The shape nearly every sensor reading has: a Property with a number, a time and a unit.
_READING_MEMBERS = frozenset({"type", "value", "observedAt", "unitCode"})


def parse_attribute(name: str, raw: Any, ctx: LdContext, depth: int) -> dict[str, Any]:
    if type(raw) is dict and raw.get("type") == PROPERTY and _READING_MEMBERS.issuperset(raw):
        value: Any = raw.get("value")
        vt = type(value)
        if (vt is int or (vt is float and math.isfinite(value))) and name not in GEO_ATTRIBUTES:
            return _reading(name, value, raw)
    if isinstance(raw, list):
        raise bad_request(
            f"attribute {name!r}: multi-attributes (several instances, datasetId) "
            "are not supported",
            attribute=name,
        )
    if not isinstance(raw, dict):
        raise bad_request(
            f"attribute {name!r} must be an object with a 'type' (normalized form); "
            "send options=keyValues for plain values",
            attribute=name,
        )
    kind = raw.get("type")
    if kind is None:
        kind = RELATIONSHIP if "object" in raw else PROPERTY
    if kind not in ATTRIBUTE_TYPES:
        raise bad_request(f"attribute {name!r} has unknown type {kind!r}", attribute=name)
    if "datasetId" in raw:
        raise bad_request(f"attribute {name!r}: datasetId is not supported", attribute=name)
    attr: dict[str, Any] = {"type": kind}
    if kind == RELATIONSHIP:
        attr["object"] = _check_object(name, raw.get("object"))
    elif kind == GEO_PROPERTY:
        attr["value"] = check_geometry(raw.get("value"), name)
    elif kind == LANGUAGE_PROPERTY:
        lmap = raw.get("languageMap")
        if not isinstance(lmap, dict) or not all(isinstance(v, str) for v in lmap.values()):
            raise bad_request(f"attribute {name!r} needs a languageMap of strings", attribute=name)
        attr["languageMap"] = lmap
    else:
        if "value" not in raw:
            raise bad_request(f"Property {name!r} has no 'value'", attribute=name)
        value = raw["value"]
        if name in GEO_ATTRIBUTES or (isinstance(value, dict) and value.get("type") == "Point"):
            attr = {"type": GEO_PROPERTY, "value": check_geometry(value, name)}
        else:
            attr["value"] = _check_value(name, value)
    _time_and_unit(name, raw, attr)
    if name in GEO_ATTRIBUTES and attr["type"] != GEO_PROPERTY:
        raise bad_request(f"{name!r} must be a GeoProperty", attribute=name)
    for key, sub in raw.items():
        if key in _ATTRIBUTE_MEMBERS:
            continue
        if depth >= MAX_DEPTH:
            raise bad_request(f"attribute {name!r} is nested too deeply", attribute=name)
        sub_name = ctx.to_canonical(check_name(key))
        attr[sub_name] = parse_attribute(f"{name}.{sub_name}", sub, ctx, depth + 1)
    return attr


def _reading(name: str, value: float, raw: dict[str, Any]) -> dict[str, Any]:
    """``parse_attribute`` for a numeric Property with only observedAt and unitCode."""
    attr: dict[str, Any] = {"type": PROPERTY, "value": value}
    _time_and_unit(name, raw, attr)
    return attr


def _time_and_unit(name: str, raw: Mapping[str, Any], attr: dict[str, Any]) -> None:
    """Copy a checked ``observedAt`` (in canonical UTC form) and ``unitCode`` into ``attr``."""
    if "observedAt" in raw:
        attr["observedAt"] = normalise_time(raw["observedAt"], f"{name}.observedAt")
    if "unitCode" in raw:
        unit = raw["unitCode"]
        if not isinstance(unit, str) or not 0 < len(unit) <= 16:
            raise bad_request(f"attribute {name!r}: unitCode must be a short string")
        attr["unitCode"] = unit


def _check_object(name: str, obj: Any) -> Any:
    if isinstance(obj, str) and _IRI_RE.match(obj):
        return obj
    if isinstance(obj, list) and obj and all(isinstance(o, str) and _IRI_RE.match(o) for o in obj):
        return obj
    raise bad_request(f"Relationship {name!r} needs an 'object' URI", attribute=name)


def _check_value(name: str, value: Any) -> Any:
    if value is None:
        raise bad_request(f"attribute {name!r} has a null value", attribute=name)
    if isinstance(value, float) and not math.isfinite(value):
        raise bad_request(f"attribute {name!r} is not a finite number", attribute=name)
    if isinstance(value, dict | list):
        check_nesting(value, f"attribute {name!r}")
    return value


def check_nesting(value: Any, what: str, limit: int = MAX_VALUE_DEPTH) -> None:
    """Refuse a JSON value nested deeper than ``limit`` levels of objects and arrays."""
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children: Iterable[Any] = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        if depth > limit:
            raise bad_request(f"{what} is nested deeper than {limit} levels")
        stack.extend((child, depth + 1) for child in children)


def _check_position(pos: Any, name: str) -> None:
    if (
        not isinstance(pos, list)
        or len(pos) not in (2, 3)
        or not all(isinstance(c, int | float) and not isinstance(c, bool) for c in pos)
    ):
        raise bad_request(f"{name!r}: a position is [longitude, latitude]", attribute=name)
    lon, lat = pos[0], pos[1]
    if not (-180.0 <= lon <= 180.0 and -90.0 <= lat <= 90.0):
        raise bad_request(
            f"{name!r}: position {pos} is outside longitude ±180 / latitude ±90", attribute=name
        )


def _check_positions(coords: Any, depth: int, name: str) -> None:
    if depth == 0:
        _check_position(coords, name)
        return
    if not isinstance(coords, list) or not coords:
        raise bad_request(f"{name!r}: malformed GeoJSON coordinates", attribute=name)
    for item in coords:
        _check_positions(item, depth - 1, name)


_GEOMETRY_DEPTH = {
    "Point": 0,
    "MultiPoint": 1,
    "LineString": 1,
    "MultiLineString": 2,
    "Polygon": 2,
    "MultiPolygon": 3,
}


def check_geometry(value: Any, name: str = "geometry") -> dict[str, Any]:
    """Validate a GeoJSON geometry (WGS 84 longitude/latitude)."""
    if not isinstance(value, dict) or value.get("type") not in GEOMETRY_TYPES:
        raise bad_request(f"{name!r} must be a GeoJSON geometry", attribute=name)
    coords: Any = value.get("coordinates")  # shape checked by _check_positions
    _check_positions(coords, _GEOMETRY_DEPTH[value["type"]], name)
    if value["type"] in ("LineString", "MultiLineString"):
        lines = [coords] if value["type"] == "LineString" else coords
        if any(len(line) < 2 for line in lines):
            raise bad_request(f"{name!r}: a line needs at least two positions", attribute=name)
    if value["type"] in ("Polygon", "MultiPolygon"):
        rings = coords if value["type"] == "Polygon" else [r for p in coords for r in p]
        for ring in rings:
            if len(ring) < 4 or ring[0] != ring[-1]:
                raise bad_request(f"{name!r}: a polygon ring must be closed", attribute=name)
    return {"type": value["type"], "coordinates": coords}


def observations(entity: Entity, received_at: datetime) -> list[Observation]:
    """The temporal rows an entity state carries: one per top-level Property.

    GeoProperty and Relationship history is deliberately not kept: the platform has no
    use for movement traces.
    """
    rows: list[Observation] = []
    eid, etype = entity["id"], entity.get("type", "")
    make = _new_observation
    for name, attr in entity.items():
        if name in ID_AND_TYPE or attr.get("type") != PROPERTY:
            continue
        value = attr["value"]
        observed = attr.get("observedAt")
        at = parse_time(observed) if observed else received_at
        kind = type(value)
        row: tuple[Any, ...]
        if kind is float or kind is int:
            row = (eid, etype, name, at, float(value), None, attr.get("unitCode"))
        else:
            num = float(value) if isinstance(value, int | float) and kind is not bool else None
            text = None if num is not None else orjson.dumps(value).decode()
            row = (eid, etype, name, at, num, text, attr.get("unitCode"))
        rows.append(make(Observation, row))
    return rows


# Building the tuple directly skips the named tuple's keyword-handling constructor.
_new_observation = tuple.__new__


def attribute_names(entity: Entity) -> list[str]:
    return [k for k in entity if k not in ID_AND_TYPE]


def to_key_values(entity: Entity) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, attr in entity.items():
        if name in ("id", "type", "@context") or not isinstance(attr, dict):
            out[name] = attr
            continue
        out[name] = attribute_value(attr)
    return out


def attribute_value(attr: Mapping[str, Any]) -> Any:
    kind = attr.get("type")
    if kind == RELATIONSHIP:
        return attr.get("object")
    if kind == LANGUAGE_PROPERTY:
        return attr.get("languageMap")
    return attr.get("value")


def compact_entity(entity: Entity, ctx: LdContext) -> Entity:
    """Rename canonical names to the client's context (identity for the core context)."""
    if ctx.is_core:
        return entity
    out: Entity = {}
    for name, attr in entity.items():
        if name == "id":
            out[name] = attr
        elif name == "type":
            out[name] = ctx.from_canonical(attr)
        elif isinstance(attr, dict) and attr.get("type") in ATTRIBUTE_TYPES:
            out[ctx.from_canonical(name)] = _compact_attr(attr, ctx)
        else:
            out[name] = attr
    return out


def _compact_attr(attr: Mapping[str, Any], ctx: LdContext) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, val in attr.items():
        if isinstance(val, dict) and val.get("type") in ATTRIBUTE_TYPES:
            out[ctx.from_canonical(key)] = _compact_attr(val, ctx)
        else:
            out[key] = val
    return out


def project(entity: Entity, attrs: Iterable[str] | None) -> Entity:
    """Keep only the named attributes (id and type always stay)."""
    if attrs is None:
        return entity
    wanted = set(attrs)
    return {k: v for k, v in entity.items() if k in ("id", "type") or k in wanted}


def looks_normalized(doc: Mapping[str, Any]) -> bool:
    """True if a payload is in normalized form (attributes are typed objects)."""
    for key, val in doc.items():
        if key in ENTITY_MEMBERS:
            continue
        if isinstance(val, dict) and val.get("type") in ATTRIBUTE_TYPES:
            return True
        if not (isinstance(val, dict) and val.get("type") in GEOMETRY_TYPES):
            return False
    return False


def merge_attribute(old: Mapping[str, Any], fragment: Mapping[str, Any]) -> dict[str, Any]:
    """Partial attribute update: members of ``fragment`` replace those of ``old``."""
    merged = dict(old)
    if "value" in fragment:
        merged.pop("object", None)
    if "object" in fragment:
        merged.pop("value", None)
    merged.update(fragment)
    return merged
