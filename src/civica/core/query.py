"""The NGSI-LD query language (``q``, ETSI GS CIM 009 clause 4.9): parse once, match many.

``;`` is AND and binds tighter than ``|`` (OR); parentheses group. Comparisons: ``==``,
``!=``, ``<``, ``<=``, ``>``, ``>=``, ``~=`` (regex), ``!~=``; ``==`` and ``!=`` also take
value lists ``a,b`` and ranges ``a..b``. A bare attribute path tests existence.

>>> q = parse_q('temperature>20;status=="ok"')
>>> q.matches({"temperature": {"type": "Property", "value": 21},
...            "status": {"type": "Property", "value": "ok"}})
True
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from civica.core.problems import TOO_COMPLEX_QUERY, Problem, bad_request
from civica.core.timefmt import normalise_time

MAX_Q_LENGTH = 2048
MAX_Q_DEPTH = 32  # nested parentheses; deeper input would exhaust the parser's stack
_OPS = ("==", "!=", ">=", "<=", "!~=", "~=", ">", "<")
# Python's int()/float() also take '1_000', 'nan', 'inf' and non-ASCII digits; q does not.
_NUMBER_RE = re.compile(r"-?[0-9]+(\.[0-9]+)?([eE][+-]?[0-9]+)?")
_DATETIME_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T")


@dataclass(frozen=True)
class Path:
    """``attr(.sub)*([compound.key])?``: attribute, sub-attributes, then a path inside a value."""

    attribute: str
    sub_attributes: tuple[str, ...] = ()
    compound: tuple[str, ...] = ()

    def rename(self, fn: Callable[[str], str]) -> Path:
        return Path(fn(self.attribute), tuple(fn(s) for s in self.sub_attributes), self.compound)

    def resolve(self, entity: Mapping[str, Any]) -> tuple[bool, Any]:
        node: Any = entity.get(self.attribute)
        if self.attribute in ("id", "type") and node is not None:
            return True, node
        if not isinstance(node, dict):
            return False, None
        for sub in self.sub_attributes:
            # observedAt / unitCode and real sub-properties are addressed the same way.
            nxt = node.get(sub)
            if nxt is None:
                return False, None
            node = nxt if isinstance(nxt, dict) and "type" in nxt else {"value": nxt}
        value = node.get("value", node.get("object", node.get("languageMap")))
        for key in self.compound:
            if not isinstance(value, dict) or key not in value:
                return False, None
            value = value[key]
        return value is not None, value


@dataclass(frozen=True)
class Range:
    low: Any
    high: Any


@dataclass(frozen=True)
class Term:
    path: Path
    op: str | None = None
    value: Any = None  # a scalar, a tuple of scalars (list), a Range, or a compiled regex

    def matches(self, entity: Mapping[str, Any]) -> bool:
        found, actual = self.path.resolve(entity)
        if not found:
            return False  # NGSI-LD: a missing attribute matches no comparison, not even !=
        if self.op is None:
            return True
        values = actual if isinstance(actual, list) else [actual]
        if self.op == "!=":
            return not any(_equal(v, self.value) for v in values)
        if self.op == "!~=":
            return not any(isinstance(v, str) and self.value.search(v) for v in values)
        return any(_compare(v, self.op, self.value) for v in values)


@dataclass(frozen=True)
class BoolOp:
    op: str  # "and" | "or"
    items: tuple[Node, ...]

    def matches(self, entity: Mapping[str, Any]) -> bool:
        if self.op == "and":
            return all(i.matches(entity) for i in self.items)
        return any(i.matches(entity) for i in self.items)


Node = Term | BoolOp


@dataclass(frozen=True)
class Query:
    root: Node
    text: str

    def matches(self, entity: Mapping[str, Any]) -> bool:
        return self.root.matches(entity)

    def attributes(self) -> set[str]:
        out: set[str] = set()
        _collect(self.root, out)
        return out

    def rename(self, fn: Callable[[str], str]) -> Query:
        return Query(_rename(self.root, fn), self.text)


def _collect(node: Node, out: set[str]) -> None:
    if isinstance(node, Term):
        out.add(node.path.attribute)
    else:
        for item in node.items:
            _collect(item, out)


def _rename(node: Node, fn: Callable[[str], str]) -> Node:
    if isinstance(node, Term):
        return Term(node.path.rename(fn), node.op, node.value)
    return BoolOp(node.op, tuple(_rename(i, fn) for i in node.items))


def _comparable(a: Any, b: Any) -> bool:
    num = (int, float)
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool)
    return (isinstance(a, num) and isinstance(b, num)) or (
        isinstance(a, str) and isinstance(b, str)
    )


def _equal(actual: Any, expected: Any) -> bool:
    if isinstance(expected, Range):
        return _compare(actual, ">=", expected.low) and _compare(actual, "<=", expected.high)
    if isinstance(expected, tuple):
        return any(_equal(actual, e) for e in expected)
    if _comparable(actual, expected):
        return bool(actual == expected)
    return False


def _compare(actual: Any, op: str, expected: Any) -> bool:
    if op == "==":
        return _equal(actual, expected)
    if op == "~=":
        return isinstance(actual, str) and bool(expected.search(actual))
    if not _comparable(actual, expected):
        return False
    if op == ">":
        return bool(actual > expected)
    if op == ">=":
        return bool(actual >= expected)
    if op == "<":
        return bool(actual < expected)
    return bool(actual <= expected)


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.depth = 0

    def fail(self, why: str) -> Exception:
        return bad_request(f"invalid q at position {self.pos}: {why}", q=self.text[:200])

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def parse(self) -> Node:
        node = self.parse_or()
        if self.pos != len(self.text):
            raise self.fail(f"unexpected {self.text[self.pos : self.pos + 10]!r}")
        return node

    def parse_or(self) -> Node:
        items = [self.parse_and()]
        while self.peek() == "|":
            self.pos += 1
            items.append(self.parse_and())
        return items[0] if len(items) == 1 else BoolOp("or", tuple(items))

    def parse_and(self) -> Node:
        items = [self.parse_atom()]
        while self.peek() == ";":
            self.pos += 1
            items.append(self.parse_atom())
        return items[0] if len(items) == 1 else BoolOp("and", tuple(items))

    def parse_atom(self) -> Node:
        if self.peek() == "(":
            self.depth += 1
            if self.depth > MAX_Q_DEPTH:
                raise Problem(TOO_COMPLEX_QUERY, f"q nests parentheses deeper than {MAX_Q_DEPTH}")
            self.pos += 1
            node = self.parse_or()
            if self.peek() != ")":
                raise self.fail("missing ')'")
            self.pos += 1
            self.depth -= 1
            return node
        path = self.parse_path()
        for op in _OPS:
            if self.text.startswith(op, self.pos):
                self.pos += len(op)
                return Term(path, op, self.parse_value(op))
        return Term(path)

    def parse_path(self) -> Path:
        m = re.compile(r"[^\s<>\"'=;()\[\]|!~.,]+").match(self.text, self.pos)
        if not m:
            raise self.fail("expected an attribute name")
        names = [m.group()]
        self.pos = m.end()
        while self.peek() == ".":
            self.pos += 1
            m = re.compile(r"[^\s<>\"'=;()\[\]|!~.,]+").match(self.text, self.pos)
            if not m:
                raise self.fail("expected a sub-attribute name")
            names.append(m.group())
            self.pos = m.end()
        compound: tuple[str, ...] = ()
        if self.peek() == "[":
            end = self.text.find("]", self.pos)
            if end < 0:
                raise self.fail("missing ']'")
            compound = tuple(self.text[self.pos + 1 : end].split("."))
            if not all(compound):
                raise self.fail("empty key in [...]")
            self.pos = end + 1
        return Path(names[0], tuple(names[1:]), compound)

    def parse_value(self, op: str) -> Any:
        if op in ("~=", "!~="):
            raw = self.scalar_text()
            pattern = raw[1:-1] if raw.startswith('"') and raw.endswith('"') else raw
            try:
                return re.compile(pattern)
            except (re.error, OverflowError) as err:  # OverflowError: a{99999999999}
                raise self.fail(f"bad regular expression: {err}") from err
        first = self.scalar()
        if self.text.startswith("..", self.pos):
            if op not in ("==", "!="):
                raise self.fail("a range goes with == or != only")
            self.pos += 2
            return Range(first, self.scalar())
        if self.peek() == ",":
            if op not in ("==", "!="):
                raise self.fail("a value list goes with == or != only")
            values = [first]
            while self.peek() == ",":
                self.pos += 1
                values.append(self.scalar())
            return tuple(values)
        return first

    def scalar_text(self) -> str:
        start = self.pos
        if self.peek() == '"':
            end = self.pos + 1
            while end < len(self.text) and self.text[end] != '"':
                end += 2 if self.text[end] == "\\" else 1
            if end >= len(self.text):
                raise self.fail("unterminated string")
            self.pos = end + 1
            return self.text[start : self.pos]
        while self.pos < len(self.text) and self.text[self.pos] not in ";|),":
            if self.text.startswith("..", self.pos):
                break
            self.pos += 1
        if self.pos == start:
            raise self.fail("expected a value")
        return self.text[start : self.pos]

    def scalar(self) -> Any:
        raw = self.scalar_text()
        if raw.startswith('"'):
            return raw[1:-1].replace('\\"', '"')
        if raw in ("true", "false"):
            return raw == "true"
        if _NUMBER_RE.fullmatch(raw):
            return float(raw) if any(c in raw for c in ".eE") else int(raw)
        if _DATETIME_RE.match(raw):
            # Stored DateTimes are normalised (ms, 'Z'); so is the query's, so that text
            # order is time order whatever precision or offset the client wrote.
            try:
                return normalise_time(raw, "q DateTime")
            except Problem:
                return raw
        return raw  # a URI or other text, compared as text


def parse_q(text: str) -> Query:
    """Parse an NGSI-LD ``q`` expression; raises BadRequestData on a syntax error."""
    if not text or len(text) > MAX_Q_LENGTH:
        raise bad_request(f"q must be 1 to {MAX_Q_LENGTH} characters")
    return Query(_Parser(text).parse(), text)
