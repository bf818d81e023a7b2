"""NGSI-LD ids of the traffic twin's entities (no SUMO here, so watches can use them too)."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from urllib.parse import quote

from civica.core.timefmt import format_time

TRAFFIC_FLOW = "TrafficFlowObserved"


def urn_part(text: str) -> str:
    """A SUMO id made safe inside an NGSI-LD URN (``#`` and spaces are common in edge ids)."""
    return quote(text, safe="-_.~")


def flow_id(scenario: str, detector: str) -> str:
    """The ``TrafficFlowObserved`` entity of one detector of a scenario."""
    return f"urn:ngsi-ld:{TRAFFIC_FLOW}:{urn_part(scenario)}:{urn_part(detector)}"


def segment_id(scenario: str, edge: str) -> str:
    """The road segment (SUMO edge) a detector reports on."""
    return f"urn:ngsi-ld:RoadSegment:{urn_part(scenario)}:{urn_part(edge)}"


def traffic_alert(
    sub_category: str,
    scenario: str,
    segment: str,
    segment_urn: str,
    *,
    since: datetime,
    detected_at: datetime,
    ended_at: datetime | None,
    severity: str,
    description: str,
) -> dict[str, Any]:
    """A traffic ``Alert`` on a segment: open while it lasts, resolved with ``validTo`` after."""
    started = format_time(since)
    doc: dict[str, Any] = {
        "id": f"urn:ngsi-ld:Alert:traffic:{sub_category}:{urn_part(scenario)}:"
        f"{urn_part(segment)}:{started}",
        "type": "Alert",
        "category": {"type": "Property", "value": "traffic"},
        "subCategory": {"type": "Property", "value": sub_category},
        "severity": {"type": "Property", "value": severity},
        "status": {"type": "Property", "value": "open" if ended_at is None else "resolved"},
        "validFrom": {"type": "Property", "value": started},
        "dateIssued": {"type": "Property", "value": format_time(detected_at)},
        "alertSource": {"type": "Relationship", "object": segment_urn},
        "description": {"type": "Property", "value": description},
    }
    if ended_at is not None:
        doc["validTo"] = {"type": "Property", "value": format_time(ended_at)}
    return doc
