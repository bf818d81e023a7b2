"""The ingest gate: the one door every reading passes before it reaches the store.

It refuses forbidden kinds of data (see ``forbidden``), refuses anything the catalogue does
not declare, checks value kinds, converts units to the catalogue's canonical unit, and
refuses values outside their physical range.
"""

from __future__ import annotations

import functools
import math
from typing import Any

from civica.core.entity import (
    ENTITY_MEMBERS,
    GEO_ATTRIBUTES,
    GEO_PROPERTY,
    ID_AND_TYPE,
    PROPERTY,
    RELATIONSHIP,
    Entity,
    check_name,
    is_entity_id,
)
from civica.core.problems import PRIVACY_VIOLATION, Problem, bad_request
from civica.core.timefmt import normalise_time
from civica.core.units import to_canonical
from civica.privacy.catalogue import (
    BOOL,
    DATETIME,
    GEO,
    METADATA_SUB_PROPERTIES,
    NUMBER,
    TEXT,
    AttributeSpec,
    Catalogue,
    EntityTypeSpec,
)
from civica.privacy.catalogue import RELATIONSHIP as REL_KIND
from civica.privacy.forbidden import forbidden_keys, forbidden_name, forbidden_value

_CORE_MEMBERS = frozenset({"type", "value", "object", "languageMap", "observedAt", "unitCode"})
_READING = frozenset({"type", "value", "observedAt", "unitCode"})


def refusal(attribute: str, why: str) -> Problem:
    return Problem(
        PRIVACY_VIOLATION,
        f"attribute {attribute!r} refused: {why}",
        title="Refused by the privacy gate",
        attribute=attribute,
    )


_forbidden_name = functools.lru_cache(maxsize=4096)(forbidden_name)


def _plain_name(name: str) -> bool:
    """A name ``check_name`` accepts as it is (the core context keeps it unchanged)."""
    try:
        check_name(name)
    except Problem:
        return False
    return True


