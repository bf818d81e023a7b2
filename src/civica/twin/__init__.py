"""The simulated city: seeds and (later) domain twins that publish through the real ingest path."""

from __future__ import annotations

from civica.twin.seed import SeedReport, seed_city

__all__ = ["SeedReport", "seed_city"]
