"""Privacy by construction: the data catalogue, the forbidden kinds and the ingest gate."""

from __future__ import annotations

from civica.privacy.catalogue import AttributeSpec, Catalogue, EntityTypeSpec
from civica.privacy.forbidden import forbidden_name, forbidden_value
from civica.privacy.gate import PrivacyGate

__all__ = [
    "AttributeSpec",
    "Catalogue",
    "EntityTypeSpec",
    "PrivacyGate",
    "forbidden_name",
    "forbidden_value",
]
