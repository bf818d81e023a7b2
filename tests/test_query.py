"""The NGSI-LD ``q`` language: grammar, operators, paths, and what matches what."""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from civica.core.problems import BAD_REQUEST_DATA, Problem
from civica.core.query import MAX_Q_LENGTH, BoolOp, Node, Path, Query, Range, Term, parse_q


def prop(value: Any, **extra: Any) -> dict[str, Any]:
    return {"type": "Property", "value": value, **extra}


SENSOR: dict[str, Any] = {
    "id": "urn:ngsi-ld:WaterQualityObserved:river-3",
    "type": "WaterQualityObserved",
    "temperature": prop(
        14.5,
        observedAt="2026-03-01T08:00:00.000Z",
        unitCode="CEL",
        accuracy=prop(0.2, method=prop("calibrated")),
    ),
    "pH": prop(7),
    "status": prop("ok"),
    "online": prop(True),
    "zero": prop(0),
    "tags": prop(["river", "north", 3]),
    "address": prop({"city": "Gent", "geo": {"lat": 51.05, "zone": "B"}, "list": [1, 2]}),
    "refDevice": {"type": "Relationship", "object": "urn:ngsi-ld:Device:probe-1"},
    "label": {"type": "LanguageProperty", "languageMap": {"nl": "rivier", "en": "river"}},
    "location": {"type": "GeoProperty", "value": {"type": "Point", "coordinates": [3.7, 51.0]}},
}


def matches(text: str, entity: dict[str, Any] = SENSOR) -> bool:
    return parse_q(text).matches(entity)


# ---- grammar ------------------------------------------------------------------------------


def test_and_binds_tighter_than_or() -> None:
    a, b, c = (Term(Path(n), "==", 1) for n in "abc")
    assert parse_q("a==1;b==1|c==1").root == BoolOp("or", (BoolOp("and", (a, b)), c))
    assert parse_q("a==1|b==1;c==1").root == BoolOp("or", (a, BoolOp("and", (b, c))))
    assert parse_q("a==1;(b==1|c==1)").root == BoolOp("and", (a, BoolOp("or", (b, c))))
    assert parse_q("((a==1))").root == a
    assert parse_q("a==1;b==1;c==1").root == BoolOp("and", (a, b, c))


def test_paths_sub_attributes_and_compound_keys() -> None:
    assert parse_q("a").root == Term(Path("a"))
    assert parse_q("a.b.c>1").root == Term(Path("a", ("b", "c")), ">", 1)
    assert parse_q("a[x.y]==1").root == Term(Path("a", (), ("x", "y")), "==", 1)
    assert parse_q("a.b[x]!=1").root == Term(Path("a", ("b",), ("x",)), "!=", 1)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("a==1", 1),
        ("a==-2", -2),
        ("a==1.5", 1.5),
        ("a==-1.5e3", -1500.0),
        ('a=="1"', "1"),
        ('a=="x;y|z)"', "x;y|z)"),
        ('a=="say \\"hi\\""', 'say "hi"'),
        ("a==true", True),
        ("a==false", False),
        ("a==2026-03-01T08:00:00Z", "2026-03-01T08:00:00.000Z"),
        ("a==2026-03-01T09:00:00.5+01:00", "2026-03-01T08:00:00.500Z"),
        ("a==2026-03-01T08:00:00", "2026-03-01T08:00:00"),  # no zone: plain text
        ("a==urn:ngsi-ld:Device:1", "urn:ngsi-ld:Device:1"),
        ("a==1..5", Range(1, 5)),
        ('a=="a".."m"', Range("a", "m")),
        ("a==0.5..1.5", Range(0.5, 1.5)),
        ("a==1,2,3", (1, 2, 3)),
        ('a=="x",true,4', ("x", True, 4)),
    ],
)
def test_values(text: str, value: Any) -> None:
    term = parse_q(text).root
    assert isinstance(term, Term)
    assert term.value == value
    assert type(term.value) is type(value)


