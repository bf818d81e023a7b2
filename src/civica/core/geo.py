"""NGSI-LD geo-queries (``georel``, ``geometry``, ``coordinates``) over GeoJSON locations.

Distances are metres on a spherical Earth (radius 6,371,008.8 m).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from shapely.geometry import Point, shape
from shapely.geometry.base import BaseGeometry

from civica.core.entity import check_geometry
from civica.core.problems import bad_request

EARTH_RADIUS_M = 6_371_008.8
GEORELS = ("near", "within", "contains", "intersects", "disjoint", "equals", "overlaps")


def haversine_m(lon1: float, lat1: float, lon2: float, lat2: float) -> float:
    """Great-circle distance in metres between two WGS 84 points."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(a)))


def bbox_of(geometry: Mapping[str, Any]) -> tuple[float, float, float, float]:
    """(min_lon, min_lat, max_lon, max_lat) of a validated GeoJSON geometry."""
    if geometry["type"] == "Point":  # most locations; computed on every entity write
        lon, lat = float(geometry["coordinates"][0]), float(geometry["coordinates"][1])
        return lon, lat, lon, lat
    xs: list[float] = []
    ys: list[float] = []

    def walk(c: Any) -> None:
        if c and isinstance(c[0], int | float):
            xs.append(float(c[0]))
            ys.append(float(c[1]))
        else:
            for item in c:
                walk(item)

    walk(geometry["coordinates"])
    return min(xs), min(ys), max(xs), max(ys)


@dataclass(frozen=True)
class GeoQuery:
    georel: str
    geometry: dict[str, Any]
    geoproperty: str = "location"
    max_distance: float | None = None
    min_distance: float | None = None

    @property
    def shape(self) -> BaseGeometry:
        return shape(self.geometry)

    def prefilter_bbox(self) -> tuple[float, float, float, float] | None:
        """A box every match lies in (for a cheap index/SQL filter), or None if unbounded."""
        if self.georel in ("disjoint",) or (self.georel == "near" and self.max_distance is None):
            return None
        lo_x, lo_y, hi_x, hi_y = bbox_of(self.geometry)
        if self.georel == "near" and self.max_distance is not None:
            dlat = math.degrees(self.max_distance / EARTH_RADIUS_M)
            coslat = max(math.cos(math.radians(max(abs(lo_y), abs(hi_y)) + dlat)), 1e-6)
            dlon = min(180.0, dlat / coslat)
            west, east = lo_x - dlon, hi_x + dlon
            if west < -180.0 or east > 180.0:
                west, east = -180.0, 180.0  # the circle wraps round the antimeridian
            return west, lo_y - dlat, east, hi_y + dlat
        return lo_x, lo_y, hi_x, hi_y

    def matches(self, entity: Mapping[str, Any], query_shape: BaseGeometry | None = None) -> bool:
        attr = entity.get(self.geoproperty)
        if not isinstance(attr, dict) or not isinstance(attr.get("value"), dict):
            return False
        geom = attr["value"]
        qs = query_shape if query_shape is not None else self.shape
        if self.georel == "near":
            d = distance_m(geom, self.geometry)
            if self.max_distance is not None and d > self.max_distance:
                return False
            return not (self.min_distance is not None and d < self.min_distance)
        target = shape(geom)
        rel = {
            "within": target.within,
            "contains": target.contains,
            "intersects": target.intersects,
            "disjoint": target.disjoint,
            "equals": target.equals,
            "overlaps": target.overlaps,
        }[self.georel]
        return bool(rel(qs))


def distance_m(geom: Mapping[str, Any], ref: Mapping[str, Any]) -> float:
    """Metres from geometry ``geom`` to reference geometry ``ref`` (exact for two points)."""
    if geom["type"] == "Point" and ref["type"] == "Point":
        a, b = geom["coordinates"], ref["coordinates"]
        return haversine_m(a[0], a[1], b[0], b[1])
    # Otherwise: planar distance in a local equirectangular projection around ``ref``.
    lon0, lat0 = bbox_of(ref)[0:2]
    k = math.cos(math.radians(lat0))

    def project(c: Any) -> Any:
        if c and isinstance(c[0], int | float):
            return [(c[0] - lon0) * k, c[1] - lat0]
        return [project(x) for x in c]

    g = shape({"type": geom["type"], "coordinates": project(geom["coordinates"])})
    r = shape({"type": ref["type"], "coordinates": project(ref["coordinates"])})
    return float(g.distance(r)) * math.pi / 180.0 * EARTH_RADIUS_M


def parse_geo_query(
    georel: str | None,
    geometry: str | None,
    coordinates: str | Any | None,
    geoproperty: str | None = None,
) -> GeoQuery | None:
    """Build a GeoQuery from the NGSI-LD query parameters, or None if none were given."""
    if georel is None and geometry is None and coordinates is None:
        return None
    if not (georel and geometry and coordinates is not None):
        raise bad_request("a geo-query needs georel, geometry and coordinates together")
    if not isinstance(georel, str) or not isinstance(geometry, str):
        raise bad_request("georel and geometry must be strings")
    if geoproperty is not None and not isinstance(geoproperty, str):
        raise bad_request("geoproperty must be a string")
    parts = georel.split(";")
    rel = parts[0]
    if rel not in GEORELS:
        raise bad_request(f"unknown georel {rel!r}; expected one of {', '.join(GEORELS)}")
    max_d = min_d = None
    for mod in parts[1:]:
        key, sep, val = mod.partition("==")
        try:
            number = float(val)
        except ValueError as err:
            raise bad_request(f"georel modifier {mod!r} needs a number") from err
        if not sep or key not in ("maxDistance", "minDistance") or not math.isfinite(number):
            raise bad_request(f"unknown georel modifier {mod!r}")
        if number < 0:
            raise bad_request("distances must not be negative")
        if key == "maxDistance":
            max_d = number
        else:
            min_d = number
    if rel == "near" and max_d is None and min_d is None:
        raise bad_request("georel=near needs maxDistance or minDistance (metres)")
    if isinstance(coordinates, str):
        try:
            coords = orjson.loads(coordinates)
        except orjson.JSONDecodeError as err:
            raise bad_request("coordinates must be a JSON array") from err
    else:
        coords = coordinates
    geom = check_geometry({"type": geometry, "coordinates": coords}, "geometry")
    if rel == "near" and geom["type"] != "Point":
        raise bad_request("georel=near takes a Point geometry")
    if rel == "within" and geom["type"] not in ("Polygon", "MultiPolygon"):
        raise bad_request("georel=within takes a Polygon or MultiPolygon")
    shape(geom)  # shapely accepts every geometry check_geometry lets through
    return GeoQuery(rel, geom, geoproperty or "location", max_d, min_d)


def point(lon: float, lat: float) -> Point:
    return Point(lon, lat)
