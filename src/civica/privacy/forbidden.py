"""Kinds of data Civica refuses outright, whatever the catalogue says.

Face images or embeddings, biometric templates, ethnicity/religion/emotion, raw device
identifiers (MAC, IMSI, IMEI), clear-text licence plates, person names, phone numbers and
e-mail addresses. Names are matched case-insensitively after removing separators, and
values are sniffed for MAC addresses and embedded images, so renaming a field is not a way in.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

# (fragment of a normalised name, why it is refused)
_NAME_RULES: tuple[tuple[str, str], ...] = (
    ("face", "face images, embeddings and face attributes are never stored"),
    ("biometric", "biometric data is never stored"),
    ("fingerprint", "biometric data is never stored"),
    ("iris", "biometric data is never stored"),
    ("gait", "biometric data is never stored"),
    ("voiceprint", "biometric data is never stored"),
    ("embedding", "person embeddings are never stored"),
    ("ethnic", "ethnicity is never stored"),
    ("race", "ethnicity is never stored"),
    ("religio", "religion is never stored"),
    ("emotion", "emotion data is never stored"),
    ("sentiment", "emotion data is never stored"),
    ("fatigue", "fatigue detection of people is refused"),
    ("macaddress", "raw device identifiers (MAC) are never stored; send counts per zone"),
    ("bssid", "raw device identifiers (MAC) are never stored; send counts per zone"),
    ("imsi", "raw device identifiers (IMSI) are never stored; send counts per zone"),
    ("imei", "raw device identifiers (IMEI) are never stored"),
    ("licenseplate", "clear licence plates are never stored; send keyed hashes at the edge"),
    ("licenceplate", "clear licence plates are never stored; send keyed hashes at the edge"),
    ("numberplate", "clear licence plates are never stored; send keyed hashes at the edge"),
    ("plateidentifier", "clear licence plates are never stored; send keyed hashes at the edge"),
    ("platenumber", "clear licence plates are never stored; send keyed hashes at the edge"),
    ("personname", "names of people are never stored"),
    ("firstname", "names of people are never stored"),
    ("lastname", "names of people are never stored"),
    ("givenname", "names of people are never stored"),
    ("familyname", "names of people are never stored"),
    ("fullname", "names of people are never stored"),
    ("surname", "names of people are never stored"),
    ("phonenumber", "phone numbers are never stored"),
    ("telephone", "phone numbers are never stored"),
    ("msisdn", "phone numbers are never stored"),
    ("email", "e-mail addresses are never stored"),
    ("socialscore", "social scoring is refused"),
    ("personid", "identities of people are never stored"),
    ("nationalid", "identities of people are never stored"),
)
# Ordinary words that contain a fragment above ('surface' holds 'face', 'timeInterval' holds
# 'imei'): a fragment found wholly inside one of them does not count.
_INNOCENT_WORDS = ("surface", "interface", "timei")
# 'aa:bb:cc:dd:ee:ff', 'aa-bb-…' and Cisco's 'aabb.ccdd.eeff'. Not \b: '_' is a word
# character, so 'dev_aa:bb:…' would slip through.
_MAC_RE = re.compile(
    r"(?<![0-9A-Fa-f])[0-9A-Fa-f]{2}([:-])(?:[0-9A-Fa-f]{2}\1){4}[0-9A-Fa-f]{2}(?![0-9A-Fa-f])"
    r"|(?<![0-9A-Fa-f.])[0-9A-Fa-f]{4}\.[0-9A-Fa-f]{4}\.[0-9A-Fa-f]{4}(?![0-9A-Fa-f.])"
)
_MAX_VALUE_DEPTH = 8
_IMAGE_RE = re.compile(r"^data:image/|^/9j/|^iVBORw0KGgo")  # data URI, JPEG, PNG in base64


def _normalise(name: str) -> str:
    tail = re.split(r"[/#:]", name)[-1]  # the local part of an expanded IRI
    return re.sub(r"[^a-z0-9]", "", tail.lower())


def forbidden_name(name: str) -> str | None:
    """Why an attribute (or key) name is refused, or None."""
    norm = _normalise(name)
    innocent = [(m.start(), m.end()) for w in _INNOCENT_WORDS for m in re.finditer(w, norm)]
    for fragment, why in _NAME_RULES:
        if fragment in norm and _outside(norm, fragment, innocent):
            # 'race' inside 'trace'/'grace' and 'iris' in 'irises'? Only whole words.
            if fragment in ("race", "iris", "gait") and not _is_word(norm, fragment, name):
                continue
            return why
    return None


def _outside(norm: str, fragment: str, spans: list[tuple[int, int]]) -> bool:
    """True if some occurrence of ``fragment`` lies outside every innocent-word span."""
    start = norm.find(fragment)
    while start >= 0:
        end = start + len(fragment)
        if not any(lo <= start and end <= hi for lo, hi in spans):
            return True
        start = norm.find(fragment, start + 1)
    return False


def _is_word(norm: str, fragment: str, raw: str) -> bool:
    if norm == fragment:
        return True
    words = re.findall(r"[A-Z]?[a-z0-9]+|[A-Z]+(?![a-z])", re.split(r"[/#:]", raw)[-1])
    return fragment in (w.lower() for w in words)


def forbidden_value(value: Any) -> str | None:
    """Why a value is refused (it carries a MAC address or an image), or None."""
    for text in _strings(value, 0):
        if text is None:
            return "the value is nested too deeply to be checked"
        if _MAC_RE.search(text):
            return "the value carries a MAC address; raw device identifiers are never stored"
        if len(text) > 64 and _IMAGE_RE.match(text):
            return "the value carries an image; images of people are never stored"
    return None


def _strings(value: Any, depth: int) -> Iterator[str | None]:
    """Every string in a JSON value, keys included; None where it is too deep to look."""
    if depth > _MAX_VALUE_DEPTH:
        if isinstance(value, str | dict | list):
            yield None
        return
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, sub in value.items():
            yield from _strings(sub, depth + 1)
            if isinstance(key, str):
                yield key
    elif isinstance(value, list):
        for sub in value:
            yield from _strings(sub, depth + 1)


def forbidden_keys(value: Any, depth: int = 0) -> Iterator[tuple[str, str]]:
    """(key, why) for every forbidden key nested inside a JSON value."""
    if depth > 8:
        return
    if isinstance(value, dict):
        for key, sub in value.items():
            why = forbidden_name(str(key))
            if why:
                yield str(key), why
            yield from forbidden_keys(sub, depth + 1)
    elif isinstance(value, list):
        for sub in value:
            yield from forbidden_keys(sub, depth + 1)
