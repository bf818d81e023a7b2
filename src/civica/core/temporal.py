"""Temporal history as tidy series: split store rows, parse durations, aggregate by period.

Pure functions over ``Observation`` lists ordered by entity, attribute and time (the order
``Store.query_observations`` returns). Numeric aggregations read ``value_num`` and skip
instances without one (text, booleans, JSON); counts take every instance.

>>> from datetime import UTC, datetime
>>> t0 = datetime(2026, 3, 1, 10, tzinfo=UTC)
>>> rows = [Observation("urn:a", "T", "p", t0 + k * parse_duration("PT15M"), v, None, None)
...         for k, v in enumerate([10.0, 20.0, 30.0, 40.0])]
>>> [b.value for b in aggregate(rows, ["avg"], period=parse_duration("PT30M"))["avg"]]
[15.0, 35.0]
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any, NamedTuple

import orjson

from civica.core.entity import Observation
from civica.core.problems import bad_request
from civica.core.timefmt import format_time

# NGSI-LD aggrMethods (ETSI GS CIM 009, 4.5.19). ``stddev`` is the population standard
# deviation of the numeric values in a period.
AGGREGATE_METHODS: tuple[str, ...] = (
    "totalCount",
    "distinctCount",
    "sum",
    "avg",
    "min",
    "max",
    "stddev",
    "sumsq",
)
_COUNTS = frozenset({"totalCount", "distinctCount"})

_DURATION_RE = re.compile(
    r"^P(?:(?P<weeks>\d+(?:\.\d+)?)W)?(?:(?P<days>\d+(?:\.\d+)?)D)?"
    r"(?:T(?:(?P<hours>\d+(?:\.\d+)?)H)?(?:(?P<minutes>\d+(?:\.\d+)?)M)?"
    r"(?:(?P<seconds>\d+(?:\.\d+)?)S)?)?$"
)


class Bucket(NamedTuple):
    """One aggregated value over the half-open period [start, end)."""

    value: float | int
    start: datetime
    end: datetime


def observed_value(obs: Observation) -> Any:
    """The instance's value as the client sent it (numbers come back as floats)."""
    if obs.value_num is not None:
        return obs.value_num
    return orjson.loads(obs.value_json) if obs.value_json is not None else None


def instances(rows: Sequence[Observation]) -> list[dict[str, Any]]:
    """Rows as normalized NGSI-LD Property instances, in their order."""
    # The hot path of a one-entity history: one dict per row, no intermediate objects.
    out: list[dict[str, Any]] = []
    append = out.append
    for o in rows:
        instance = {
            "type": "Property",
            "value": o.value_num if o.value_num is not None else observed_value(o),
            "observedAt": format_time(o.observed_at),
        }
        if o.unit is not None:
            instance["unitCode"] = o.unit
        append(instance)
    return out


def parse_duration(text: str) -> timedelta:
    """An ISO 8601 duration of fixed length (weeks, days, hours, minutes, seconds).

    Years and months have no fixed length, so they are refused.
    """
    match = _DURATION_RE.match(text) if isinstance(text, str) else None
    if match is None or text in ("P", "PT") or text.endswith("T"):
        if isinstance(text, str) and re.match(r"^P(\d+Y|\d+M)", text):
            raise bad_request(
                f"duration {text!r}: years and months have no fixed length; use weeks or days"
            )
        raise bad_request(f"{text!r} is not an ISO 8601 duration such as PT1H, PT15M or P1D")
    parts = {k: float(v) for k, v in match.groupdict().items() if v is not None}
    value = timedelta(**parts)
    if value <= timedelta(0):
        raise bad_request(f"duration {text!r} must be longer than zero")
    return value


def split_series(rows: Sequence[Observation]) -> dict[str, dict[str, list[Observation]]]:
    """Rows ordered by entity, attribute, time → {entity id: {attribute: rows}}."""
    out: dict[str, dict[str, list[Observation]]] = {}
    start = 0
    n = len(rows)
    while start < n:
        first = rows[start]
        stop = start + 1
        while (
            stop < n
            and rows[stop].attribute == first.attribute
            and rows[stop].entity_id == first.entity_id
        ):
            stop += 1
        out.setdefault(first.entity_id, {})[first.attribute] = list(rows[start:stop])
        start = stop
    return out


