"""What the routers share: the store, the ingest path, contexts, keys and settings."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request

from civica.api.auth import KeyChecker
from civica.api.contexts import ContextResolver
from civica.core.bus import EntityChanged
from civica.core.store import Store
from civica.ingest.pipeline import Ingest


@dataclass(frozen=True)
class Settings:
    max_body_bytes: int = 16 * 1024 * 1024
    default_limit: int = 20
    max_limit: int = 10_000
    max_batch: int = 10_000
    context_timeout: float = 5.0


@dataclass
class Services:
    store: Store
    ingest: Ingest
    resolver: ContextResolver
    keys: KeyChecker
    settings: Settings
    tenants: set[str] = field(default_factory=set)
    extras: dict[str, Any] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.tenants.update(self.store.tenants())
        self.ingest.bus.subscribe(self._track_tenant)

    def _track_tenant(self, event: object) -> None:
        if isinstance(event, EntityChanged) and event.tenant not in self.tenants:
            with self._lock:
                self.tenants.add(event.tenant)


def services(request: Request) -> Services:
    found: Services = request.app.state.services
    return found