class PrivacyGate:
    """Checks entities against the forbidden kinds and the data catalogue."""

    def __init__(self, catalogue: Catalogue | None = None) -> None:
        self.catalogue = catalogue or Catalogue()
        # For ``admit_readings``: entity types and (type, attribute) names found to need no
        # more than a value check; anything else takes the full path.
        self._plain_types: dict[str, EntityTypeSpec] = {}
        self._plain_numbers: dict[tuple[str, str], AttributeSpec] = {}

    def admit_readings(self, doc: dict[str, Any]) -> Entity | None:
        """The most common message, faster: a keyValues document (core context) whose
        attributes are all plain numbers declared as numbers.

        Returns exactly what ``admit(parse_entity(doc, key_values=True))`` returns, or None
        when the document is anything else or would be refused: the caller then takes that
        full path, which gives the refusal its reason.
        """
        eid, etype = doc.get("id"), doc.get("type")
        if type(eid) is not str or type(etype) is not str:
            return None
        spec = self._plain_types.get(etype) or self._plain_type(etype)
        if spec is None or not is_entity_id(eid):
            return None
        if forbidden_value(eid):
            return None
        out: Entity = {"id": eid, "type": etype}
        numbers = self._plain_numbers
        for name, raw in doc.items():
            if name in ID_AND_TYPE:
                continue
            kind = type(raw)
            if kind is float:
                if not math.isfinite(raw):
                    return None
            elif kind is not int:
                return None
            decl = numbers.get((etype, name)) or self._plain_number(spec, name)
            if decl is None:
                return None
            value = float(raw) if decl.unit else raw
            attr: dict[str, Any] = {"type": PROPERTY, "value": value}
            try:  # the full path's own unit and range check
                attr["value"] = _in_units(decl, name, value, attr)
            except Problem:
                return None
            out[name] = attr
        return out

    def _plain_type(self, etype: str) -> EntityTypeSpec | None:
        if _forbidden_name(etype) or not _plain_name(etype) or len(self._plain_types) > 256:
            return None
        spec = self.catalogue.get(etype)
        if spec is not None:
            self._plain_types[etype] = spec
        return spec

    def _plain_number(self, spec: EntityTypeSpec, name: str) -> AttributeSpec | None:
        if name in ENTITY_MEMBERS or name in GEO_ATTRIBUTES or not _plain_name(name):
            return None
        if _forbidden_name(name) or len(self._plain_numbers) > 4096:
            return None
        decl = spec.attribute(name)
        if decl is None or decl.kind != NUMBER:
            return None
        self._plain_numbers[(spec.type, name)] = decl
        return decl

    def type_spec(self, type_: str) -> EntityTypeSpec:
        why = _forbidden_name(type_)
        if why:
            raise refusal("type", why)
        spec = self.catalogue.get(type_)
        if spec is None:
            declared = ", ".join(t.type for t in self.catalogue.types())
            raise bad_request(
                f"entity type {type_!r} is not declared in the data catalogue "
                f"(declared: {declared})",
                attribute="type",
            )
        return spec

    def admit(self, entity: Entity) -> Entity:
        """Return the entity with units made canonical, or raise a Problem naming the attribute."""
        why = forbidden_value(entity["id"])
        if why:
            raise refusal("id", why)
        spec = self.type_spec(entity["type"])
        out: Entity = {"id": entity["id"], "type": entity["type"]}
        out.update(self.admit_attributes(spec, entity))
        return out

    def admit_attributes(self, spec: EntityTypeSpec, attrs: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, attr in attrs.items():
            if name in ("id", "type"):
                continue
            out[name] = self._admit_attribute(spec, name, attr)
        return out

    def _admit_attribute(self, spec: EntityTypeSpec, name: str, attr: dict[str, Any]) -> Any:
        why = _forbidden_name(name)
        if why:
            raise refusal(name, why)
        decl = spec.attribute(name)
        if decl is None:
            raise bad_request(
                f"attribute {name!r} is not declared for type {spec.type!r} in the data catalogue",
                attribute=name,
            )
        attr = dict(attr)
        if decl.kind == NUMBER and attr.get("type") == PROPERTY and _READING.issuperset(attr):
            value = attr.get("value")
            if type(value) is float or type(value) is int:  # a plain reading: no content to scan
                attr["value"] = _in_units(decl, name, float(value) if decl.unit else value, attr)
                return attr
        for key in attr:
            if key in _CORE_MEMBERS:
                continue
            why = _forbidden_name(key)
            if why:
                raise refusal(f"{name}.{key}", why)
            if key not in METADATA_SUB_PROPERTIES:
                raise bad_request(
                    f"sub-attribute {name}.{key} is not declared in the data catalogue",
                    attribute=f"{name}.{key}",
                )
            # A declared sub-attribute may still carry forbidden content further down.
            _refuse_content(f"{name}.{key}", attr[key])
        if decl.kind not in (NUMBER, BOOL):
            for member in ("value", "object", "languageMap"):
                if member in attr:
                    _refuse_content(name, attr[member])
        _check_kind(decl, name, attr)
        return attr


def _refuse_content(where: str, value: Any) -> None:
    """Raise if a JSON value holds a forbidden key, a MAC address or an image."""
    for key, reason in forbidden_keys(value):
        raise refusal(f"{where}.{key}", reason)
    why = forbidden_value(value)
    if why:
        raise refusal(where, why)


def _check_kind(decl: AttributeSpec, name: str, attr: dict[str, Any]) -> None:
    kind = attr.get("type")
    if decl.kind == GEO:
        if kind != GEO_PROPERTY:
            raise bad_request(f"{name!r} must be a GeoProperty", attribute=name)
        return
    if decl.kind == REL_KIND:
        if kind != RELATIONSHIP:
            raise bad_request(f"{name!r} must be a Relationship", attribute=name)
        return
    if kind in (RELATIONSHIP, GEO_PROPERTY):
        raise bad_request(f"{name!r} must be a Property", attribute=name)
    value = attr.get("value")
    if decl.kind == NUMBER:
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise bad_request(f"{name!r} must be a number, got {_kind(value)}", attribute=name)
        attr["value"] = _in_units(decl, name, float(value) if decl.unit else value, attr)
    elif decl.kind == BOOL:
        if not isinstance(value, bool):
            raise bad_request(f"{name!r} must be true or false", attribute=name)
    elif decl.kind == TEXT:
        if not isinstance(value, str):
            raise bad_request(f"{name!r} must be a string, got {_kind(value)}", attribute=name)
        if decl.choices is not None and value not in decl.choices:
            raise bad_request(
                f"{name!r} must be one of {', '.join(decl.choices)}; got {value[:40]!r}",
                attribute=name,
            )
    elif decl.kind == DATETIME:
        raw = value.get("@value") if isinstance(value, dict) else value
        try:
            attr["value"] = normalise_time(raw, name)
        except Problem as err:
            raise bad_request(err.detail, attribute=name) from err
    if decl.kind != NUMBER and "unitCode" in attr:
        raise bad_request(f"{name!r} takes no unitCode", attribute=name)


def _in_units(decl: AttributeSpec, name: str, value: Any, attr: dict[str, Any]) -> Any:
    code = attr.get("unitCode")
    if decl.unit is None:
        if code is not None and code != "C62":
            raise bad_request(
                f"{name!r} is dimensionless; unitCode {code!r} not accepted", attribute=name
            )
        attr.pop("unitCode", None)
    else:
        if code is not None and code != decl.unit:
            try:
                value = to_canonical(value, code, decl.unit, decl.unit_dimension)
            except Problem as err:
                raise bad_request(f"{name!r}: {err.detail}", attribute=name) from err
        attr["unitCode"] = decl.unit
    lo, hi = decl.minimum, decl.maximum
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        unit = f" {decl.unit}" if decl.unit else ""
        raise bad_request(
            f"{name!r} = {value:g}{unit} is outside the physical range [{lo:g}, {hi:g}]{unit}",
            attribute=name,
        )
    return value


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__
