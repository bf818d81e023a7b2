"""Scoring quality events against a scenario's contaminant injections.

An injection counts as detected when an event (at any station) is raised between its start and
its end plus a grace period (default 24 h: the plume has to travel from the injection node to a
station, and the scenario generator calls an injection observable when a station sees it within
a day of its end). Injections whose plume never reaches a station at a detectable concentration are
"unobservable": they are counted in the all-injections rate and left out of the observable-only
rate, never hidden. Events matching no injection are false alarms, per week of scenario.

>>> from datetime import datetime, UTC
>>> t = lambda h: datetime(2026, 1, 3, h, tzinfo=UTC)
>>> injection = Injection("J1", t(2), t(4), "arsenic", 1.0)
>>> score = score_events([("J9", t(5)), ("J9", t(20))], [injection], days=7)
>>> score.detected, score.false_alarms, score.median_time_to_detect_h
(1, 1, 3.0)
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from civica.core.problems import bad_request
from civica.core.timefmt import parse_time

GRACE_H = 24.0


@dataclass(frozen=True)
class Injection:
    """A contaminant injection from truth.json; ``observable`` is None when the truth does not
    say whether its plume reaches a station."""

    node: str
    start: datetime
    end: datetime
    contaminant: str
    mass_rate: float
    observable: bool | None = None


def injections_from_truth(truth: Mapping[str, Any]) -> list[Injection]:
    """The injections listed in a truth.json document."""
    out = []
    for item in truth.get("injections", []):
        observable = item.get("observable")
        out.append(
            Injection(
                node=str(item["node"]),
                start=parse_time(item["start"], "injection start"),
                end=parse_time(item["end"], "injection end"),
                contaminant=str(item.get("contaminant", "")),
                mass_rate=float(item.get("mass_rate", 0.0)),
                observable=None if observable is None else bool(observable),
            )
        )
    return out


def events_from_json(items: object) -> list[tuple[str, datetime]]:
    """``(node, detected_at)`` of every event in an events.json list."""
    if not isinstance(items, list):
        raise bad_request("events must be a JSON list of {node, detected_at, ...} objects")
    out = []
    for n, item in enumerate(items):
        if not isinstance(item, dict) or "node" not in item or "detected_at" not in item:
            raise bad_request(f"event {n}: expected an object with 'node' and 'detected_at'")
        out.append((str(item["node"]), parse_time(item["detected_at"], f"event {n} detected_at")))
    return out


@dataclass(frozen=True)
class QualityScore:
    """Detection figures for one scenario (or pooled over many)."""

    injections: int
    observable: int  # injections whose plume reaches a station (unknown counts as observable)
    detected: int
    detected_observable: int
    delays_h: tuple[float, ...]  # time to detect of each detected injection, h
    false_alarms: int
    weeks: float  # scenario length, weeks
    grace_h: float
    matches: tuple[dict[str, Any], ...] = ()

    @property
    def unobservable(self) -> int:
        return self.injections - self.observable

    @property
    def detection_rate(self) -> float | None:
        return self.detected / self.injections if self.injections else None

    @property
    def detection_rate_observable(self) -> float | None:
        return self.detected_observable / self.observable if self.observable else None

    @property
    def median_time_to_detect_h(self) -> float | None:
        return statistics.median(self.delays_h) if self.delays_h else None

    @property
    def false_alarms_per_week(self) -> float | None:
        return self.false_alarms / self.weeks if self.weeks > 0 else None

    def __add__(self, other: QualityScore) -> QualityScore:
        """Pool two scores (counts and weeks add up; the grace period must agree)."""
        return QualityScore(
            self.injections + other.injections,
            self.observable + other.observable,
            self.detected + other.detected,
            self.detected_observable + other.detected_observable,
            self.delays_h + other.delays_h,
            self.false_alarms + other.false_alarms,
            self.weeks + other.weeks,
            self.grace_h,
            self.matches + other.matches,
        )

    def to_json(self, *, details: bool = True) -> dict[str, Any]:
        def rounded(value: float | None) -> float | None:
            return None if value is None else round(value, 4)

        body: dict[str, Any] = {
            "injections": self.injections,
            "observable": self.observable,
            "unobservable": self.unobservable,
            "detected": self.detected,
            "detected_observable": self.detected_observable,
            "detection_rate": rounded(self.detection_rate),
            "detection_rate_observable": rounded(self.detection_rate_observable),
            "median_time_to_detect_h": rounded(self.median_time_to_detect_h),
            "false_alarms": self.false_alarms,
            "weeks": round(self.weeks, 4),
            "false_alarms_per_week": rounded(self.false_alarms_per_week),
            "grace_h": self.grace_h,
        }
        if details:
            body["matches"] = list(self.matches)
        return body


def score_events(
    events: Sequence[tuple[str, datetime]],
    injections: Sequence[Injection],
    *,
    days: float,
    grace_h: float = GRACE_H,
) -> QualityScore:
    """Score ``(node, detected_at)`` events against injections over a ``days``-long scenario."""
    grace = timedelta(hours=grace_h)
    matched_events: set[int] = set()
    delays: list[float] = []
    matches: list[dict[str, Any]] = []
    detected = detected_observable = observable = 0
    for injection in injections:
        hits = [
            i for i, (_, at) in enumerate(events) if injection.start <= at <= injection.end + grace
        ]
        matched_events.update(hits)
        seen = injection.observable is not False
        observable += seen
        first = min(hits, key=lambda i: events[i][1]) if hits else None
        delay = None
        if first is not None:
            delay = (events[first][1] - injection.start).total_seconds() / 3600.0
            delays.append(delay)
            detected += 1
            detected_observable += seen
        matches.append(
            {
                "node": injection.node,
                "start": injection.start.isoformat(),
                "observable": injection.observable,
                "detected_by": None if first is None else events[first][0],
                "time_to_detect_h": None if delay is None else round(delay, 3),
            }
        )
    return QualityScore(
        injections=len(injections),
        observable=observable,
        detected=detected,
        detected_observable=detected_observable,
        delays_h=tuple(delays),
        false_alarms=len(events) - len(matched_events),
        weeks=days / 7.0,
        grace_h=grace_h,
        matches=tuple(matches),
    )


def score_scenario(
    directory: str | Path, events: object, *, grace_h: float = GRACE_H
) -> QualityScore:
    """Score events.json items against the truth.json of a scenario directory."""
    from civica.domains.water.files import load_truth

    truth = load_truth(directory)
    return score_events(
        events_from_json(events),
        injections_from_truth(truth),
        days=float(truth["days"]),
        grace_h=grace_h,
    )
