"""JSON-LD contexts: expansion, compaction and the canonical names Civica stores."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from civica.core.ldcontext import (
    CORE,
    CORE_TERMS,
    DEFAULT_VOCAB,
    NGSI_LD,
    LdContext,
    is_core_context_url,
)

EX = "http://example.org/ns/"


def test_the_core_context_is_identity() -> None:
    assert CORE.is_core
    for name in ("temperature", "location", "http://example.org/x", "ex:y"):
        assert CORE.to_canonical(name) == name
        assert CORE.from_canonical(name) == name


def test_core_expansion_and_compaction() -> None:
    assert CORE.expand("location") == NGSI_LD + "location"
    assert CORE.expand("observedAt") == NGSI_LD + "observedAt"
    assert CORE.expand("temperature") == DEFAULT_VOCAB + "temperature"
    assert CORE.expand("urn:x:y") == "urn:x:y"
    assert CORE.expand("https://schema.org/name") == "https://schema.org/name"
    assert CORE.compact(NGSI_LD + "location") == "location"
    assert CORE.compact(DEFAULT_VOCAB + "temperature") == "temperature"
    assert CORE.compact(DEFAULT_VOCAB + "a/b") == DEFAULT_VOCAB + "a/b"
    assert CORE.compact("https://schema.org/name") == "https://schema.org/name"


def test_doc_example() -> None:
    ctx = LdContext.from_terms({"temp": DEFAULT_VOCAB + "temperature"})
    assert not ctx.is_core
    assert ctx.to_canonical("temp") == "temperature"
    assert ctx.from_canonical("temperature") == "temp"


def test_from_documents_terms_prefixes_and_ids() -> None:
    ctx = LdContext.from_documents(
        [
            {
                "ex": EX,
                "schema": "https://schema.org/",
                "temp": "ex:temperature",
                "name": {"@id": "schema:name", "@type": "@id"},
                "full": "https://other.org/full",
                "plain": "relative",
                "ignored": 5,
                "noId": {"@type": "@id"},
                "@version": 1.1,
            }
        ],
        sources=("https://example.org/ctx.jsonld",),
    )
    assert ctx.terms["temp"] == EX + "temperature"
    assert ctx.terms["name"] == "https://schema.org/name"
    assert ctx.terms["full"] == "https://other.org/full"
    assert ctx.terms["plain"] == DEFAULT_VOCAB + "relative"
    assert "ignored" not in ctx.terms
    assert "noId" not in ctx.terms
    assert "@version" not in ctx.terms
    assert ctx.sources == ("https://example.org/ctx.jsonld",)
    assert ctx.to_canonical("temp") == EX + "temperature"
    assert ctx.from_canonical(EX + "temperature") == "temp"
    assert ctx.to_canonical("unknown") == "unknown"  # default vocabulary


def test_compact_iris_expand_like_their_full_form() -> None:
    ctx = LdContext.from_documents([{"ex": EX}])
    assert ctx.expand("ex:pressure") == EX + "pressure"
    assert ctx.to_canonical("ex:pressure") == ctx.to_canonical(EX + "pressure") == EX + "pressure"
    # A scheme that is not a declared prefix, or '//' after the colon, stays an IRI.
    assert ctx.expand("urn:ngsi-ld:x") == "urn:ngsi-ld:x"
    assert ctx.expand("ex://host/x") == "ex://host/x"


def test_later_documents_win_and_vocab() -> None:
    ctx = LdContext.from_documents(
        [{"temp": EX + "t1", "@vocab": "https://vocab.one/"}, {"temp": EX + "t2"}]
    )
    assert ctx.terms["temp"] == EX + "t2"
    assert ctx.vocab == "https://vocab.one/"
    assert ctx.expand("other") == "https://vocab.one/other"
    assert ctx.to_canonical("other") == "https://vocab.one/other"
    assert ctx.from_canonical("https://vocab.one/other") == "other"


def test_core_terms_are_protected() -> None:
    ctx = LdContext.from_documents([{"location": EX + "where", "observedAt": EX + "when"}])
    assert "location" not in ctx.terms
    assert ctx.expand("location") == NGSI_LD + "location"
    assert ctx.to_canonical("location") == "location"
    assert ctx.is_core


def test_compaction_never_yields_a_term_that_means_something_else() -> None:
    # 'temperature' is redefined: the default-vocabulary temperature must not come back
    # under the same short name as the redefined one.
    ctx = LdContext.from_terms({"temperature": EX + "temp"})
    mine = ctx.from_canonical(EX + "temp")
    theirs = ctx.from_canonical("temperature")
    assert mine == "temperature"
    assert theirs != mine
    assert ctx.to_canonical(theirs) == "temperature"
    # The same holds for the core context's own protected terms.
    odd = DEFAULT_VOCAB + "location"
    assert CORE.expand(CORE.compact(odd)) == odd


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context.jsonld", True),
        ("https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context-v1.8.jsonld", True),
        ("http://uri.etsi.org/ngsi-ld/ngsi-ld-core-context.jsonld", True),
        ("https://uri.etsi.org/ngsi-ld/v1.3/ngsi-ld-core-context-v1.3.jsonld", True),
        ("https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context.json", False),
        ("https://example.org/ngsi-ld/v1/ngsi-ld-core-context.jsonld", False),
        ("https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context.jsonld?x=1", False),
    ],
)
def test_core_context_urls(url: str, expected: bool) -> None:
    assert is_core_context_url(url) is expected


# ---- properties ---------------------------------------------------------------------------

# A small pool of names (some of them core terms) so that collisions are common.
local_names = st.one_of(
    st.sampled_from(["temperature", "flow", "ex", "location", "observedAt", "type", "a"]),
    st.from_regex(r"[A-Za-z][A-Za-z0-9_]{0,6}", fullmatch=True),
)
iris = st.one_of(
    local_names.map(lambda n: DEFAULT_VOCAB + n),
    local_names.map(lambda n: EX + n),
    local_names.map(lambda n: "https://vocab.one/" + n),
    st.sampled_from(sorted(CORE_TERMS.values())).filter(lambda i: i.startswith("http")),
    local_names.map(lambda n: "urn:x:" + n),
)
contexts = st.builds(
    LdContext.from_terms,
    st.dictionaries(local_names, iris, max_size=6).map(
        lambda d: {k: v for k, v in d.items() if k not in CORE_TERMS}
    ),
    st.sampled_from([DEFAULT_VOCAB, "https://vocab.one/"]),
)


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(contexts, iris)
def test_compaction_is_undone_by_expansion(ctx: LdContext, iri: str) -> None:
    assert ctx.expand(ctx.compact(iri)) == iri


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(contexts, st.one_of(local_names, iris))
def test_canonical_names_survive_a_trip_through_any_context(ctx: LdContext, term: str) -> None:
    canonical = CORE.compact(CORE.expand(term))
    assert ctx.to_canonical(ctx.from_canonical(canonical)) == canonical
