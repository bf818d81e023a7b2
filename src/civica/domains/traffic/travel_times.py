"""Travel times on road segments from hashed sightings, published only as k-anonymous aggregates.

A segment runs from detector A to detector B. A token seen at A and later at B, within the
segment's plausible maximum, is one travel time. Travel times are grouped per segment and
interval (5 minutes by default); an interval is published as a ``TrafficFlowObserved`` for the
segment (``averageTravelTime``, ``medianTravelTime``, ``travelTime85``, ``travelTimeSamples``)
once it has closed, and only if at least ``k`` vehicles made it up; smaller groups are dropped.

Sightings stay in memory for at most 24 hours (pruned on every add and on demand). Tokens,
hashes and vehicle ids never leave this module: ingest only ever receives the aggregates.
"""

from __future__ import annotations

import heapq
import math
import re
import statistics
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from civica.core.clock import Clock, SystemClock
from civica.core.timefmt import format_time
from civica.domains.traffic.sightings import Sighting, SightingError, utc_time
from civica.ingest.pipeline import BatchOutcome, Ingest

TRAFFIC_FLOW = "TrafficFlowObserved"
RETENTION = timedelta(hours=24)
DEFAULT_INTERVAL = timedelta(minutes=5)
DEFAULT_K = 5
_SEGMENT_ID = re.compile(r"^[A-Za-z0-9_.\-]{1,100}$")


class TravelTimeError(ValueError):
    """Bad configuration or a sighting the matcher cannot take."""


@dataclass(frozen=True)
class Segment:
    """A road segment between two detectors, with the longest plausible travel time."""

    id: str
    origin: str
    destination: str
    max_travel_s: float

    def __post_init__(self) -> None:
        if not _SEGMENT_ID.match(self.id):
            raise TravelTimeError(f"segment id {self.id!r}: use letters, digits, '.', '_', '-'")
        if not self.origin or not self.destination or self.origin == self.destination:
            raise TravelTimeError(f"segment {self.id}: needs two different detectors")
        if not (0 < self.max_travel_s <= RETENTION.total_seconds()):
            raise TravelTimeError(
                f"segment {self.id}: max_travel_s must be in (0, 86400], got {self.max_travel_s}"
            )

    @property
    def entity_id(self) -> str:
        return f"urn:ngsi-ld:{TRAFFIC_FLOW}:travel-{self.id}"