@pytest.mark.parametrize("text", ["a==1_000", "a<nan", "a<inf", "a==0x10", "a==\u0661"])
def test_only_json_numbers_are_numbers(text: str) -> None:
    # Python's int()/float() accept these; NGSI-LD does not, so they stay text.
    term = parse_q(text).root
    assert isinstance(term, Term)
    assert isinstance(term.value, str)


def test_regex_values_compile() -> None:
    term = parse_q('a~="^ri(v|b)er$"').root
    assert isinstance(term, Term)
    assert term.op == "~="
    assert isinstance(term.value, re.Pattern)
    assert term.value.pattern == "^ri(v|b)er$"
    bare = parse_q("a!~=^x.*").root
    assert isinstance(bare, Term)
    assert bare.value.pattern == "^x.*"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "x" * (MAX_Q_LENGTH + 1),
        "a==",
        "==1",
        "(a==1",
        "a==1)",
        "a==1;",
        "a==1|",
        "a==1;;b==2",
        "()",
        "a[x",
        "a[]==1",
        "a[x..y]==1",
        "a.==1",
        'a=="unterminated',
        'a~="("',
        "a>1..5",
        "a<1,2",
        "a==1..",
        "a == 1",
    ],
)
def test_syntax_errors_are_bad_request_data(text: str) -> None:
    with pytest.raises(Problem) as err:
        parse_q(text)
    assert err.value.kind is BAD_REQUEST_DATA
    assert err.value.status == 400


def test_the_longest_q_allowed() -> None:
    text = "a==1;" * ((MAX_Q_LENGTH - 4) // 5) + "a==1"
    assert len(text) <= MAX_Q_LENGTH
    assert parse_q(text).matches({"a": prop(1)})


def test_attributes_and_rename() -> None:
    q = parse_q("temp.accuracy>1;(status==1|addr[city.name]==2)")
    assert q.attributes() == {"temp", "status", "addr"}
    renamed = q.rename(str.upper)
    assert renamed.attributes() == {"TEMP", "STATUS", "ADDR"}
    assert renamed.text == q.text
    assert renamed.matches(
        {"TEMP": prop(0, ACCURACY=prop(2)), "STATUS": prop(0), "ADDR": prop({"city": {"name": 2}})}
    )
    # Compound keys address inside a value, which is not renamed.
    term = parse_q("a[city]==1").rename(str.upper).root
    assert isinstance(term, Term)
    assert term.path == Path("A", (), ("city",))


# ---- matching -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("temperature==14.5", True),
        ("temperature==14", False),
        ("pH==7", True),
        ("pH==7.0", True),
        ("pH!=7", False),
        ("pH!=8", True),
        ("temperature>14.5", False),
        ("temperature>=14.5", True),
        ("temperature<15", True),
        ("temperature<=14.4", False),
        ("zero==0", True),
        ("zero<1", True),
        ("zero", True),
        ('status=="ok"', True),
        ("status==ok", True),
        ('status!="ok"', False),
        ('status>"a"', True),
        ('status<"ok"', False),
        ('status=="OK"', False),
        ("online==true", True),
        ("online==1", False),
        ("pH==true", False),
        ('pH=="7"', False),
        ("temperature==10..15", True),
        ("temperature==14.5..20", True),
        ("temperature==0..14.5", True),
        ("temperature==14.6..20", False),
        ("temperature!=10..15", False),
        ("temperature!=15..20", True),
        ('status=="bad","ok"', True),
        ('status=="bad","worse"', False),
        ('status!="bad","ok"', False),
        ('status!="bad","worse"', True),
        ('status~="^o"', True),
        ('status~="^k"', False),
        ('status!~="^o"', False),
        ('status!~="x"', True),
        ("status~=k", True),
        ('id=="urn:ngsi-ld:WaterQualityObserved:river-3"', True),
        ("id~=river", True),
        ("type==WaterQualityObserved", True),
        ("type==Device", False),
    ],
)
def test_comparisons(text: str, expected: bool) -> None:
    assert matches(text) is expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("tags==north", True),
        ("tags==south", False),
        ("tags==3", True),
        ("tags>2", True),
        ("tags>3", False),
        ("tags!=north", False),
        ("tags!=south", True),
        ('tags~="^ri"', True),
    ],
)
def test_list_values_match_if_any_element_does(text: str, expected: bool) -> None:
    assert matches(text) is expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("temperature.observedAt>=2026-03-01T08:00:00Z", True),
        ("temperature.observedAt==2026-03-01T08:00:00Z", True),
        ("temperature.observedAt==2026-03-01T09:00:00+01:00", True),
        ("temperature.observedAt>2026-03-01T07:59:59.9Z", True),
        ("temperature.observedAt<2026-03-01T08:00:00.001Z", True),
        ("temperature.observedAt>2026-03-01T08:00:00.000Z", False),
        ("temperature.observedAt==2026-03-01T07:00:00Z..2026-03-01T08:00:00Z", True),
        ('temperature.observedAt=="2026-03-01T08:00:00Z"', False),
        ("temperature.unitCode==CEL", True),
        ("temperature.accuracy<0.5", True),
        ("temperature.accuracy>0.5", False),
        ("temperature.accuracy.method==calibrated", True),
        ("temperature.accuracy.nothing", False),
        ("temperature.missing==1", False),
        ("pH.observedAt", False),
        ("address[city]==Gent", True),
        ("address[geo.lat]>51", True),
        ("address[geo.zone]==A,B", True),
        ("address[geo.missing]==1", False),
        ("address[city.deeper]==1", False),
        ("address[list]==2", True),
        ("address[nope]", False),
        ("address[city]", True),
        ("refDevice==urn:ngsi-ld:Device:probe-1", True),
        ('refDevice~="probe"', True),
        ("label[en]==river", True),
        ("location", True),
    ],
)
def test_paths_match(text: str, expected: bool) -> None:
    assert matches(text) is expected


