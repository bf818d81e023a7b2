"""JSON-LD @context handling for NGSI-LD: expand and compact attribute names and types.

The core context is built in and never fetched. Civica stores names in *canonical* form:
expanded with the request's context, then compacted against the core context, so a term
of the default vocabulary is stored short (``pressure``) and any other IRI in full.

>>> ctx = LdContext.from_terms({"temp": "https://uri.etsi.org/ngsi-ld/default-context/temperature"})
>>> ctx.to_canonical("temp")
'temperature'
>>> ctx.from_canonical("temperature")
'temp'
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

NGSI_LD = "https://uri.etsi.org/ngsi-ld/"
DEFAULT_VOCAB = NGSI_LD + "default-context/"
CORE_CONTEXT_URL = "https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context-v1.8.jsonld"
# Any published version of the core context is recognised and never fetched.
_CORE_URL_RE = re.compile(
    r"^https?://uri\.etsi\.org/ngsi-ld/(v\d+(\.\d+)*/)?ngsi-ld-core-context(-v\d+(\.\d+)*)?\.jsonld$"
)

# Terms of the core context that user contexts cannot redefine (they are @protected).
CORE_TERMS: dict[str, str] = {
    "id": "@id",
    "type": "@type",
    "value": NGSI_LD + "hasValue",
    "object": NGSI_LD + "hasObject",
    "languageMap": NGSI_LD + "hasLanguageMap",
    "Property": NGSI_LD + "Property",
    "Relationship": NGSI_LD + "Relationship",
    "GeoProperty": NGSI_LD + "GeoProperty",
    "LanguageProperty": NGSI_LD + "LanguageProperty",
    "observedAt": NGSI_LD + "observedAt",
    "unitCode": NGSI_LD + "unitCode",
    "datasetId": NGSI_LD + "datasetId",
    "instanceId": NGSI_LD + "instanceId",
    "createdAt": NGSI_LD + "createdAt",
    "modifiedAt": NGSI_LD + "modifiedAt",
    "location": NGSI_LD + "location",
    "observationSpace": NGSI_LD + "observationSpace",
    "operationSpace": NGSI_LD + "operationSpace",
    "scope": NGSI_LD + "scope",
    "Subscription": NGSI_LD + "Subscription",
    "Notification": NGSI_LD + "Notification",
    "notifiedAt": NGSI_LD + "notifiedAt",
    "subscriptionId": NGSI_LD + "subscriptionId",
    "data": NGSI_LD + "data",
}
_CORE_REVERSE = {iri: term for term, iri in CORE_TERMS.items()}


def is_core_context_url(url: str) -> bool:
    return bool(_CORE_URL_RE.match(url))


def _is_absolute_iri(value: str) -> bool:
    return bool(re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", value)) and not value.startswith("_:")


@dataclass(frozen=True)
class LdContext:
    """A resolved context: user term definitions layered over the core context."""

    terms: Mapping[str, str] = field(default_factory=dict)
    vocab: str = DEFAULT_VOCAB
    sources: tuple[str, ...] = ()

    @classmethod
    def from_terms(cls, terms: Mapping[str, str], vocab: str = DEFAULT_VOCAB) -> LdContext:
        return cls(terms=dict(terms), vocab=vocab)

    @classmethod
    def from_documents(
        cls, docs: list[Mapping[str, Any]], sources: tuple[str, ...] = ()
    ) -> LdContext:
        """Build from inline context objects, in order (later definitions win)."""
        raw: dict[str, Any] = {}
        vocab = DEFAULT_VOCAB
        for doc in docs:
            for key, val in doc.items():
                if key == "@vocab" and isinstance(val, str):
                    vocab = val
                elif not key.startswith("@"):
                    raw[key] = val
        prefixes = {k: v for k, v in raw.items() if isinstance(v, str) and _is_absolute_iri(v)}
        terms: dict[str, str] = {}
        for key, val in raw.items():
            if key in CORE_TERMS:
                continue
            iri = val.get("@id") if isinstance(val, dict) else val
            if not isinstance(iri, str):
                continue
            terms[key] = _expand_prefix(iri, prefixes, vocab)
        return cls(terms=terms, vocab=vocab, sources=sources)

    @property
    def is_core(self) -> bool:
        return not self.terms and self.vocab == DEFAULT_VOCAB

    def expand(self, term: str) -> str:
        """Expand a term (attribute name or type) to an absolute IRI."""
        if term in CORE_TERMS:
            return CORE_TERMS[term]
        if term in self.terms:
            return self.terms[term]
        prefix, colon, rest = term.partition(":")
        if colon and prefix in self.terms and not rest.startswith("//"):
            return self.terms[prefix] + rest  # a compact IRI such as 'ex:pressure'
        if _is_absolute_iri(term):
            return term
        return self.vocab + term

    def compact(self, iri: str) -> str:
        """Compact an absolute IRI to the shortest term this context knows."""
        if iri in _CORE_REVERSE:
            return _CORE_REVERSE[iri]
        for term, full in self.terms.items():
            if full == iri and term not in CORE_TERMS:
                return term
        rest = iri[len(self.vocab) :] if iri.startswith(self.vocab) else ""
        # Only shorten to a name that expands back to this IRI: not one a term (of this
        # context or the core) defines otherwise, nor one that reads as an IRI itself.
        clash = rest in self.terms or rest in CORE_TERMS
        if rest and not clash and not any(c in rest for c in "/:#"):
            return rest
        return iri

    def to_canonical(self, term: str) -> str:
        """The stored form of a term sent under this context."""
        if self.is_core:
            return term
        return CORE.compact(self.expand(term))

    def from_canonical(self, name: str) -> str:
        """The form of a stored name a client using this context should see."""
        if self.is_core:
            return name
        return self.compact(CORE.expand(name))


def _expand_prefix(iri: str, prefixes: Mapping[str, str], vocab: str) -> str:
    if ":" in iri:
        prefix, _, rest = iri.partition(":")
        if prefix in prefixes and not rest.startswith("//"):
            return prefixes[prefix] + rest
        return iri
    return vocab + iri


CORE = LdContext()
