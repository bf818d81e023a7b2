"""City services, one package each (water, traffic, ...), all with the same file names."""

from __future__ import annotations

from civica.domains.manifest import DetectorSpec, Manifest
from civica.domains.traffic.manifest import MANIFEST as TRAFFIC
from civica.domains.water.manifest import MANIFEST as WATER
from civica.privacy.catalogue import Catalogue

MANIFESTS: tuple[Manifest, ...] = (WATER, TRAFFIC)


def domain_catalogue() -> Catalogue:
    """The Smart Data Models catalogue with every domain's additions merged in."""
    catalogue = Catalogue()
    for manifest in MANIFESTS:
        for spec in manifest.catalogue:
            catalogue.add(spec)
    return catalogue


__all__ = ["MANIFESTS", "DetectorSpec", "Manifest", "domain_catalogue"]