@dataclass(frozen=True)
class TravelTimeAggregate:
    """One segment over one interval: what may be published (no tokens)."""

    segment: Segment
    start: datetime
    end: datetime
    count: int
    mean_s: float
    median_s: float
    p85_s: float

    def entity(self) -> dict[str, Any]:
        """The NGSI-LD fragment that carries this aggregate."""
        stamp = format_time(self.end)

        def seconds(value: float) -> dict[str, Any]:
            return {
                "type": "Property",
                "value": round(value, 3),
                "unitCode": "SEC",
                "observedAt": stamp,
            }

        return {
            "id": self.segment.entity_id,
            "type": TRAFFIC_FLOW,
            "name": {"type": "Property", "value": f"travel time {self.segment.id}"},
            "dateObservedFrom": {"type": "Property", "value": format_time(self.start)},
            "dateObservedTo": {"type": "Property", "value": stamp},
            "averageTravelTime": seconds(self.mean_s),
            "medianTravelTime": seconds(self.median_s),
            "travelTime85": seconds(self.p85_s),
            "travelTimeSamples": {
                "type": "Property",
                "value": float(self.count),
                "observedAt": stamp,
            },
        }


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (``q`` in [0, 1]) of a non-empty sequence."""
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


@dataclass
class _Bucket:
    """Travel times of one segment and interval; tokens only to count distinct vehicles."""

    travel_s: list[float] = field(default_factory=list)
    tokens: set[str] = field(default_factory=set)


class TravelTimeMatcher:
    """Matches tokens from origin to destination detectors and aggregates per interval."""

    def __init__(
        self,
        segments: Iterable[Segment],
        *,
        interval: timedelta = DEFAULT_INTERVAL,
        k: int = DEFAULT_K,
        clock: Clock | None = None,
        retention: timedelta = RETENTION,
    ) -> None:
        self.segments = tuple(segments)
        if not self.segments:
            raise TravelTimeError("configure at least one segment")
        ids = [s.id for s in self.segments]
        if len(set(ids)) != len(ids):
            raise TravelTimeError("segment ids must be unique")
        if not timedelta(seconds=1) <= interval <= timedelta(hours=24):
            raise TravelTimeError("interval must be between 1 s and 24 h")
        if k < 2:
            raise TravelTimeError(f"k must be at least 2, got {k}")
        if not timedelta(0) < retention <= RETENTION:
            raise TravelTimeError("sightings may be kept at most 24 h")
        self.interval = interval
        self.k = k
        self.clock = clock or SystemClock()
        self.retention = retention
        self.detectors = frozenset(d for s in self.segments for d in (s.origin, s.destination))
        self._from: dict[str, list[Segment]] = {}
        for seg in self.segments:
            self._from.setdefault(seg.destination, []).append(seg)
        # detector -> token -> last time seen there; a heap of (time, detector, token) to prune.
        self._seen: dict[str, dict[str, datetime]] = {d: {} for d in self.detectors}
        self._order: list[tuple[datetime, str, str]] = []
        self._buckets: dict[tuple[str, datetime], _Bucket] = {}
        self.suppressed = 0  # intervals dropped for having fewer than k vehicles
        self.late = 0  # travel times that arrived after their interval was closed
        self.published = 0  # aggregates handed to ingest by publish (one id, many intervals)
        self._closed_until: datetime | None = None
        self._lock = threading.RLock()  # detectors may feed from several threads

    # ---- sightings -------------------------------------------------------------------
    def __len__(self) -> int:
        """How many sightings are held."""
        with self._lock:
            return sum(len(seen) for seen in self._seen.values())

    def _now(self) -> datetime:
        return utc_time(self.clock.now(), "clock time")

    def prune(self, now: datetime | None = None) -> int:
        """Forget sightings older than the retention; return how many went."""
        with self._lock:
            return self._prune(now)

    def _prune(self, now: datetime | None) -> int:
        cutoff = (utc_time(now) if now is not None else self._now()) - self.retention
        gone = 0
        while self._order and self._order[0][0] < cutoff:
            at, detector, token = heapq.heappop(self._order)
            seen = self._seen[detector]
            if seen.get(token) == at:
                del seen[token]
                gone += 1
        for key in [key for key in self._buckets if key[1] + self.interval < cutoff]:
            del self._buckets[key]
        return gone

    def add(self, sighting: Sighting) -> list[float]:
        """Take one sighting; return the travel times it completed (seconds)."""
        with self._lock:
            return self._add(sighting)

    def _add(self, sighting: Sighting) -> list[float]:
        if not isinstance(sighting, Sighting):
            raise TravelTimeError(f"expected a Sighting, got {type(sighting).__name__}")
        if sighting.detector not in self.detectors:
            raise TravelTimeError(
                f"unknown detector {sighting.detector!r}; configured: "
                + ", ".join(sorted(self.detectors))
            )
        at = utc_time(sighting.at)
        self._prune(None)
        if at < self._now() - self.retention:
            return []  # already past the retention: never held
        done: list[float] = []
        for seg in self._from.get(sighting.detector, ()):
            start = self._seen[seg.origin].get(sighting.token)
            if start is None:
                continue
            travel = (at - start).total_seconds()
            if 0 < travel <= seg.max_travel_s:
                del self._seen[seg.origin][sighting.token]  # one passage, one travel time
                bucket = self._bucket(seg, at)
                if bucket is None:
                    self.late += 1  # its interval was already published or suppressed
                    continue
                bucket.travel_s.append(travel)
                bucket.tokens.add(sighting.token)
                done.append(travel)
        self._seen[sighting.detector][sighting.token] = at
        heapq.heappush(self._order, (at, sighting.detector, sighting.token))
        return done

    def add_all(self, sightings: Iterable[Sighting]) -> int:
        """Take many sightings; return how many travel times they completed."""
        return sum(len(self.add(s)) for s in sightings)

    def _bucket(self, seg: Segment, at: datetime) -> _Bucket | None:
        epoch = datetime(1970, 1, 1, tzinfo=UTC)
        start = epoch + ((at - epoch) // self.interval) * self.interval
        if self._closed_until is not None and start + self.interval <= self._closed_until:
            return None
        return self._buckets.setdefault((seg.id, start), _Bucket())

    # ---- aggregates --------------------------------------------------------------------
    def close(self, now: datetime | None = None) -> list[TravelTimeAggregate]:
        """Aggregates of every interval that has ended, at least ``k`` vehicles each.

        Closed intervals are removed whether published or suppressed; a travel time that
        arrives later for a closed interval is dropped (counted in ``late``), so an interval
        is never published twice and never in two halves smaller than k.
        """
        with self._lock:
            return self._close(now)

    def _close(self, now: datetime | None) -> list[TravelTimeAggregate]:
        until = utc_time(now) if now is not None else self._now()
        if self._closed_until is None or until > self._closed_until:
            self._closed_until = until
        by_id = {s.id: s for s in self.segments}
        out: list[TravelTimeAggregate] = []
        for key in sorted(self._buckets, key=lambda k: (k[1], k[0])):
            seg_id, start = key
            end = start + self.interval
            if end > until:
                continue
            bucket = self._buckets.pop(key)
            values = bucket.travel_s
            if len(bucket.tokens) < self.k:  # k distinct vehicles, not k passages
                self.suppressed += 1
                continue
            out.append(
                TravelTimeAggregate(
                    by_id[seg_id],
                    start,
                    end,
                    len(values),
                    statistics.fmean(values),
                    statistics.median(values),
                    percentile(values, 0.85),
                )
            )
        return out

    def publish(
        self, ingest: Ingest, tenant: str = "", now: datetime | None = None
    ) -> BatchOutcome:
        """Write the closed, k-anonymous aggregates through ingest (the only write path)."""
        docs = [agg.entity() for agg in self.close(now)]
        if not docs:
            return BatchOutcome()
        outcome = ingest.upsert(tenant, docs)
        self.published += len(docs) - len(outcome.errors)
        return outcome


__all__ = [
    "Segment",
    "SightingError",
    "TravelTimeAggregate",
    "TravelTimeError",
    "TravelTimeMatcher",
    "percentile",
]