@pytest.mark.parametrize(
    "text", ["nothing", "nothing==1", "nothing!=1", "nothing!=1..2", 'nothing!~="x"', "nothing<1"]
)
def test_a_missing_attribute_matches_no_comparison(text: str) -> None:
    assert matches(text) is False


def test_boolean_logic() -> None:
    assert matches("pH==7;status==ok")
    assert not matches("pH==7;status==bad")
    assert matches("pH==8|status==ok")
    assert not matches("pH==8|status==bad")
    assert matches("(pH==8|status==ok);(online==true;zero==0)")
    assert not matches("pH==8|(status==ok;online==false)")


def test_a_non_entity_shaped_attribute_is_missing() -> None:
    odd = {"id": "urn:x", "type": "T", "plain": 5, "noValue": {"type": "Property"}}
    assert not matches("plain==5", odd)
    assert not matches("plain", odd)
    assert not matches("noValue", odd)


def test_doc_example() -> None:
    q = parse_q('temperature>20;status=="ok"')
    assert isinstance(q, Query)
    assert q.matches({"temperature": prop(21), "status": prop("ok")})
    assert not q.matches({"temperature": prop(20), "status": prop("ok")})


# ---- properties ---------------------------------------------------------------------------

names = st.from_regex(r"[a-zA-Z][a-zA-Z0-9_]{0,7}", fullmatch=True)
numbers = st.one_of(
    st.integers(-(10**12), 10**12),
    st.floats(allow_nan=False, allow_infinity=False),
)
texts = st.text(st.characters(exclude_characters='"\\', exclude_categories=("Cs",)), max_size=8)
scalars = st.one_of(numbers, texts, st.booleans())


def render_scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    return repr(value)


