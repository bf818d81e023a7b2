"""Pure aggregation of temporal history: durations, periods, and each aggrMethod."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pytest

from civica.core.entity import Observation
from civica.core.problems import Problem
from civica.core.temporal import (
    AGGREGATE_METHODS,
    aggregate,
    observed_value,
    parse_duration,
    periods,
    split_series,
)

T0 = datetime(2026, 3, 1, 10, tzinfo=UTC)
MIN = timedelta(minutes=1)


def num(minute: int, value: float, attr: str = "pressure", eid: str = "urn:w:1") -> Observation:
    return Observation(eid, "WaterObserved", attr, T0 + minute * MIN, value, None, "MTR")


def text(minute: int, value: str) -> Observation:
    return Observation(
        "urn:l:1", "Streetlight", "status", T0 + minute * MIN, None, f'"{value}"', None
    )


@pytest.mark.parametrize(
    ("text_", "expected"),
    [
        ("PT1H", timedelta(hours=1)),
        ("PT15M", timedelta(minutes=15)),
        ("P1D", timedelta(days=1)),
        ("P1W", timedelta(weeks=1)),
        ("P1DT2H30M", timedelta(days=1, hours=2, minutes=30)),
        ("PT0.5S", timedelta(milliseconds=500)),
    ],
)
def test_parse_duration(text_: str, expected: timedelta) -> None:
    assert parse_duration(text_) == expected


@pytest.mark.parametrize("bad", ["", "P", "PT", "P1DT", "1H", "PT-1H", "P1M", "P1Y", "PT0S", "xyz"])
def test_parse_duration_refuses(bad: str) -> None:
    with pytest.raises(Problem) as err:
        parse_duration(bad)
    assert err.value.status == 400


def test_month_message_says_why() -> None:
    with pytest.raises(Problem, match="no fixed length"):
        parse_duration("P1M")


def test_whole_interval_all_methods() -> None:
    rows = [num(0, 10), num(15, 20), num(30, 30), num(45, 40), num(60, 50), num(75, 60)]
    out = aggregate(rows, AGGREGATE_METHODS)
    values = {m: b[0].value for m, b in out.items()}
    assert values["totalCount"] == 6
    assert values["distinctCount"] == 6
    assert values["sum"] == 210
    assert values["avg"] == 35
    assert values["min"] == 10
    assert values["max"] == 60
    assert values["sumsq"] == 100 + 400 + 900 + 1600 + 2500 + 3600
    # population standard deviation: mean 35, squared deviations 625+225+25+25+225+625
    assert values["stddev"] == pytest.approx(math.sqrt(1750 / 6))
    bucket = out["avg"][0]
    assert (bucket.start, bucket.end) == (T0, T0 + 75 * MIN)


def test_periods_aligned_and_empty_ones_left_out() -> None:
    rows = [num(0, 10), num(15, 20), num(30, 30), num(45, 40), num(125, 70)]
    out = aggregate(rows, ["avg", "totalCount"], period=timedelta(minutes=30))
    assert [(b.value, b.start, b.end) for b in out["avg"]] == [
        (15, T0, T0 + 30 * MIN),
        (35, T0 + 30 * MIN, T0 + 60 * MIN),
        (70, T0 + 120 * MIN, T0 + 150 * MIN),
    ]
    assert [b.value for b in out["totalCount"]] == [2, 2, 1]


def test_alignment_before_the_first_instance_and_cut_at_end() -> None:
    rows = [num(5, 1), num(20, 2), num(50, 3)]
    align = T0 - 10 * MIN  # periods [-10, 20), [20, 50), [50, 80) minutes
    out = aggregate(rows, ["sum"], period=timedelta(minutes=30), align=align, end=T0 + 60 * MIN)
    assert [(b.value, b.start, b.end) for b in out["sum"]] == [
        (1, align, T0 + 20 * MIN),
        (2, T0 + 20 * MIN, T0 + 50 * MIN),
        (3, T0 + 50 * MIN, T0 + 60 * MIN),
    ]


def test_alignment_after_the_instances_counts_backwards() -> None:
    rows = [num(0, 4), num(10, 6)]
    out = aggregate(rows, ["avg"], period=timedelta(minutes=15), align=T0 + 65 * MIN)
    assert [(b.value, b.start) for b in out["avg"]] == [(4, T0 - 10 * MIN), (6, T0 + 5 * MIN)]


def test_non_numeric_values_are_counted_but_not_averaged() -> None:
    rows = [text(0, "ok"), text(10, "defectiveLamp"), text(20, "ok")]
    out = aggregate(rows, ["avg", "max", "totalCount", "distinctCount"])
    assert out["avg"] == [] and out["max"] == []
    assert out["totalCount"][0].value == 3
    assert out["distinctCount"][0].value == 2


def test_mixed_values_numeric_methods_skip_text() -> None:
    rows = [num(0, 2), text(1, "n/a"), num(2, 4)]
    out = aggregate(rows, ["avg", "totalCount"])
    assert out["avg"][0].value == 3
    assert out["totalCount"][0].value == 3


def test_unknown_method_and_empty_series() -> None:
    with pytest.raises(Problem):
        aggregate([num(0, 1)], ["median"])
    assert aggregate([], ["avg"]) == {"avg": []}
    assert periods([], period=timedelta(hours=1)) == []


def test_split_series_and_values() -> None:
    rows = [
        num(0, 1, "flow"),
        num(1, 2, "flow"),
        num(0, 3, "pressure"),
        num(0, 4, "pressure", "urn:w:2"),
    ]
    out = split_series(rows)
    assert list(out) == ["urn:w:1", "urn:w:2"]
    assert [o.value_num for o in out["urn:w:1"]["flow"]] == [1, 2]
    assert [o.value_num for o in out["urn:w:2"]["pressure"]] == [4]
    assert observed_value(text(0, "ok")) == "ok"
    assert observed_value(num(0, 2.5)) == 2.5
