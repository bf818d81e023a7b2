"""What a domain declares it owns: entity types, catalogue entries, detectors, commands.

One test (tests/test_manifests.py) validates every manifest, so a domain cannot quietly add
an entity type the privacy catalogue does not know or name a detector that does not exist.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from civica.privacy.catalogue import EntityTypeSpec


@dataclass(frozen=True)
class DetectorSpec:
    """A detector the domain runs: what it reads, what it raises, where it lives."""

    name: str
    reads: tuple[str, ...]  # entity types
    raises: str  # Alert subCategory
    target: str  # "module:attribute" of the implementation
    description: str


@dataclass(frozen=True)
class Manifest:
    """A domain's declaration (Home Assistant-style manifest, typed)."""

    domain: str
    description: str
    engine: str | None  # the one external engine it wraps, e.g. "wntr"
    entity_types: tuple[str, ...]  # types it produces or consumes
    catalogue: tuple[EntityTypeSpec, ...] = ()  # additions merged into the data catalogue
    detectors: tuple[DetectorSpec, ...] = field(default_factory=tuple)
    alert_subcategories: tuple[str, ...] = ()