def periods(
    series: Sequence[Observation],
    *,
    period: timedelta | None = None,
    align: datetime | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
) -> list[tuple[datetime, datetime, Sequence[Observation]]]:
    """Cut a time-ordered series into periods; empty periods are left out.

    Without ``period`` the whole interval [start, end) is one period; an open start or end
    is taken from the first or last instance. With ``period`` the boundaries are
    ``align + k * period`` (``align`` defaults to ``start``, then to the first instance),
    and the last period is cut short at ``end``.
    """
    if not series:
        return []
    if period is None:
        lo = start if start is not None else series[0].observed_at
        hi = end if end is not None else series[-1].observed_at
        return [(lo, hi, series)]
    origin = align or start or series[0].observed_at
    out: list[tuple[datetime, datetime, Sequence[Observation]]] = []
    first = 0
    bucket_end: datetime | None = None
    bucket_start = origin
    for i, obs in enumerate(series):
        at = obs.observed_at
        if bucket_end is not None and bucket_start <= at < bucket_end:
            continue
        if bucket_end is not None:
            out.append((bucket_start, _clip(bucket_end, end), series[first:i]))
        bucket_start = _floor(at, origin, period)
        bucket_end = _plus(bucket_start, period)
        first = i
    if bucket_end is not None:
        out.append((bucket_start, _clip(bucket_end, end), series[first:]))
    return out


def _floor(at: datetime, origin: datetime, period: timedelta) -> datetime:
    """Start of the period holding ``at``, held at the first representable instant."""
    try:
        return origin + ((at - origin) // period) * period
    except OverflowError:  # a huge period aligned far after ``at`` starts before year 1
        return datetime.min.replace(tzinfo=at.tzinfo)


def _plus(at: datetime, period: timedelta) -> datetime:
    """``at + period``, held at the last representable instant (a period may be huge)."""
    try:
        return at + period
    except OverflowError:
        return datetime.max.replace(tzinfo=at.tzinfo)


def _clip(bucket_end: datetime, end: datetime | None) -> datetime:
    return bucket_end if end is None or bucket_end <= end else end


def aggregate(
    series: Sequence[Observation],
    methods: Iterable[str],
    *,
    period: timedelta | None = None,
    align: datetime | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
) -> dict[str, list[Bucket]]:
    """Aggregate one attribute's time-ordered series with each method, period by period.

    A numeric method leaves out periods with no numeric instance.
    """
    wanted = list(dict.fromkeys(methods))
    for method in wanted:
        if method not in AGGREGATE_METHODS:
            raise bad_request(
                f"aggrMethods: {method!r} is not one of {', '.join(AGGREGATE_METHODS)}"
            )
    out: dict[str, list[Bucket]] = {m: [] for m in wanted}
    numeric = [m for m in wanted if m not in _COUNTS]
    for lo, hi, rows in periods(series, period=period, align=align, start=start, end=end):
        if "totalCount" in out:
            out["totalCount"].append(Bucket(len(rows), lo, hi))
        if "distinctCount" in out:
            distinct = {o.value_num if o.value_num is not None else o.value_json for o in rows}
            out["distinctCount"].append(Bucket(len(distinct), lo, hi))
        if not numeric:
            continue
        values = [o.value_num for o in rows if o.value_num is not None]
        if not values:
            continue
        for method in numeric:
            out[method].append(Bucket(_numeric(method, values), lo, hi))
    return out


def _numeric(method: str, values: list[float]) -> float:
    if method == "min":
        return min(values)
    if method == "max":
        return max(values)
    if method == "sum":
        return math.fsum(values)
    if method == "sumsq":
        return math.fsum(v * v for v in values)
    mean = math.fsum(values) / len(values)
    if method == "avg":
        return mean
    # stddev: two passes, which stays accurate when the values are large and close together.
    return math.sqrt(math.fsum((v - mean) ** 2 for v in values) / len(values))
