"""HTTP plumbing shared by the routers: tenants, content negotiation, bodies, responses."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson
from fastapi import Request
from fastapi.responses import Response

from civica.api.contexts import ContextResolver, context_url_for_output
from civica.core.ldcontext import CORE, LdContext
from civica.core.problems import (
    NONEXISTENT_TENANT,
    NOT_ACCEPTABLE,
    UNSUPPORTED_MEDIA_TYPE,
    Problem,
    bad_request,
    invalid_request,
)
from civica.core.store import DEFAULT_TENANT

JSON = "application/json"
JSON_LD = "application/ld+json"
GEO_JSON = "application/geo+json"
CONTEXT_REL = "http://www.w3.org/ns/json-ld#context"
_TENANT_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_LINK_RE = re.compile(r"<([^>]*)>\s*((?:;\s*[^;,]+)*)")


def tenant_of(request: Request) -> str:
    raw = request.headers.get("NGSILD-Tenant")
    if raw is None or raw == "":
        return DEFAULT_TENANT
    if not _TENANT_RE.match(raw):
        raise bad_request("NGSILD-Tenant must be 1-64 letters, digits, '-' or '_'")
    return raw


def require_known_tenant(tenant: str, known: set[str]) -> None:
    """Reads of a tenant that has never been written are NonexistentTenant (404)."""
    if tenant != DEFAULT_TENANT and tenant not in known:
        raise Problem(NONEXISTENT_TENANT, f"tenant {tenant!r} does not exist")


def link_context(request: Request) -> str | None:
    """The @context URL of a ``Link: <...>; rel=".../json-ld#context"`` header, if any."""
    header = request.headers.get("Link")
    if not header:
        return None
    for match in _LINK_RE.finditer(header):
        url, params = match.group(1), match.group(2)
        if CONTEXT_REL in params:
            return url.strip()
    return None


@dataclass
class Output:
    """How to answer: JSON (context in a Link header), JSON-LD (in the body) or GeoJSON."""

    media_type: str
    context_spec: Any

    @property
    def ld(self) -> bool:
        return self.media_type == JSON_LD


def negotiate(request: Request, context_spec: Any, allow_geojson: bool = False) -> Output:
    accept = request.headers.get("Accept", "*/*").lower()
    if allow_geojson and GEO_JSON in accept:
        return Output(GEO_JSON, context_spec)
    if JSON_LD in accept:
        return Output(JSON_LD, context_spec)
    if JSON in accept or "*/*" in accept or "application/*" in accept or not accept.strip():
        return Output(JSON, context_spec)
    raise Problem(
        NOT_ACCEPTABLE,
        f"cannot answer in {accept[:80]!r}; accept application/json, "
        "application/ld+json" + (" or application/geo+json" if allow_geojson else ""),
    )


def read_context(request: Request, resolver: ContextResolver) -> tuple[LdContext, Any]:
    """The context of a GET: from the Link header, else the core context."""
    url = link_context(request)
    if url is None:
        return CORE, None
    return resolver.resolve(url), url


async def read_body(
    request: Request, resolver: ContextResolver, *, needs_context: bool = True
) -> tuple[Any, LdContext, Any]:
    """Parse a JSON / JSON-LD body; return (document, resolved context, context spec).

    ``needs_context=False`` is for bodies with no terms to expand (a batch delete's list of
    ids), which a JSON-LD client may still send as application/ld+json without an @context.
    """
    ctype = request.headers.get("Content-Type", "").split(";")[0].strip().lower()
    if ctype not in (JSON, JSON_LD, "application/merge-patch+json"):
        raise Problem(
            UNSUPPORTED_MEDIA_TYPE,
            f"Content-Type {ctype or '(none)'!r} not supported; send application/json "
            "or application/ld+json",
        )
    raw = await request.body()
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as err:
        raise invalid_request(f"the body is not valid JSON: {err}") from err
    link = link_context(request)
    if ctype == JSON_LD:
        if link is not None:
            raise bad_request(
                "with application/ld+json the @context goes in the body, not in a Link header"
            )
        spec = _body_context(doc)
        if spec is None and needs_context:
            raise bad_request("an application/ld+json body must carry an @context")
    else:
        spec = link
    return doc, resolver.resolve(spec), spec


def _body_context(doc: Any) -> Any:
    if isinstance(doc, dict):
        return doc.get("@context")
    if isinstance(doc, list) and doc and isinstance(doc[0], dict):
        return doc[0].get("@context")
    return None


def json_response(
    content: Any,
    output: Output | None = None,
    status: int = 200,
    headers: dict[str, str] | None = None,
) -> Response:
    media = output.media_type if output else JSON
    hdrs = dict(headers or {})
    if output is not None and media == JSON and output.context_spec is not None:
        hdrs["Link"] = f'<{output.context_spec}>; rel="{CONTEXT_REL}"; type="application/ld+json"'
    return Response(orjson.dumps(content), status_code=status, media_type=media, headers=hdrs)


def with_context(body: dict[str, Any], output: Output) -> dict[str, Any]:
    if output.ld:
        return {**body, "@context": context_url_for_output(output.context_spec)}
    return body


def comma_list(value: str | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    items = tuple(v.strip() for v in value.split(",") if v.strip())
    if not items:
        raise bad_request("an empty list was given")
    return items


def options_of(request: Request) -> set[str]:
    out: set[str] = set()
    for key in ("options", "format"):
        raw = request.query_params.get(key)
        if raw:
            out.update(v.strip() for v in raw.split(","))
    if "simplified" in out:
        out.add("keyValues")
    return out
