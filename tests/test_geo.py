"""Geo-queries: distances on the sphere, the georel relations, parameter parsing, pre-filter box."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from civica.core.geo import (
    EARTH_RADIUS_M,
    GeoQuery,
    bbox_of,
    distance_m,
    haversine_m,
    parse_geo_query,
)
from civica.core.problems import BAD_REQUEST_DATA, Problem

# One degree of arc on the sphere Civica uses, in metres: 2 * pi * R / 360.
DEGREE_M = 2 * math.pi * 6_371_008.8 / 360


def entity(geometry: dict[str, Any] | None, attr: str = "location") -> dict[str, Any]:
    e: dict[str, Any] = {"id": "urn:x", "type": "T"}
    if geometry is not None:
        e[attr] = {"type": "GeoProperty", "value": geometry}
    return e


def pt(lon: float, lat: float) -> dict[str, Any]:
    return {"type": "Point", "coordinates": [lon, lat]}


def square(x0: float, y0: float, x1: float, y1: float) -> dict[str, Any]:
    return {"type": "Polygon", "coordinates": [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]]}


def geo(georel: str, geometry: dict[str, Any], prop: str | None = None) -> GeoQuery:
    q = parse_geo_query(georel, geometry["type"], str(geometry["coordinates"]), prop)
    assert q is not None
    return q


# ---- distances ----------------------------------------------------------------------------


def test_haversine_along_a_meridian_and_the_equator() -> None:
    assert haversine_m(0, 0, 0, 1) == pytest.approx(DEGREE_M, rel=1e-12)
    assert haversine_m(0, 0, 1, 0) == pytest.approx(DEGREE_M, rel=1e-12)
    assert haversine_m(10, 45, 10, 46) == pytest.approx(DEGREE_M, rel=1e-12)
    assert haversine_m(3.7, 51.05, 3.7, 51.05) == 0.0


def test_haversine_known_cases() -> None:
    # A quarter of a great circle, and half of one (antipodes).
    assert haversine_m(0, 0, 90, 0) == pytest.approx(math.pi / 2 * EARTH_RADIUS_M)
    assert haversine_m(0, 90, 0, -90) == pytest.approx(math.pi * EARTH_RADIUS_M)
    assert haversine_m(20, 10, -160, -10) == pytest.approx(math.pi * EARTH_RADIUS_M)
    # Across the antimeridian the short way round.
    assert haversine_m(179.5, 0, -179.5, 0) == pytest.approx(DEGREE_M, rel=1e-9)
    # Longitude shrinks with cos(latitude): 1 degree at 60 N is close to half a degree's arc.
    assert haversine_m(0, 60, 1, 60) == pytest.approx(DEGREE_M / 2, rel=1e-4)
    # Brussels Grand-Place to Paris Notre-Dame is about 264 km.
    assert haversine_m(4.3525, 50.8467, 2.3499, 48.8530) == pytest.approx(264_000, rel=0.01)
    assert haversine_m(1, 2, 3, 4) == haversine_m(3, 4, 1, 2)


def test_distance_to_lines_and_polygons() -> None:
    ref = pt(0.0, 0.0)
    assert distance_m(pt(0.0, 0.01), ref) == pytest.approx(0.01 * DEGREE_M)
    inside = square(-0.01, -0.01, 0.01, 0.01)
    assert distance_m(inside, ref) == 0.0
    east = square(0.02, -0.01, 0.03, 0.01)
    assert distance_m(east, ref) == pytest.approx(0.02 * DEGREE_M, rel=1e-6)
    line = {"type": "LineString", "coordinates": [[-1.0, 0.005], [1.0, 0.005]]}
    assert distance_m(line, ref) == pytest.approx(0.005 * DEGREE_M, rel=1e-6)
    # At 60 N a degree of longitude is about half as long.
    far = square(0.02, 59.99, 0.03, 60.01)
    assert distance_m(far, pt(0.0, 60.0)) == pytest.approx(0.01 * DEGREE_M, rel=1e-3)


def test_bbox_of_every_geometry_type() -> None:
    assert bbox_of(pt(3, 4)) == (3, 4, 3, 4)
    assert bbox_of({"type": "LineString", "coordinates": [[1, 5], [-2, 7], [0, 6]]}) == (
        -2,
        5,
        1,
        7,
    )
    assert bbox_of(square(1, 2, 3, 4)) == (1, 2, 3, 4)
    multi = {
        "type": "MultiPolygon",
        "coordinates": [square(0, 0, 1, 1)["coordinates"], square(5, -3, 6, -2)["coordinates"]],
    }
    assert bbox_of(multi) == (0, -3, 6, 1)
    assert bbox_of({"type": "Point", "coordinates": [1.5, 2.5, 100.0]}) == (1.5, 2.5, 1.5, 2.5)


# ---- georel relations ---------------------------------------------------------------------

ORIGIN = pt(4.0, 50.0)
KM_LON_AT_50 = 1000 / (DEGREE_M * math.cos(math.radians(50)))  # degrees of lon per km


@pytest.mark.parametrize(
    ("georel", "km", "expected"),
    [
        ("near;maxDistance==1001", 1.0, True),
        ("near;maxDistance==999", 1.0, False),
        ("near;maxDistance==0", 0.0, True),
        ("near;minDistance==999", 1.0, True),
        ("near;minDistance==1001", 1.0, False),
        ("near;minDistance==500;maxDistance==1500", 1.0, True),
        ("near;minDistance==500;maxDistance==1500", 0.2, False),
        ("near;minDistance==500;maxDistance==1500", 2.0, False),
        ("near;maxDistance==1500;minDistance==500", 1.0, True),
    ],
)
def test_near(georel: str, km: float, expected: bool) -> None:
    target = entity(pt(4.0 + km * KM_LON_AT_50, 50.0))
    assert geo(georel, ORIGIN).matches(target) is expected


def test_near_a_polygon_measures_to_its_edge() -> None:
    block = entity(square(4.0 + 2 * KM_LON_AT_50, 49.99, 4.1, 50.01))
    assert geo("near;maxDistance==2050", ORIGIN).matches(block)
    assert not geo("near;maxDistance==1950", ORIGIN).matches(block)
    assert geo("near;minDistance==1950", ORIGIN).matches(block)


AREA = square(4.0, 50.0, 4.1, 50.1)
LINE_THROUGH = {"type": "LineString", "coordinates": [[3.9, 50.05], [4.2, 50.05]]}
LINE_OUTSIDE = {"type": "LineString", "coordinates": [[3.9, 50.2], [4.2, 50.2]]}


@pytest.mark.parametrize(
    ("georel", "query", "target", "expected"),
    [
        ("within", AREA, pt(4.05, 50.05), True),
        ("within", AREA, pt(4.15, 50.05), False),
        ("within", AREA, pt(4.0, 50.05), False),  # on the boundary: not within
        ("within", AREA, square(4.01, 50.01, 4.02, 50.02), True),
        ("within", AREA, square(4.05, 50.05, 4.2, 50.2), False),
        ("intersects", AREA, LINE_THROUGH, True),
        ("intersects", AREA, LINE_OUTSIDE, False),
        ("intersects", AREA, pt(4.0, 50.05), True),  # boundary counts for intersects
        ("intersects", LINE_THROUGH, square(4.0, 50.0, 4.01, 50.1), True),
        ("disjoint", AREA, LINE_OUTSIDE, True),
        ("disjoint", AREA, LINE_THROUGH, False),
        ("disjoint", AREA, pt(4.05, 50.05), False),
        ("contains", pt(4.05, 50.05), AREA, True),
        ("contains", pt(4.5, 50.05), AREA, False),
        ("contains", square(4.01, 50.01, 4.02, 50.02), AREA, True),
        ("equals", pt(4.05, 50.05), pt(4.05, 50.05), True),
        ("equals", pt(4.05, 50.05), pt(4.05, 50.06), False),
        ("equals", AREA, square(4.0, 50.0, 4.1, 50.1), True),
        ("overlaps", AREA, square(4.05, 50.05, 4.2, 50.2), True),
        ("overlaps", AREA, square(4.01, 50.01, 4.02, 50.02), False),  # inside is not overlap
        ("overlaps", AREA, square(5.0, 51.0, 5.1, 51.1), False),
    ],
)
def test_relations(
    georel: str, query: dict[str, Any], target: dict[str, Any], expected: bool
) -> None:
    assert geo(georel, query).matches(entity(target)) is expected


def test_an_entity_without_the_geoproperty_matches_no_relation() -> None:
    for rel, g in (("near;maxDistance==1e9", ORIGIN), ("disjoint", AREA), ("within", AREA)):
        q = geo(rel, g)
        assert not q.matches(entity(None))
        assert not q.matches({"id": "urn:x", "location": {"type": "Property", "value": "here"}})


def test_geoproperty_selects_the_attribute() -> None:
    e = {**entity(pt(10, 10)), **entity(pt(4.0, 50.0), "observationSpace")}
    assert not geo("near;maxDistance==10", ORIGIN).matches(e)
    q = geo("near;maxDistance==10", ORIGIN, "observationSpace")
    assert q.geoproperty == "observationSpace"
    assert q.matches(e)


def test_a_precomputed_query_shape_is_used() -> None:
    q = geo("within", AREA)
    inside = entity(pt(4.05, 50.05))
    assert q.matches(inside, q.shape)
    other = geo("within", square(0, 0, 1, 1)).shape
    assert not q.matches(inside, other)


# ---- parsing ------------------------------------------------------------------------------


def test_no_parameters_means_no_geo_query() -> None:
    assert parse_geo_query(None, None, None) is None


def test_parsed_fields() -> None:
    q = parse_geo_query("near;minDistance==5;maxDistance==2000.5", "Point", "[4.0, 50.0]")
    assert q == GeoQuery("near", pt(4.0, 50.0), "location", 2000.5, 5.0)
    listed = parse_geo_query("within", "Polygon", AREA["coordinates"], "operationSpace")
    assert listed == GeoQuery("within", AREA, "operationSpace")


@pytest.mark.parametrize(
    ("georel", "geometry", "coordinates"),
    [
        ("near;maxDistance==10", None, "[4, 50]"),
        (None, "Point", "[4, 50]"),
        ("near;maxDistance==10", "Point", None),
        ("", "Point", "[4, 50]"),
        ("nearby;maxDistance==10", "Point", "[4, 50]"),
        ("near", "Point", "[4, 50]"),
        ("near;maxDistance==ten", "Point", "[4, 50]"),
        ("near;maxDistance=10", "Point", "[4, 50]"),
        ("near;radius==10", "Point", "[4, 50]"),
        ("near;maxDistance==-1", "Point", "[4, 50]"),
        ("near;maxDistance==nan", "Point", "[4, 50]"),
        ("near;maxDistance==inf", "Point", "[4, 50]"),
        ("near;maxDistance==10", "Polygon", str(AREA["coordinates"])),
        ("within", "Point", "[4, 50]"),
        ("within", "LineString", "[[4, 50], [5, 51]]"),
        ("within", "Polygon", "[[[4, 50], [5, 50], [5, 51]]]"),
        ("within", "Polygon", "[[[4, 50], [5, 50], [5, 51], [4, 51]]]"),
        ("intersects", "Point", "[4, 50"),
        ("intersects", "Point", "{}"),
        ("intersects", "Point", "[200, 50]"),
        ("intersects", "Point", "[4, 91]"),
        ("intersects", "Point", "[4]"),
        ("intersects", "Point", "[true, false]"),
        ("intersects", "Circle", "[4, 50]"),
        ("intersects", "LineString", "[[4, 50]]"),
        ("intersects", "LineString", "[]"),
        ("intersects", "MultiLineString", "[[[4, 50], [5, 50]], [[4, 51]]]"),
    ],
)
def test_bad_parameters(georel: str | None, geometry: str | None, coordinates: str | None) -> None:
    with pytest.raises(Problem) as err:
        parse_geo_query(georel, geometry, coordinates)
    assert err.value.kind is BAD_REQUEST_DATA


# ---- the pre-filter box -------------------------------------------------------------------


def test_prefilter_box_for_each_relation() -> None:
    assert geo("within", AREA).prefilter_bbox() == (4.0, 50.0, 4.1, 50.1)
    assert geo("intersects", LINE_THROUGH).prefilter_bbox() == (3.9, 50.05, 4.2, 50.05)
    assert geo("disjoint", AREA).prefilter_bbox() is None
    assert geo("near;minDistance==10", ORIGIN).prefilter_bbox() is None
    box = geo("near;maxDistance==1000", pt(0.0, 0.0)).prefilter_bbox()
    assert box is not None
    assert box[1] == pytest.approx(-1000 / DEGREE_M)
    assert box[3] == pytest.approx(1000 / DEGREE_M)
    assert box[0] <= -1000 / DEGREE_M
    assert box[2] >= 1000 / DEGREE_M


def destination(lon: float, lat: float, bearing_deg: float, metres: float) -> tuple[float, float]:
    """The point ``metres`` away along a great circle (the spherical 'direct' formula)."""
    d = metres / EARTH_RADIUS_M
    p1, l1, b = math.radians(lat), math.radians(lon), math.radians(bearing_deg)
    p2 = math.asin(math.sin(p1) * math.cos(d) + math.cos(p1) * math.sin(d) * math.cos(b))
    l2 = l1 + math.atan2(
        math.sin(b) * math.sin(d) * math.cos(p1), math.cos(d) - math.sin(p1) * math.sin(p2)
    )
    lon2 = (math.degrees(l2) + 540.0) % 360.0 - 180.0
    return lon2, math.degrees(p2)


def in_box(box: tuple[float, float, float, float], lon: float, lat: float) -> bool:
    return box[0] <= lon <= box[2] and box[1] <= lat <= box[3]


@settings(max_examples=400, deadline=None, derandomize=True, database=None)
@given(
    st.floats(-180, 180),
    st.one_of(st.floats(-89.99, 89.99), st.floats(85, 89.99), st.floats(-89.99, -85)),
    st.floats(1, 2_000_000),
    st.floats(0, 360),
    st.floats(0.0, 0.999),
)
def test_every_near_match_lies_in_the_prefilter_box(
    lon: float, lat: float, max_d: float, bearing: float, fraction: float
) -> None:
    q = geo(f"near;maxDistance=={max_d!r}", pt(lon, lat))
    box = q.prefilter_bbox()
    assert box is not None
    tlon, tlat = destination(lon, lat, bearing, max_d * fraction)
    tlon, tlat = max(-180.0, min(180.0, tlon)), max(-90.0, min(90.0, tlat))
    target = entity(pt(tlon, tlat))
    if q.matches(target):
        assert in_box(box, tlon, tlat), (box, tlon, tlat)


@settings(max_examples=200, deadline=None, derandomize=True, database=None)
@given(
    st.tuples(st.floats(-179, 178), st.floats(-89, 88)),
    st.floats(0.001, 1.0),
    st.tuples(st.floats(-180, 180), st.floats(-90, 90)),
)
def test_every_area_match_lies_in_the_prefilter_box(
    corner: tuple[float, float], size: float, target: tuple[float, float]
) -> None:
    x, y = corner
    area = square(x, y, x + size, y + size)
    for rel in ("within", "intersects", "contains", "equals", "overlaps"):
        q = geo(rel, area)
        box = q.prefilter_bbox()
        assert box is not None
        small = square(target[0], target[1], min(180, target[0] + 0.01), min(90, target[1] + 0.01))
        for g in (pt(*target), small):
            if q.matches(entity(g)):
                gx0, gy0, gx1, gy1 = bbox_of(g)
                assert gx0 <= box[2] and gx1 >= box[0] and gy0 <= box[3] and gy1 >= box[1]
