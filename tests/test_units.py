"""UN/CEFACT unit conversion: factors checked against physical constants, not against the table."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from civica.core.problems import BAD_REQUEST_DATA, Problem
from civica.core.units import _UNITS, KNOWN_CODES, dimension_of, to_canonical

G = 9.80665  # standard gravity, m/s²: 1 m of water head is 9.80665 kPa at 1000 kg/m³


@pytest.mark.parametrize(
    ("value", "code", "canonical", "dimension", "expected"),
    [
        (2.0, "BAR", "KPA", None, 200.0),
        (1013.25, "A97", "PAL", None, 101_325.0),
        (1013.25, "MBR", "KPA", None, 101.325),
        (1.0, "PS", "KPA", None, 6.894757293168),
        (G, "KPA", "MTR", "pressure", 1.0),
        (1.0, "BAR", "MTR", "pressure", 100.0 / G),
        (10.0, "MTR", "KPA", "pressure", 10 * G),
        (32.0, "FAH", "CEL", None, 0.0),
        (212.0, "FAH", "CEL", None, 100.0),
        (-40.0, "FAH", "CEL", None, -40.0),
        (0.0, "CEL", "KEL", None, 273.15),
        (0.0, "KEL", "CEL", None, -273.15),
        (100.0, "CEL", "FAH", None, 212.0),
        (3.6, "KMH", "MTS", None, 1.0),
        (50.0, "KMH", "MTS", None, 50 / 3.6),
        (3600.0, "MQH", "MQS", None, 1.0),
        (1.0, "G51", "MQS", None, 0.001),
        (60.0, "L2", "G51", None, 1.0),
        (1.0, "KMT", "MTR", None, 1000.0),
        (1.0, "FOT", "MTR", None, 0.3048),
        (250.0, "CMT", "MMT", None, 2500.0),
        (1.0, "KWH", "WHR", None, 1000.0),
        (1.0, "MWH", "KWH", None, 1000.0),
        (1.5, "MAW", "KWT", None, 1500.0),
        (1.0, "M1", "GP", None, 1000.0),
        (1.0, "GP", "GQ", None, 1000.0),
        (1.0, "M1", "GQ", None, 1.0e6),
        (1000.0, "61", "59", None, 1.0),
        (50.0, "P1", "C62", None, 0.5),
        (1000.0, "G42", "D10", None, 0.1),
        (2.0, "MIN", "SEC", None, 120.0),
        (3600.0, "E32", "G51", None, 1.0),  # E32 is litre per hour (not 'per hour')
        (36.0, "E32", "MQH", None, 0.036),
    ],
)
def test_conversions(
    value: float, code: str, canonical: str, dimension: str | None, expected: float
) -> None:
    assert to_canonical(value, code, canonical, dimension) == pytest.approx(expected, abs=1e-9)


def test_same_code_is_identity_even_for_codes_the_table_lacks() -> None:
    assert to_canonical(7.25, "CEL", "CEL") == 7.25
    assert to_canonical(7, "XYZ", "XYZ") == 7


def test_unknown_code_is_bad_request_data() -> None:
    with pytest.raises(Problem) as err:
        to_canonical(1.0, "XYZ", "MTR")
    assert err.value.kind is BAD_REQUEST_DATA
    assert "XYZ" in err.value.detail


def test_wrong_dimension_is_bad_request_data_and_names_both() -> None:
    with pytest.raises(Problem) as err:
        to_canonical(1.0, "CEL", "KPA")
    assert err.value.kind is BAD_REQUEST_DATA
    assert "temperature" in err.value.detail
    assert "pressure" in err.value.detail
    with pytest.raises(Problem):
        to_canonical(1.0, "KMT", "MTR", "pressure")  # km is a length, never a head of water


def test_reciprocal_hour_is_h10() -> None:
    assert dimension_of("H10") == "rate"
    assert dimension_of("E32") == "flow"


def test_a_code_of_two_dimensions() -> None:
    assert dimension_of("MTR") == "length"  # the first declared
    assert to_canonical(1.0, "MTR", "KMT") == pytest.approx(0.001)
    assert to_canonical(1.0, "MTR", "KPA", "pressure") == pytest.approx(G)
    with pytest.raises(KeyError):
        dimension_of("XYZ")


def test_the_table_is_consistent() -> None:
    pairs = {(u.code, u.dimension) for u in _UNITS}
    assert len(pairs) == len(_UNITS), "a (code, dimension) pair is declared twice"
    assert {u.code for u in _UNITS} == KNOWN_CODES
    assert all(u.factor > 0 for u in _UNITS)
    assert all(u.code and u.code == u.code.strip() and len(u.code) <= 3 for u in _UNITS)


same_dimension = [
    (a.code, b.code, a.dimension)
    for a, b in itertools.product(_UNITS, _UNITS)
    if a.dimension == b.dimension and a.code != b.code
]


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(st.sampled_from(same_dimension), st.floats(-1e6, 1e6))
def test_there_and_back_again(pair: tuple[str, str, str], value: float) -> None:
    a, b, dim = pair
    there = to_canonical(value, a, b, dim)
    assert to_canonical(there, b, a, dim) == pytest.approx(value, rel=1e-9, abs=1e-6)


@settings(max_examples=200, deadline=None, derandomize=True, database=None)
@given(st.sampled_from(same_dimension), st.floats(-1e3, 1e3), st.floats(-1e3, 1e3))
def test_conversion_keeps_order(pair: tuple[str, str, str], x: float, y: float) -> None:
    a, b, dim = pair
    if x < y:
        assert to_canonical(x, a, b, dim) <= to_canonical(y, a, b, dim)
