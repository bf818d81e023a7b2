"""The traffic domain's declaration: types it will produce, catalogue additions, its engine."""

from __future__ import annotations

from civica.domains.manifest import Manifest
from civica.privacy.catalogue import NUMBER, AttributeSpec, EntityTypeSpec


def _travel(name: str, purpose: str, unit: str | None, hi: float) -> AttributeSpec:
    """A segment travel-time aggregate: derived from people, only ever k-anonymous."""
    return AttributeSpec(
        name,
        NUMBER,
        f"{purpose} (aggregate of at least k vehicles per interval; no vehicle data kept)",
        unit=unit,
        minimum=0.0,
        maximum=hi,
        retention_days=90,
        person_derived=True,
        extension=True,
    )


MANIFEST = Manifest(
    domain="traffic",
    description="Road traffic: SUMO twin and adaptive signal control (fixed, Webster, "
    "max-pressure, queue-pressure) with minimum green, clearance and maximum red; private "
    "travel times on segments (daily-keyed hashes, k-anonymous aggregates)",
    engine="sumo",
    entity_types=("TrafficFlowObserved",),
    catalogue=(
        EntityTypeSpec(
            "TrafficFlowObserved",
            "",
            {
                "averageTravelTime": _travel(
                    "averageTravelTime", "mean travel time over the segment", "SEC", 86_400.0
                ),
                "medianTravelTime": _travel(
                    "medianTravelTime", "median travel time over the segment", "SEC", 86_400.0
                ),
                "travelTime85": _travel(
                    "travelTime85", "85th percentile travel time over the segment", "SEC", 86_400.0
                ),
                "travelTimeSamples": _travel(
                    "travelTimeSamples", "vehicles the travel times are computed from", None, 1.0e6
                ),
            },
        ),
    ),
)