@st.composite
def terms(draw: st.DrawFn) -> Term:
    path = Path(
        draw(names),
        tuple(draw(st.lists(names, max_size=2))),
        tuple(draw(st.lists(names, max_size=2))),
    )
    op = draw(st.sampled_from([None, "==", "!=", "<", "<=", ">", ">=", "~=", "!~="]))
    if op is None:
        return Term(path)
    if op in ("~=", "!~="):
        pattern = draw(st.sampled_from(["^a", "b+", "x|y", "[0-9]{2}", ".*"]))
        return Term(path, op, re.compile(pattern))
    if op in ("==", "!="):
        shape = draw(st.sampled_from(["scalar", "range", "list"]))
        if shape == "range":
            return Term(path, op, Range(draw(scalars), draw(scalars)))
        if shape == "list":
            return Term(path, op, tuple(draw(st.lists(scalars, min_size=2, max_size=4))))
    return Term(path, op, draw(scalars))


nodes: st.SearchStrategy[Node] = st.recursive(
    terms(),
    lambda inner: st.builds(
        BoolOp, st.sampled_from(["and", "or"]), st.lists(inner, min_size=2, max_size=3).map(tuple)
    ),
    max_leaves=8,
)


def render(node: Node) -> str:
    if isinstance(node, BoolOp):
        sep = ";" if node.op == "and" else "|"
        return sep.join(
            f"({render(i)})" if isinstance(i, BoolOp) else render(i) for i in node.items
        )
    p = node.path
    text = ".".join((p.attribute, *p.sub_attributes))
    if p.compound:
        text += "[" + ".".join(p.compound) + "]"
    if node.op is None:
        return text
    value = node.value
    if isinstance(value, re.Pattern):
        rendered = f'"{value.pattern}"'
    elif isinstance(value, Range):
        rendered = f"{render_scalar(value.low)}..{render_scalar(value.high)}"
    elif isinstance(value, tuple):
        rendered = ",".join(render_scalar(v) for v in value)
    else:
        rendered = render_scalar(value)
    return f"{text}{node.op}{rendered}"


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(nodes)
def test_parse_inverts_render(node: Node) -> None:
    text = render(node)
    if len(text) > MAX_Q_LENGTH:
        return
    assert parse_q(text).root == node


values = st.one_of(st.integers(-3, 3), st.sampled_from([0.5, "a", "b", True, False]))
simple_terms = st.builds(
    lambda op, v: f"x{op}{render_scalar(v)}",
    st.sampled_from(["==", "!=", "<", "<=", ">", ">="]),
    values,
)


@settings(max_examples=200, deadline=None, derandomize=True, database=None)
@given(
    st.one_of(st.none(), values),
    st.one_of(st.none(), values),
    simple_terms,
    simple_terms.map(lambda t: "y" + t[1:]),
)
def test_and_or_compose_like_boolean_algebra(x: Any, y: Any, p: str, q: str) -> None:
    entity: dict[str, Any] = {"id": "urn:x", "type": "T"}
    if x is not None:
        entity["x"] = prop(x)
    if y is not None:
        entity["y"] = prop(y)
    left, right = matches(p, entity), matches(q, entity)
    assert matches(f"{p};{q}", entity) is (left and right)
    assert matches(f"{p}|{q}", entity) is (left or right)
    assert matches(f"({p}|{q});{p}", entity) is left


@settings(max_examples=200, deadline=None, derandomize=True, database=None)
@given(st.one_of(st.integers(-5, 5), st.floats(-5, 5)), st.integers(-5, 5), st.integers(-5, 5))
def test_numeric_comparisons_agree_with_arithmetic(actual: float, low: int, high: int) -> None:
    entity = {"n": prop(actual)}
    assert matches(f"n<{low}", entity) is (actual < low)
    assert matches(f"n>={low}", entity) is (actual >= low)
    assert matches(f"n=={low}..{high}", entity) is (low <= actual <= high)
    assert matches(f"n!={low}..{high}", entity) is not (low <= actual <= high)
    assert matches(f"n=={low},{high}", entity) is (actual in (low, high))
