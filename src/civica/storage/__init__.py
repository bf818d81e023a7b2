"""Store backends: ``DuckDBStore`` (embedded default, one file) and ``MemoryStore`` (tests)."""

from __future__ import annotations

from civica.core.store import Store
from civica.storage.embedded import DuckDBStore
from civica.storage.memory import MemoryStore

__all__ = ["DuckDBStore", "MemoryStore", "open_store"]


def open_store(url: str) -> Store:
    """Open the database a URL or path names.

    ``memory://`` → MemoryStore; ``duckdb:///path/file.duckdb`` or a plain path → DuckDBStore.
    """
    if url == "memory://":
        return MemoryStore()
    if url.startswith(("postgresql://", "postgres://")):
        raise ValueError("the PostgreSQL backend is not available yet; use a DuckDB file path")
    if url.startswith("duckdb://"):
        url = url[len("duckdb://") :] or ":memory:"
    return DuckDBStore(url)
