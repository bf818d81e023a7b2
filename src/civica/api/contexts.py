"""User @contexts: fetched once by URL, cached, and resolved into an ``LdContext``.

The core context is built in and never fetched. A context that cannot be fetched or parsed
is an ``LdContextNotAvailable`` (503) error, as the spec says.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx
import orjson

from civica.core.clock import SystemClock
from civica.core.entity import check_nesting
from civica.core.ldcontext import CORE, CORE_CONTEXT_URL, LdContext, is_core_context_url
from civica.core.problems import LD_CONTEXT_NOT_AVAILABLE, Problem, bad_request

MAX_CONTEXT_BYTES = 1_000_000
MAX_NESTING = 5


@dataclass
class CachedContext:
    url: str
    document: dict[str, Any]
    kind: str  # "Cached" (fetched) | "Hosted" (posted to us)
    created_at: datetime
    hits: int = 0


class ContextResolver:
    """Fetches, caches and combines @context documents."""

    def __init__(self, timeout: float = 5.0) -> None:
        self.timeout = timeout
        self._cache: dict[str, CachedContext] = {}
        self._resolved: dict[str, LdContext] = {}
        self._lock = threading.Lock()

    def resolve(self, spec: Any) -> LdContext:
        """An ``LdContext`` for a @context value (URL, object, or list); None means core."""
        if spec is None:
            return CORE
        check_nesting(spec, "@context")
        key = orjson.dumps(spec, option=orjson.OPT_SORT_KEYS).decode()
        with self._lock:
            hit = self._resolved.get(key)
        if hit is not None:
            return hit
        docs: list[Mapping[str, Any]] = []
        sources: list[str] = []
        self._collect(spec, docs, sources, 0)
        ctx = LdContext.from_documents(docs, tuple(sources)) if docs else CORE
        with self._lock:
            if len(self._resolved) > 1000:
                self._resolved.clear()
            self._resolved[key] = ctx
        return ctx

    def _collect(
        self, spec: Any, docs: list[Mapping[str, Any]], sources: list[str], depth: int
    ) -> None:
        if depth > MAX_NESTING:
            raise Problem(LD_CONTEXT_NOT_AVAILABLE, "@context nests too deeply")
        if isinstance(spec, str):
            if is_core_context_url(spec):
                return
            sources.append(spec)
            inner = self.fetch(spec).document.get("@context")
            self._collect(inner, docs, sources, depth + 1)
        elif isinstance(spec, list):
            for item in spec:
                self._collect(item, docs, sources, depth + 1)
        elif isinstance(spec, dict):
            docs.append(spec)
        elif spec is not None:
            raise bad_request("@context must be a URL, an object or a list of them")

    def fetch(self, url: str) -> CachedContext:
        """The cached document at ``url``, fetched on first use."""
        with self._lock:
            cached = self._cache.get(url)
            if cached is not None:
                cached.hits += 1
                return cached
        if not url.startswith(("http://", "https://")):
            raise Problem(LD_CONTEXT_NOT_AVAILABLE, f"@context {url!r} is not an http(s) URL")
        try:
            with httpx.Client(timeout=self.timeout, follow_redirects=True) as client:
                resp = client.get(url, headers={"Accept": "application/ld+json, application/json"})
            if resp.status_code != 200:
                raise Problem(
                    LD_CONTEXT_NOT_AVAILABLE, f"@context {url} answered HTTP {resp.status_code}"
                )
            if len(resp.content) > MAX_CONTEXT_BYTES:
                raise Problem(LD_CONTEXT_NOT_AVAILABLE, f"@context {url} is too large")
            document = orjson.loads(resp.content)
        except httpx.HTTPError as err:
            raise Problem(
                LD_CONTEXT_NOT_AVAILABLE, f"@context {url} could not be fetched: {err}"
            ) from err
        except orjson.JSONDecodeError as err:
            raise Problem(LD_CONTEXT_NOT_AVAILABLE, f"@context {url} is not JSON") from err
        if not isinstance(document, dict) or "@context" not in document:
            raise Problem(LD_CONTEXT_NOT_AVAILABLE, f"{url} holds no @context")
        return self.store(url, document, "Cached")

    def store(self, url: str, document: dict[str, Any], kind: str) -> CachedContext:
        entry = CachedContext(url, document, kind, SystemClock().now())
        with self._lock:
            self._cache[url] = entry
            self._resolved.clear()
        return entry

    def entries(self) -> list[CachedContext]:
        with self._lock:
            return sorted(self._cache.values(), key=lambda c: c.url)

    def get(self, url: str) -> CachedContext | None:
        with self._lock:
            return self._cache.get(url)

    def delete(self, url: str) -> bool:
        with self._lock:
            self._resolved.clear()
            return self._cache.pop(url, None) is not None


def context_url_for_output(spec: Any) -> Any:
    """The @context value to echo in a JSON-LD response."""
    return spec if spec is not None else CORE_CONTEXT_URL
