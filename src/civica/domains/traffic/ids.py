"""NGSI-LD ids of the traffic twin's entities (no SUMO here, so watches can use them too)."""

from __future__ import annotations

from urllib.parse import quote

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
