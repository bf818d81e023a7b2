"""The water domain's declaration: types, catalogue additions, detectors."""

from __future__ import annotations

from civica.domains.manifest import DetectorSpec, Manifest
from civica.privacy.catalogue import NUMBER, TEXT, AttributeSpec, EntityTypeSpec

LEAK_SUSPECTED = "leakSuspected"
QUALITY_EVENT = "waterQualityEvent"

_ELEMENT = AttributeSpec(
    "networkElement",
    TEXT,
    "the node or link id of the hydraulic model (EPANET .inp) the sensor sits on",
    category="metadata",
    retention_days=3650,
    extension=True,
)

MANIFEST = Manifest(
    domain="water",
    description="Drinking-water networks: hydraulic twin, leak detection and localisation, "
    "water-quality events",
    engine="wntr",
    entity_types=("WaterObserved", "WaterQualityObserved", "Alert"),
    catalogue=(
        EntityTypeSpec("WaterObserved", "", {"networkElement": _ELEMENT}),
        EntityTypeSpec("WaterQualityObserved", "", {"networkElement": _ELEMENT}),
        EntityTypeSpec(
            "Alert",
            "",
            {
                "estimatedFlow": AttributeSpec(
                    "estimatedFlow",
                    NUMBER,
                    "estimated leak outflow",
                    category="state",
                    unit="MQS",
                    minimum=0.0,
                    maximum=100.0,
                    extension=True,
                )
            },
        ),
    ),
    detectors=(
        DetectorSpec(
            "leak-watch",
            ("WaterObserved",),
            LEAK_SUSPECTED,
            "civica.domains.water.detectors:LeakWatch",
            "pressure/flow residual change points, localised on the hydraulic model",
        ),
        DetectorSpec(
            "quality-watch",
            ("WaterQualityObserved",),
            QUALITY_EVENT,
            "civica.domains.water.detectors:QualityWatch",
            "CANARY-style event probability from chlorine, conductivity and turbidity",
        ),
    ),
    alert_subcategories=(LEAK_SUSPECTED, QUALITY_EVENT),
)
