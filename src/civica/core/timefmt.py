"""UTC timestamps on the wire: parse ISO 8601 with a zone, render as ``...Z``."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from civica.core.problems import bad_request

# The form format_time renders; most clients send it, so it needs no re-rendering.
_CANONICAL = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}Z\Z")


# A reading's timestamp is parsed when it is validated and again when its observation row is
# made, and the attributes of one entity share it: remembering recent parses saves most of them.
_RECENT: dict[str, datetime] = {}
_RECENT_MAX = 8192
_CANONICAL_SEEN: set[str] = set()  # strings known valid and already in canonical form


def parse_time(text: object, what: str = "timestamp") -> datetime:
    """Parse an ISO 8601 date-time that carries a zone; naive times are refused."""
    if not isinstance(text, str):
        raise bad_request(f"{what} must be an ISO 8601 string, got {type(text).__name__}")
    hit = _RECENT.get(text)
    if hit is not None:
        return hit
    value = _parse(text, what)
    if len(_RECENT) >= _RECENT_MAX:
        _RECENT.clear()
    _RECENT[text] = value
    return value


def _parse(text: str, what: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError as err:
        raise bad_request(f"{what} {text!r} is not an ISO 8601 date-time") from err
    if value.tzinfo is UTC:  # 'Z' or +00:00: already what astimezone(UTC) would give
        return value
    if value.tzinfo is None or value.utcoffset() is None:
        raise bad_request(f"{what} {text!r} has no timezone; send UTC ('Z') or an offset")
    try:
        return value.astimezone(UTC)
    except OverflowError as err:  # e.g. 0001-01-01T00:00:00+14:00 is before year 1 in UTC
        raise bad_request(f"{what} {text!r} is out of range in UTC") from err


def format_time(value: datetime) -> str:
    """Render a datetime as ISO 8601 UTC with milliseconds and a ``Z``."""
    if value.tzinfo is not UTC:  # the store hands out UTC already: skip the conversion
        value = value.astimezone(UTC)
    return value.isoformat(timespec="milliseconds")[:-6] + "Z"


def normalise_time(text: object, what: str = "observedAt") -> str:
    if isinstance(text, str) and text in _CANONICAL_SEEN:
        return text
    if isinstance(text, str) and _CANONICAL.match(text):
        parse_time(text, what)  # still refuse impossible dates such as 2024-02-30
        if len(_CANONICAL_SEEN) >= _RECENT_MAX:
            _CANONICAL_SEEN.clear()
        _CANONICAL_SEEN.add(text)
        return text
    return format_time(parse_time(text, what))


def utcnow() -> datetime:
    return datetime.now(UTC)
