"""Vehicle sightings at detectors, reduced to keyed hashes before anything else sees them.

A detector (ANPR camera, Bluetooth/Wi-Fi scanner, induction loop in the twin) reports a
vehicle identifier. ``SightingHasher`` turns it at once into a token: HMAC-SHA256 under a
random 32-byte key that lives only in memory and only for one UTC day. At the first sighting
of a new UTC day the key is replaced and the old one dropped, so tokens of two days cannot be
linked, not even by whoever runs the platform. Keys are never written, logged or returned.

A ``Sighting`` holds the detector, the time and the token: never the clear identifier.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from civica.core.clock import Clock, SystemClock

KEY_BYTES = 32
TOKEN_BYTES = 16  # 128 bits of the HMAC: collisions are negligible at city scale
MAX_CLOCK_SKEW = timedelta(minutes=5)  # a later sighting would rotate the key too early


class SightingError(ValueError):
    """A sighting that cannot be taken: naive time, empty id, a day whose key is gone."""


def utc_time(at: datetime, what: str = "sighting time") -> datetime:
    """``at`` in UTC; a naive datetime is refused (its day would be a guess)."""
    if at.tzinfo is None or at.utcoffset() is None:
        raise SightingError(f"{what} {at.isoformat()} has no time zone; give an aware datetime")
    return at.astimezone(UTC)


@dataclass(frozen=True, slots=True)
class Sighting:
    """One vehicle passing one detector: who it was is only the day's token."""

    detector: str
    at: datetime
    token: str

    def __post_init__(self) -> None:
        if not self.detector:
            raise SightingError("a sighting needs a detector id")
        object.__setattr__(self, "at", utc_time(self.at))


class SightingHasher:
    """Keyed hashing of vehicle ids with one in-memory key per UTC day."""

    def __init__(self, clock: Clock | None = None, token_bytes: int = TOKEN_BYTES) -> None:
        if not 8 <= token_bytes <= 32:
            raise ValueError(f"token_bytes must be 8..32, got {token_bytes}")
        self.clock = clock or SystemClock()
        self.token_bytes = token_bytes
        self._day: date | None = None
        self._key: bytes | None = None
        self._floor: date | None = None  # days before it have had their key discarded

    def __repr__(self) -> str:  # never show the key
        return f"SightingHasher(day={self._day}, token_bytes={self.token_bytes})"

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("a SightingHasher holds a secret key and cannot be pickled")

    def key_days(self) -> list[date]:
        """The UTC days a key is held for: at most one, today's."""
        self._expire()
        return [] if self._day is None else [self._day]

    def _expire(self) -> None:
        """Drop the key once the clock has passed midnight UTC, sightings or not."""
        today = utc_time(self.clock.now(), "clock time").date()
        if self._day is not None and today > self._day:
            self._key = None
            self._day = None
        if self._floor is None or today > self._floor:
            self._floor = today

    def _key_for(self, day: date) -> bytes:
        self._expire()
        if self._floor is not None and day < self._floor:
            raise SightingError(
                f"the key for {day.isoformat()} has been discarded; a sighting from a past "
                "UTC day can no longer be hashed"
            )
        if self._day is None or day > self._day:
            # Midnight passed: drop the old key, draw a new one. Nothing else refers to it.
            self._key = secrets.token_bytes(KEY_BYTES)
            self._day = day
            self._floor = day
        assert self._key is not None
        return self._key

    def token(self, vehicle_id: str, at: datetime) -> str:
        """The token of ``vehicle_id`` for the UTC day of ``at`` (hex, ``token_bytes`` long)."""
        if not isinstance(vehicle_id, str) or not vehicle_id:
            raise SightingError("a vehicle id must be a non-empty string")
        when = utc_time(at)
        if when - utc_time(self.clock.now(), "clock time") > MAX_CLOCK_SKEW:
            raise SightingError(f"sighting time {when.isoformat()} is ahead of the clock")
        key = self._key_for(when.date())
        digest = hmac.new(key, vehicle_id.encode("utf-8"), hashlib.sha256).digest()
        return digest[: self.token_bytes].hex()

    def sighting(self, detector: str, vehicle_id: str, at: datetime | None = None) -> Sighting:
        """Hash ``vehicle_id`` seen at ``detector`` (at ``at``, default: the clock's now)."""
        when = utc_time(at if at is not None else self.clock.now())
        return Sighting(detector, when, self.token(vehicle_id, when))
