"""Water sensors as NGSI-LD entities, and leak alerts as ``Alert`` entities.

A pressure, flow or level sensor is one ``WaterObserved`` entity; the quality sensors on one
node form one ``WaterQualityObserved`` station. Each carries ``networkElement``, the id of the
node or link in the utility's EPANET model, which is what lets a live detector line readings
up with the hydraulic model.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from civica.core.timefmt import format_time
from civica.domains.water.manifest import LEAK_SUSPECTED, QUALITY_EVENT

WATER_OBSERVED = "WaterObserved"
QUALITY_OBSERVED = "WaterQualityObserved"


@dataclass(frozen=True)
class Reading:
    """How one sensor kind/unit maps to an NGSI-LD attribute (values are SI as in files)."""

    entity_type: str
    attribute: str
    unit_code: str


# kind/unit as in sensors.csv -> attribute. Variants are data (STYLE 5).
READINGS: dict[tuple[str, str], Reading] = {
    ("pressure", "m"): Reading(WATER_OBSERVED, "pressure", "MTR"),
    ("flow", "m3/s"): Reading(WATER_OBSERVED, "flow", "MQS"),
    ("level", "m"): Reading(WATER_OBSERVED, "height", "MTR"),
    ("quality", "mg/L"): Reading(QUALITY_OBSERVED, "freeChlorine", "M1"),
    ("quality", "uS/cm"): Reading(QUALITY_OBSERVED, "conductivity", "G42"),
    ("quality", "NTU"): Reading(QUALITY_OBSERVED, "turbidity", "NTU"),
}
# What the store holds after the gate made units canonical (µS/cm arrive as S/m).
STORED_SCALE = {"conductivity": 1.0e4}  # stored S/m -> µS/cm


@dataclass(frozen=True)
class SensorRef:
    """One row of sensors.csv with the entity it is published as."""

    sensor_id: str
    kind: str
    element: str
    unit: str

    @property
    def reading(self) -> Reading:
        return READINGS[(self.kind, self.unit)]

    @property
    def entity_id(self) -> str:
        if self.reading.entity_type == QUALITY_OBSERVED:
            return f"urn:ngsi-ld:{QUALITY_OBSERVED}:{self.element}"
        return f"urn:ngsi-ld:{WATER_OBSERVED}:{self.sensor_id}"


def sensor_refs(rows: Iterable[Mapping[str, Any]]) -> list[SensorRef]:
    """SensorRefs from sensors.csv rows; an unknown kind/unit pair is a ValueError."""
    refs = []
    for row in rows:
        ref = SensorRef(
            str(row["sensor_id"]), str(row["kind"]), str(row["element"]), str(row["unit"])
        )
        if (ref.kind, ref.unit) not in READINGS:
            raise ValueError(
                f"sensor {ref.sensor_id}: no reading for kind {ref.kind!r} in {ref.unit!r}"
            )
        refs.append(ref)
    return refs


def station_entities(refs: Iterable[SensorRef], network: str) -> list[dict[str, Any]]:
    """The entities' static part: name and the model element, one per entity id."""
    out: dict[str, dict[str, Any]] = {}
    for ref in refs:
        out.setdefault(
            ref.entity_id,
            {
                "id": ref.entity_id,
                "type": ref.reading.entity_type,
                "name": {"type": "Property", "value": ref.sensor_id},
                "networkElement": {"type": "Property", "value": ref.element},
                "source": {"type": "Property", "value": network},
            },
        )
    return list(out.values())


def reading_entities(
    refs: Iterable[SensorRef], at: datetime, values: Mapping[str, float]
) -> list[dict[str, Any]]:
    """The NGSI-LD fragments that carry one time step of readings; NaN (a gap) is left out."""
    stamp = format_time(at)
    out: dict[str, dict[str, Any]] = {}
    for ref in refs:
        value = values.get(ref.sensor_id)
        if value is None or math.isnan(value):
            continue
        reading = ref.reading
        doc = out.setdefault(ref.entity_id, {"id": ref.entity_id, "type": reading.entity_type})
        doc[reading.attribute] = {
            "type": "Property",
            "value": float(value),
            "unitCode": reading.unit_code,
            "observedAt": stamp,
        }
    return list(out.values())


def leak_alert(
    network: str,
    pipe: str,
    detected_at: datetime,
    estimated_flow: float,
    nearby_pipes: list[str],
    radius_m: float,
    confidence: float | None = None,
) -> dict[str, Any]:
    """An ``Alert`` an operator can query: leak suspected near a pipe, with the candidate area
    and, when the detector gives it, the chance that the leak lies within it."""
    lps = estimated_flow * 1000.0
    severity = "high" if lps >= 5.0 else "medium" if lps >= 1.0 else "low"
    stamp = format_time(detected_at)
    return {
        "id": f"urn:ngsi-ld:Alert:water:{LEAK_SUSPECTED}:{network}:{pipe}:{stamp}",
        "type": "Alert",
        "category": {"type": "Property", "value": "water"},
        "subCategory": {"type": "Property", "value": LEAK_SUSPECTED},
        "severity": {"type": "Property", "value": severity},
        "status": {"type": "Property", "value": "open"},
        "dateIssued": {"type": "Property", "value": stamp},
        "description": {
            "type": "Property",
            "value": f"leak suspected near pipe {pipe} (about {lps:.1f} L/s)",
        },
        "estimatedFlow": {"type": "Property", "value": max(estimated_flow, 0.0), "unitCode": "MQS"},
        "candidateArea": {
            "type": "Property",
            "value": {
                "network": network,
                "pipe": pipe,
                "pipes": nearby_pipes,
                "radiusM": radius_m,
                **({"probability": round(confidence, 3)} if confidence is not None else {}),
            },
        },
    }


def quality_alert(
    network: str, node: str, detected_at: datetime, probability: float, parameters: list[str]
) -> dict[str, Any]:
    """An ``Alert`` for a suspected contamination event at a quality station."""
    stamp = format_time(detected_at)
    return {
        "id": f"urn:ngsi-ld:Alert:water:{QUALITY_EVENT}:{network}:{node}:{stamp}",
        "type": "Alert",
        "category": {"type": "Property", "value": "water"},
        "subCategory": {"type": "Property", "value": QUALITY_EVENT},
        "severity": {"type": "Property", "value": "high"},
        "status": {"type": "Property", "value": "open"},
        "dateIssued": {"type": "Property", "value": stamp},
        "confidence": {"type": "Property", "value": min(max(probability, 0.0), 1.0)},
        "description": {
            "type": "Property",
            "value": f"water-quality event at node {node}: {', '.join(parameters)} abnormal",
        },
        "candidateArea": {"type": "Property", "value": {"network": network, "node": node}},
    }
