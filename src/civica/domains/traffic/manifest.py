"""The traffic domain's declaration: types it will produce, its engine."""

from __future__ import annotations

from civica.domains.manifest import Manifest

MANIFEST = Manifest(
    domain="traffic",
    description="Road traffic: SUMO twin and adaptive signal control (fixed, Webster, "
    "max-pressure, queue-pressure) with minimum green, clearance and maximum red",
    engine="sumo",
    entity_types=("TrafficFlowObserved",),
)
