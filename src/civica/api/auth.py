"""API keys: ``Authorization: Bearer civ_<key id>_<secret>``, hashed at rest, with roles.

Roles: ``device`` writes readings; ``operator`` reads, writes and subscribes;
``admin`` also deletes and manages contexts and keys. Secrets are 256-bit random strings,
so one SHA-256 of the secret is a sufficient hash (no password stretching needed).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time

from civica.core.clock import SystemClock
from civica.core.problems import FORBIDDEN, UNAUTHORIZED, Problem
from civica.core.store import ApiKeyRecord, Store

ROLES = ("device", "operator", "admin")
_PERMISSIONS: dict[str, frozenset[str]] = {
    "device": frozenset({"write"}),
    "operator": frozenset({"read", "write", "subscribe"}),
    "admin": frozenset({"read", "write", "subscribe", "delete", "manage"}),
}
_CACHE_SECONDS = 5.0  # a revoked key stops working within this time


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create_key(store: Store, role: str, label: str = "") -> str:
    """Create a key, store its hash, and return the clear key (shown once, never stored)."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    key_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    store.put_api_key(ApiKeyRecord(key_id, _hash(secret), role, label, SystemClock().now()))
    return f"civ_{key_id}_{secret}"


def revoke_key(store: Store, key_id: str) -> bool:
    record = store.api_key(key_id)
    if record is None:
        return False
    store.put_api_key(
        ApiKeyRecord(
            record.key_id, record.key_hash, record.role, record.label, record.created_at, True
        )
    )
    return True


class KeyChecker:
    """Resolves bearer tokens to roles, with a short cache so the hot path stays cheap."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._cache: dict[str, tuple[float, str | None]] = {}
        self._lock = threading.Lock()

    def role_of(self, authorization: str | None) -> str:
        if not authorization or not authorization.startswith("Bearer "):
            raise Problem(UNAUTHORIZED, "send an API key as 'Authorization: Bearer <key>'")
        token = authorization[7:].strip()
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(token)
        if hit is not None and now - hit[0] < _CACHE_SECONDS:
            role = hit[1]
        else:
            role = self._lookup(token)
            with self._lock:
                if len(self._cache) > 10_000:
                    self._cache.clear()
                self._cache[token] = (now, role)
        if role is None:
            raise Problem(UNAUTHORIZED, "unknown or revoked API key")
        return role

    def _lookup(self, token: str) -> str | None:
        parts = token.split("_", 2)
        if len(parts) != 3 or parts[0] != "civ":
            return None
        record = self.store.api_key(parts[1])
        if record is None or record.revoked:
            return None
        if not hmac.compare_digest(record.key_hash, _hash(parts[2])):
            return None
        return record.role

    def require(self, authorization: str | None, permission: str) -> str:
        role = self.role_of(authorization)
        if permission not in _PERMISSIONS[role]:
            raise Problem(FORBIDDEN, f"role {role!r} may not {permission}")
        return role
