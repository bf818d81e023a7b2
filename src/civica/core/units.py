"""UN/CEFACT unit codes, their physical dimension and conversion to the dimension's base unit.

>>> to_canonical(2.0, "BAR", "KPA")
200.0
"""

from __future__ import annotations

from dataclasses import dataclass

from civica.core.problems import bad_request


@dataclass(frozen=True)
class Unit:
    """A unit: value_in_base = value * factor + offset."""

    code: str
    dimension: str
    factor: float
    offset: float = 0.0
    symbol: str = ""


# Base units: length m, pressure Pa, volume flow m3/s, temperature K, power W, energy J,
# mass concentration kg/m3, speed m/s, ratio 1, illuminance lx, conductivity S/m.
_UNITS: tuple[Unit, ...] = (
    Unit("MTR", "length", 1.0, symbol="m"),
    Unit("CMT", "length", 0.01, symbol="cm"),
    Unit("MMT", "length", 0.001, symbol="mm"),
    Unit("KMT", "length", 1000.0, symbol="km"),
    Unit("FOT", "length", 0.3048, symbol="ft"),
    Unit("PAL", "pressure", 1.0, symbol="Pa"),
    Unit("KPA", "pressure", 1000.0, symbol="kPa"),
    Unit("BAR", "pressure", 1.0e5, symbol="bar"),
    Unit("MBR", "pressure", 100.0, symbol="mbar"),
    Unit("A97", "pressure", 100.0, symbol="hPa"),
    Unit("PS", "pressure", 6894.757293168, symbol="psi"),
    # Water utilities quote pressure as metres of head: 1 m H2O = 9.80665 kPa.
    Unit("MTR", "pressure", 9806.65, symbol="m H2O"),
    Unit("MQS", "flow", 1.0, symbol="m³/s"),
    Unit("MQH", "flow", 1.0 / 3600.0, symbol="m³/h"),
    Unit("G51", "flow", 0.001, symbol="L/s"),
    Unit("L2", "flow", 0.001 / 60.0, symbol="L/min"),
    Unit("CEL", "temperature", 1.0, 273.15, symbol="°C"),
    Unit("KEL", "temperature", 1.0, symbol="K"),
    Unit("FAH", "temperature", 5.0 / 9.0, 273.15 - 32.0 * 5.0 / 9.0, symbol="°F"),
    Unit("WTT", "power", 1.0, symbol="W"),
    Unit("KWT", "power", 1000.0, symbol="kW"),
    Unit("MAW", "power", 1.0e6, symbol="MW"),
    Unit("WHR", "energy", 3600.0, symbol="Wh"),
    Unit("KWH", "energy", 3.6e6, symbol="kWh"),
    Unit("MWH", "energy", 3.6e9, symbol="MWh"),
    Unit("GQ", "concentration", 1.0e-9, symbol="µg/m³"),
    Unit("GP", "concentration", 1.0e-6, symbol="mg/m³"),
    Unit("M1", "concentration", 1.0e-3, symbol="mg/L"),
    Unit("59", "ratio", 1.0e-6, symbol="ppm"),
    Unit("61", "ratio", 1.0e-9, symbol="ppb"),
    Unit("P1", "ratio", 0.01, symbol="%"),
    Unit("C62", "ratio", 1.0, symbol="1"),
    Unit("MTS", "speed", 1.0, symbol="m/s"),
    Unit("KMH", "speed", 1.0 / 3.6, symbol="km/h"),
    Unit("LUX", "illuminance", 1.0, symbol="lx"),
    Unit("D10", "conductivity", 1.0, symbol="S/m"),
    Unit("G42", "conductivity", 1.0e-4, symbol="µS/cm"),
    Unit("VLT", "voltage", 1.0, symbol="V"),
    Unit("AMP", "current", 1.0, symbol="A"),
    Unit("DD", "angle", 1.0, symbol="°"),
    Unit("SEC", "time", 1.0, symbol="s"),
    Unit("MIN", "time", 60.0, symbol="min"),
    Unit("E32", "flow", 0.001 / 3600.0, symbol="L/h"),  # E32 is litre per hour
    Unit("H10", "rate", 1.0 / 3600.0, symbol="1/h"),  # reciprocal hour
    Unit("NTU", "turbidity", 1.0, symbol="NTU"),
)

_BY_CODE_DIM: dict[tuple[str, str], Unit] = {(u.code, u.dimension): u for u in _UNITS}
_DIMS_BY_CODE: dict[str, set[str]] = {}
for _u in _UNITS:
    _DIMS_BY_CODE.setdefault(_u.code, set()).add(_u.dimension)

KNOWN_CODES: frozenset[str] = frozenset(_DIMS_BY_CODE)


def dimension_of(canonical_code: str) -> str:
    """The dimension a canonical unit measures (the first declared for that code)."""
    for unit in _UNITS:
        if unit.code == canonical_code:
            return unit.dimension
    raise KeyError(canonical_code)


def to_canonical(value: float, code: str, canonical: str, dimension: str | None = None) -> float:
    """Convert ``value`` given in ``code`` into ``canonical`` (both UN/CEFACT codes).

    Raises a BadRequestData Problem for an unknown code or a unit of another dimension.
    """
    if code == canonical:
        return value
    dim = dimension or dimension_of(canonical)
    dims = _DIMS_BY_CODE.get(code)
    if dims is None:
        raise bad_request(f"unknown unit code {code!r} (UN/CEFACT common codes expected)")
    src = _BY_CODE_DIM.get((code, dim))
    if src is None:
        raise bad_request(f"unit {code!r} measures {'/'.join(sorted(dims))}, not {dim}")
    dst = _BY_CODE_DIM[(canonical, dim)]
    base = value * src.factor + src.offset
    return (base - dst.offset) / dst.factor
