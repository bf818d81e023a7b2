"""What the routers share: the store, the ingest path, contexts, keys and settings."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request

from civica.api.auth import KeyChecker
from civica.api.contexts import ContextResolver
from civica.core.bus import EntityChanged
from civica.core.store import Store
from civica.ingest.pipeline import Ingest

log = logging.getLogger(__name__)


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
    # Run once when the server stops (worker pools, consumers, the store), newest first.
    on_shutdown: list[Callable[[], None]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.tenants.update(self.store.tenants())
        self.ingest.bus.subscribe(self._track_tenant)

    def shut_down(self) -> None:
        """Run and forget the shutdown hooks (safe to call twice)."""
        with self._lock:
            hooks, self.on_shutdown = self.on_shutdown, []
        for hook in reversed(hooks):
            try:
                hook()
            except Exception:  # one failing hook must not keep the others from running
                log.exception("shutdown hook %r failed", hook)

    def _track_tenant(self, event: object) -> None:
        if isinstance(event, EntityChanged) and event.tenant not in self.tenants:
            with self._lock:
                self.tenants.add(event.tenant)


def services(request: Request) -> Services:
    found: Services = request.app.state.services
    return found
