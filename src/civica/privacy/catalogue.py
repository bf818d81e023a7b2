"""The data catalogue: every attribute an entity type may carry, why, and for how long.

Nothing reaches the store that the catalogue does not declare. Entries follow the FIWARE
Smart Data Models names; attributes Civica adds are marked ``extension=True``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

from civica.core.units import dimension_of

# Value kinds an attribute may hold.
NUMBER, TEXT, BOOL, JSON, GEO, RELATIONSHIP, DATETIME = (
    "number", "text", "bool", "json", "geo", "relationship", "datetime",
)  # fmt: skip


@dataclass(frozen=True)
class AttributeSpec:
    """One declared attribute. ``unit`` is the canonical UN/CEFACT code values are stored in."""

    name: str
    kind: str
    purpose: str
    category: str = "measurement"
    unit: str | None = None
    dimension: str | None = None
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] | None = None
    retention_days: int = 400
    person_derived: bool = False
    extension: bool = False

    @property
    def unit_dimension(self) -> str | None:
        if self.unit is None:
            return None
        return self.dimension or dimension_of(self.unit)


@dataclass(frozen=True)
class EntityTypeSpec:
    type: str
    description: str
    attributes: Mapping[str, AttributeSpec] = field(default_factory=dict)

    def attribute(self, name: str) -> AttributeSpec | None:
        return self.attributes.get(name)


def _spec(type_: str, description: str, *attrs: AttributeSpec) -> EntityTypeSpec:
    merged = {a.name: a for a in (*_COMMON, *attrs)}
    return EntityTypeSpec(type_, description, merged)


def _num(
    name: str, purpose: str, unit: str | None, lo: float, hi: float, **kw: object
) -> AttributeSpec:
    return AttributeSpec(name, NUMBER, purpose, unit=unit, minimum=lo, maximum=hi, **kw)  # type: ignore[arg-type]


def _enum(name: str, purpose: str, *choices: str, **kw: object) -> AttributeSpec:
    fields: dict[str, object] = {"category": "state", **kw}
    return AttributeSpec(name, TEXT, purpose, choices=choices, **fields)  # type: ignore[arg-type]


def _meta(name: str, kind: str, purpose: str, **kw: object) -> AttributeSpec:
    fields: dict[str, object] = {"category": "metadata", "retention_days": 3650, **kw}
    return AttributeSpec(name, kind, purpose, **fields)  # type: ignore[arg-type]


_COMMON: tuple[AttributeSpec, ...] = (
    _meta("name", TEXT, "asset or station name (never a person's)"),
    _meta("description", TEXT, "free description of the asset"),
    _meta("alternateName", TEXT, "alternative asset name"),
    _meta("address", JSON, "postal address of the asset"),
    _meta("location", GEO, "where the asset is", category="location"),
    _meta("areaServed", TEXT, "district or zone served"),
    _meta("dataProvider", TEXT, "who provides the data"),
    _meta("source", TEXT, "original data source"),
    _meta("dateObserved", DATETIME, "time of the observation"),
    _meta("dateObservedFrom", DATETIME, "start of the observation period"),
    _meta("dateObservedTo", DATETIME, "end of the observation period"),
    _meta("refDevice", RELATIONSHIP, "the device that produced the data"),
    _meta("seeAlso", JSON, "links to further information"),
)

# Sub-properties allowed on any attribute (observedAt and unitCode are core members).
METADATA_SUB_PROPERTIES = frozenset({"accuracy", "observedBy", "providedBy", "reliability"})

SMART_DATA_MODELS: tuple[EntityTypeSpec, ...] = (
    _spec(
        "Streetlight",
        "A street light (lamp, lantern and column)",
        _enum("status", "maintenance state", "ok", "defectiveLamp", "columnIssue", "brokenLantern"),
        _enum("powerState", "switching state", "on", "off", "low", "bootingUp"),
        _num("illuminanceLevel", "relative light output", None, 0.0, 1.0),
        _num("lanternHeight", "mounting height", "MTR", 0.0, 60.0, category="metadata"),
        _num("activePower", "electrical power drawn", "WTT", 0.0, 10_000.0, extension=True),
        AttributeSpec("dateLastSwitchingOn", DATETIME, "last switch-on", category="state"),
        AttributeSpec("dateLastSwitchingOff", DATETIME, "last switch-off", category="state"),
        AttributeSpec("dateLastLampChange", DATETIME, "last lamp change", category="state"),
        _meta("circuit", TEXT, "electrical circuit"),
        _meta("refStreetlightGroup", RELATIONSHIP, "group the light belongs to"),
        _meta("refStreetlightModel", RELATIONSHIP, "model of the light"),
        _meta("refStreetlightControlCabinet", RELATIONSHIP, "control cabinet"),
    ),
    _spec(
        "WaterObserved",
        "Hydraulic readings: flow, pressure, level",
        _num("flow", "volume flow through a pipe or meter", "MQS", -100.0, 100.0),
        _num(
            "pressure",
            "pressure head in the network",
            "MTR",
            -20.0,
            500.0,
            dimension="pressure",
            extension=True,
        ),
        _num("height", "water or tank level", "MTR", -100.0, 1000.0),
        _num("temperature", "water temperature", "CEL", -5.0, 80.0),
        _num("volume", "stored volume", None, 0.0, 1.0e9),
    ),
    _spec(
        "WaterQualityObserved",
        "Water quality readings",
        _num("temperature", "water temperature", "CEL", -5.0, 80.0),
        _num("conductivity", "electrical conductivity", "D10", 0.0, 20.0),
        _num("pH", "acidity", None, 0.0, 14.0),
        _num("turbidity", "turbidity", "NTU", 0.0, 4000.0),
        _num("freeChlorine", "free chlorine residual", "M1", 0.0, 50.0, extension=True),
        _num("O2", "dissolved oxygen", "M1", 0.0, 50.0),
        _num("tds", "total dissolved solids", "M1", 0.0, 100_000.0),
    ),
    _spec(
        "TrafficFlowObserved",
        "Aggregated traffic on a lane or road segment over an interval",
        _num("intensity", "vehicles counted in the interval", None, 0.0, 100_000.0),
        _num("occupancy", "fraction of time the detector is occupied", None, 0.0, 1.0),
        _num("averageVehicleSpeed", "mean speed", "KMH", 0.0, 300.0),
        _num("averageVehicleLength", "mean vehicle length", "MTR", 0.0, 40.0),
        _num("averageHeadwayTime", "mean headway", "SEC", 0.0, 3600.0),
        _num("averageGapDistance", "mean gap", "MTR", 0.0, 10_000.0),
        _num("queueLength", "queue length", "MTR", 0.0, 100_000.0, extension=True),
        _num("laneId", "lane number", None, 0.0, 50.0, category="metadata"),
        AttributeSpec("congested", BOOL, "congestion flag", category="state"),
        _enum("laneDirection", "direction of the lane", "forward", "backward"),
        _meta("vehicleType", TEXT, "class of vehicles counted"),
        _meta("refRoadSegment", RELATIONSHIP, "road segment observed"),
    ),
    _spec(
        "AirQualityObserved",
        "Air pollutant concentrations and indices",
        *(
            _num(p, f"{p} concentration", "GQ", 0.0, 100_000.0)
            for p in (
                "pm1",
                "pm10",
                "pm25",
                "no2",
                "no",
                "nox",
                "o3",
                "so2",
                "co",
                "nh3",
                "benzene",
            )
        ),
        _num("temperature", "air temperature", "CEL", -80.0, 70.0),
        _num("relativeHumidity", "relative humidity", None, 0.0, 1.0),
        _num("airQualityIndex", "air quality index", None, 0.0, 1000.0),
        _enum(
            "airQualityLevel",
            "air quality band",
            "good",
            "moderate",
            "unhealthyForSensitiveGroups",
            "unhealthy",
            "veryUnhealthy",
            "hazardous",
        ),
        _num("reliability", "reliability of the reading", None, 0.0, 1.0),
        _num("windSpeed", "wind speed", "MTS", 0.0, 120.0),
        _num("windDirection", "wind direction", "DD", -180.0, 360.0),
        _num("precipitation", "precipitation", "MMT", 0.0, 1000.0),
    ),
    _spec(
        "CrowdFlowObserved",
        "People counted per zone and interval (aggregates only, never individuals)",
        _num(
            "peopleCount",
            "people counted in the interval",
            None,
            0.0,
            1.0e6,
            person_derived=True,
            retention_days=90,
        ),
        _num(
            "peopleCountTowards",
            "people moving towards the reference",
            None,
            0.0,
            1.0e6,
            person_derived=True,
            retention_days=90,
        ),
        _num(
            "peopleCountAway",
            "people moving away from the reference",
            None,
            0.0,
            1.0e6,
            person_derived=True,
            retention_days=90,
        ),
        _num(
            "occupancy",
            "fraction of the zone occupied",
            None,
            0.0,
            1.0,
            person_derived=True,
            retention_days=90,
        ),
        _num(
            "averageCrowdSpeed",
            "mean walking speed",
            "KMH",
            0.0,
            50.0,
            person_derived=True,
            retention_days=90,
        ),
        _num(
            "averageHeadwayTime",
            "mean headway",
            "SEC",
            0.0,
            3600.0,
            person_derived=True,
            retention_days=90,
        ),
        AttributeSpec("congested", BOOL, "crowding flag", category="state", person_derived=True),
        _enum("direction", "flow direction", "inbound", "outbound"),
        _meta("refRoadSegment", RELATIONSHIP, "walkway observed"),
    ),
    _spec(
        "Device",
        "A sensor, gateway or actuator",
        _meta("category", JSON, "kind of device"),
        _meta("controlledProperty", JSON, "what the device measures"),
        _num("batteryLevel", "battery charge", None, 0.0, 1.0, category="state"),
        _enum("deviceState", "operational state", "ok", "warning", "error", "off", "maintenance"),
        _num("rssi", "radio signal strength", None, -200.0, 0.0, category="state"),
        _meta("firmwareVersion", TEXT, "firmware"),
        _meta("serialNumber", TEXT, "serial number of the device"),
        _meta("supportedProtocol", JSON, "protocols"),
        AttributeSpec("dateLastValueReported", DATETIME, "last report", category="state"),
        _meta("refDeviceModel", RELATIONSHIP, "model of the device"),
    ),
    _spec(
        "Alert",
        "An alert raised by a detector or an operator",
        _enum(
            "category",
            "domain of the alert",
            "traffic",
            "naturalDisaster",
            "weather",
            "environment",
            "health",
            "security",
            "agriculture",
            "water",
            "lighting",
            "energy",
            "air",
            "crowd",
        ),
        _meta("subCategory", TEXT, "specific kind of alert"),
        _enum("severity", "severity", "informational", "low", "medium", "high", "critical"),
        _enum("status", "lifecycle state", "open", "acknowledged", "resolved"),
        AttributeSpec("validFrom", DATETIME, "start of validity", category="state"),
        AttributeSpec("validTo", DATETIME, "end of validity", category="state"),
        AttributeSpec("dateIssued", DATETIME, "when it was raised", category="state"),
        _meta("alertSource", RELATIONSHIP, "entity the alert is about"),
        _meta("candidateArea", JSON, "where the cause may be", extension=True),
        _num("confidence", "detector confidence", None, 0.0, 1.0, extension=True),
    ),
)


class Catalogue:
    """A registry of entity types; domains extend it through their manifests."""

    def __init__(self, types: Iterable[EntityTypeSpec] = SMART_DATA_MODELS) -> None:
        self._types: dict[str, EntityTypeSpec] = {}
        for spec in types:
            self.add(spec)

    def add(self, spec: EntityTypeSpec) -> None:
        """Declare a type; declaring it again merges the attributes."""
        if spec.type in self._types:
            old = self._types[spec.type]
            spec = replace(old, attributes={**old.attributes, **spec.attributes})
        self._types[spec.type] = spec

    def get(self, type_: str) -> EntityTypeSpec | None:
        return self._types.get(type_)

    def types(self) -> list[EntityTypeSpec]:
        return [self._types[k] for k in sorted(self._types)]

    def __contains__(self, type_: object) -> bool:
        return type_ in self._types
