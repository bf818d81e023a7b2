"""NGSI-LD subscriptions (5.8, 6.10-6.11): create, list, retrieve, update, delete.

Bodies are validated strictly: an unknown or unsupported member is a BadRequestData error,
not silently ignored. Names are stored canonical (see ``api.notifier`` for the record), so
matching never needs the client's @context; the context is kept to name things in
notifications the way the subscriber does.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import httpx
from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from civica.api.http import (
    JSON,
    JSON_LD,
    json_response,
    negotiate,
    options_of,
    read_body,
    read_context,
    tenant_of,
    with_context,
)
from civica.api.ngsi_ld.schemas import body
from civica.api.notifier import NotifierSettings, Stats, notifier_for
from civica.api.services import Services, services
from civica.core.entity import check_name
from civica.core.ldcontext import LdContext
from civica.core.problems import TOO_MANY_RESULTS, Problem, bad_request, not_found
from civica.core.query import BoolOp, Node, Term, parse_q
from civica.core.timefmt import format_time, parse_time, utcnow

router = APIRouter(prefix="/subscriptions", tags=["subscriptions"])

FORMATS = ("normalized", "keyValues")
ACCEPTS = (JSON, JSON_LD)
MAX_THROTTLING = 86_400.0
MAX_URI = 2048
_URI_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:[^\s<>\"]+$")
_MEMBERS = frozenset({
    "id", "type", "@context", "subscriptionName", "description", "entities", "watchedAttributes",
    "q", "notification", "throttling", "isActive", "expiresAt", "jsonldContext",
})  # fmt: skip
_NOTIFICATION_MEMBERS = frozenset({"attributes", "format", "endpoint"})
_ENDPOINT_MEMBERS = frozenset({"uri", "accept"})
_SELECTOR_MEMBERS = frozenset({"type", "id", "idPattern"})
_REMOVABLE = frozenset({  # members a PATCH may remove with null
    "subscriptionName", "description", "entities", "watchedAttributes", "q", "throttling",
    "expiresAt",
})  # fmt: skip

SUBSCRIPTION_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["type", "notification"],
    "properties": {
        "id": {"type": "string", "format": "uri"},
        "type": {"const": "Subscription"},
        "entities": {"type": "array", "items": {"type": "object"}},
        "watchedAttributes": {"type": "array", "items": {"type": "string"}},
        "q": {"type": "string"},
        "notification": {"type": "object"},
        "throttling": {"type": "number", "exclusiveMinimum": 0},
        "isActive": {"type": "boolean"},
        "expiresAt": {"type": "string", "format": "date-time"},
    },
}


# ---- validation: wire (client names) → record (canonical names) ------------------------------
def check_sub_id(value: object) -> str:
    if not isinstance(value, str) or not value or len(value) > 256 or not _URI_RE.match(value):
        raise bad_request("a subscription id must be a URI of at most 256 characters")
    return value


def new_record(
    doc: Any, ctx: LdContext, spec: Any, settings: NotifierSettings, now: datetime
) -> dict[str, Any]:
    """Validate a POSTed subscription into its stored record."""
    if not isinstance(doc, dict):
        raise bad_request("a subscription must be a JSON object")
    if doc.get("type") != "Subscription":
        raise bad_request('a subscription needs "type": "Subscription"')
    sub_id = check_sub_id(doc["id"]) if "id" in doc else f"urn:ngsi-ld:Subscription:{uuid.uuid4()}"
    members = parse_members(doc, ctx, settings, now, partial=False)
    stamp = format_time(now)
    record: dict[str, Any] = {"id": sub_id, "type": "Subscription", "isActive": True}
    record.update(members)
    if spec is not None and "jsonldContext" not in record:
        record["jsonldContext"] = spec
    record.update(createdAt=stamp, modifiedAt=stamp)
    return check_complete(record)


def merged_record(
    old: Mapping[str, Any], members: Mapping[str, Any], now: datetime
) -> dict[str, Any]:
    """PATCH: members replace the old ones (None removes one); ``notification`` merges."""
    record = dict(old)
    if "q" in members:
        record.pop("qNames", None)
    for key, value in members.items():
        if value is None:
            record.pop(key, None)
        elif key == "notification":
            record[key] = {**record.get(key, {}), **value}
        else:
            record[key] = value
    record["modifiedAt"] = format_time(now)
    return check_complete(record)


def check_complete(record: dict[str, Any]) -> dict[str, Any]:
    if not record.get("entities") and not record.get("watchedAttributes"):
        raise bad_request("a subscription needs entities, watchedAttributes or both")
    note = record.get("notification")
    if not isinstance(note, dict) or "endpoint" not in note:
        raise bad_request("a subscription needs notification.endpoint.uri")
    return record


def parse_members(
    doc: Mapping[str, Any],
    ctx: LdContext,
    settings: NotifierSettings,
    now: datetime,
    *,
    partial: bool,
) -> dict[str, Any]:
    """Validate each member present; with ``partial`` a null value means 'remove it'."""
    unknown = sorted(set(doc) - _MEMBERS)
    if unknown:
        raise bad_request(
            f"unsupported subscription member(s) {', '.join(unknown)[:200]}; supported: "
            + ", ".join(sorted(_MEMBERS - {"@context"}))
        )
    out: dict[str, Any] = {}
    for key, raw in doc.items():
        if key in ("id", "type", "@context"):
            continue
        if raw is None:
            if not partial or key not in _REMOVABLE:
                raise bad_request(f"{key} must not be null")
            out[key] = None
        elif key in ("subscriptionName", "description"):
            out[key] = _text(key, raw, 1024)
        elif key == "entities":
            out[key] = _selectors(raw, ctx)
        elif key == "watchedAttributes":
            out[key] = _names(key, raw, ctx)
        elif key == "q":
            out["q"], names = _q(raw, ctx)
            if names:
                out["qNames"] = names
        elif key == "notification":
            out[key] = _notification(raw, ctx, settings, partial)
        elif key == "throttling":
            out[key] = _throttling(raw)
        elif key == "isActive":
            if not isinstance(raw, bool):
                raise bad_request("isActive must be true or false")
            out[key] = raw
        elif key == "expiresAt":
            at = parse_time(raw, "expiresAt")
            if at <= now:
                raise bad_request("expiresAt must be in the future")
            out[key] = format_time(at)
        elif key == "jsonldContext":
            if not isinstance(raw, str) or not raw.startswith(("http://", "https://")):
                raise bad_request("jsonldContext must be an http(s) URL")
            out[key] = raw
    return out


def _text(key: str, raw: Any, limit: int) -> str:
    if not isinstance(raw, str) or len(raw) > limit:
        raise bad_request(f"{key} must be a string of at most {limit} characters")
    return raw


def _selectors(raw: Any, ctx: LdContext) -> list[dict[str, str]]:
    if not isinstance(raw, list) or not raw or len(raw) > 100:
        raise bad_request("entities must be a list of 1 to 100 {type, id?, idPattern?} objects")
    out: list[dict[str, str]] = []
    for item in raw:
        if not isinstance(item, dict) or set(item) - _SELECTOR_MEMBERS:
            raise bad_request("each of entities is an object with type, and id or idPattern")
        kind = item.get("type")
        if not isinstance(kind, str):
            raise bad_request("each of entities needs a type")
        selector = {"type": ctx.to_canonical(check_name(kind, "entity type"))}
        if "id" in item:
            selector["id"] = _entity_id(item["id"])
        elif "idPattern" in item:  # with id present, idPattern is ignored (as the spec says)
            pattern = item["idPattern"]
            if not isinstance(pattern, str) or not pattern or len(pattern) > 256:
                raise bad_request("idPattern must be a regular expression")
            try:
                re.compile(pattern)
            except re.error as err:
                raise bad_request(f"idPattern is not a valid regular expression: {err}") from err
            selector["idPattern"] = pattern
        out.append(selector)
    return out


def _entity_id(value: Any) -> str:
    if not isinstance(value, str) or not _URI_RE.match(value) or len(value) > 256:
        raise bad_request("an entity id in entities must be a URI")
    return value


def _names(key: str, raw: Any, ctx: LdContext) -> list[str]:
    if not isinstance(raw, list) or not raw or not all(isinstance(a, str) for a in raw):
        raise bad_request(f"{key} must be a non-empty list of attribute names")
    return [ctx.to_canonical(check_name(a)) for a in dict.fromkeys(raw)]


def _q(raw: Any, ctx: LdContext) -> tuple[str, dict[str, str]]:
    """The q text as sent, with the canonical name of each name in it that differs."""
    if not isinstance(raw, str):
        raise bad_request("q must be a string")
    names: set[str] = set()
    _q_names(parse_q(raw).root, names)
    canonical = {n: ctx.to_canonical(n) for n in sorted(names)}
    return raw, {n: c for n, c in canonical.items() if n != c}


def _q_names(node: Node, out: set[str]) -> None:
    if isinstance(node, Term):
        out.add(node.path.attribute)
        out.update(node.path.sub_attributes)
    elif isinstance(node, BoolOp):
        for item in node.items:
            _q_names(item, out)


def _notification(
    raw: Any, ctx: LdContext, settings: NotifierSettings, partial: bool
) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise bad_request("notification must be an object")
    unknown = sorted(set(raw) - _NOTIFICATION_MEMBERS)
    if unknown:
        raise bad_request(
            f"unsupported notification member(s) {', '.join(unknown)[:200]}; "
            "supported: attributes, format, endpoint"
        )
    out: dict[str, Any] = {}
    if "attributes" in raw:
        out["attributes"] = _names("notification.attributes", raw["attributes"], ctx)
    if "format" in raw or not partial:
        fmt = raw.get("format", "normalized")
        if fmt not in FORMATS:
            raise bad_request(f"notification.format must be one of {', '.join(FORMATS)}")
        out["format"] = fmt
    if "endpoint" in raw:
        out["endpoint"] = _endpoint(raw["endpoint"], settings)
    elif not partial:
        raise bad_request("notification.endpoint is required")
    return out


def _endpoint(raw: Any, settings: NotifierSettings) -> dict[str, str]:
    if not isinstance(raw, dict) or set(raw) - _ENDPOINT_MEMBERS:
        raise bad_request("notification.endpoint is an object with uri and accept")
    uri = raw.get("uri")
    if not isinstance(uri, str) or len(uri) > MAX_URI:
        raise bad_request("notification.endpoint.uri must be an http or https URL")
    try:
        url = httpx.URL(uri)
    except (httpx.InvalidURL, ValueError) as err:
        raise bad_request(f"notification.endpoint.uri is not a URL: {err}") from err
    if url.scheme not in ("http", "https") or not url.host:
        raise bad_request("notification.endpoint.uri must be an http or https URL with a host")
    if not settings.allows(uri):
        raise bad_request(
            f"notification.endpoint.uri: host {url.host!r} is not among the notification "
            "targets this server allows"
        )
    accept = raw.get("accept", JSON)
    if accept not in ACCEPTS:
        raise bad_request(f"notification.endpoint.accept must be one of {', '.join(ACCEPTS)}")
    return {"uri": uri, "accept": accept}


def _throttling(raw: Any) -> float | int:
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise bad_request("throttling must be a number of seconds")
    if not 0 < raw <= MAX_THROTTLING:
        raise bad_request(f"throttling must be more than 0 and at most {MAX_THROTTLING:g} s")
    return raw


# ---- rendering: record → wire, in the reader's context -----------------------------------
def render_subscription(
    record: Mapping[str, Any], stats: Stats, ctx: LdContext, sys_attrs: bool, now: datetime
) -> dict[str, Any]:
    out: dict[str, Any] = {"id": record["id"], "type": "Subscription"}
    for key in ("subscriptionName", "description"):
        if key in record:
            out[key] = record[key]
    if record.get("entities"):
        out["entities"] = [{**s, "type": ctx.from_canonical(s["type"])} for s in record["entities"]]
    if record.get("watchedAttributes"):
        out["watchedAttributes"] = [ctx.from_canonical(a) for a in record["watchedAttributes"]]
    if record.get("q"):
        out["q"] = record["q"]
    note = dict(record["notification"])
    if note.get("attributes"):
        note["attributes"] = [ctx.from_canonical(a) for a in note["attributes"]]
    note.update(stats.to_record())
    out["notification"] = note
    for key in ("throttling", "expiresAt"):
        if key in record:
            out[key] = record[key]
    out["isActive"] = record.get("isActive", True)
    expires = record.get("expiresAt")
    if expires and parse_time(expires) <= now:
        out["status"] = "expired"
    else:
        out["status"] = "active" if out["isActive"] else "paused"
    if isinstance(record.get("jsonldContext"), str):
        out["jsonldContext"] = record["jsonldContext"]
    if sys_attrs:
        out["createdAt"], out["modifiedAt"] = record["createdAt"], record["modifiedAt"]
    return out


def _page_param(raw: str | None, default: int, name: str) -> int:
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError as err:
        raise bad_request(f"{name} must be a whole number") from err
    if value < 0:
        raise bad_request(f"{name} must not be negative")
    return value


# ---- routes ----------------------------------------------------------------------------------
@router.post(
    "", status_code=201, summary="Create a subscription", openapi_extra=body(SUBSCRIPTION_SCHEMA)
)
async def create_subscription(request: Request, svc: Services = Depends(services)) -> Response:
    svc.keys.require(request.headers.get("Authorization"), "subscribe")
    tenant = tenant_of(request)
    doc, ctx, spec = await read_body(request, svc.resolver)
    notifier = notifier_for(svc)
    record = new_record(doc, ctx, spec, notifier.settings, utcnow())
    await run_in_threadpool(notifier.add, tenant, record)
    return Response(
        status_code=201, headers={"Location": f"/ngsi-ld/v1/subscriptions/{record['id']}"}
    )


@router.get("", summary="List subscriptions")
def list_subscriptions(request: Request, svc: Services = Depends(services)) -> Response:
    svc.keys.require(request.headers.get("Authorization"), "read")
    tenant = tenant_of(request)
    ctx, spec = read_context(request, svc.resolver)
    output = negotiate(request, spec)
    params = request.query_params
    limit = _page_param(params.get("limit"), svc.settings.default_limit, "limit")
    offset = _page_param(params.get("offset"), 0, "offset")
    if limit > svc.settings.max_limit:
        raise Problem(TOO_MANY_RESULTS, f"limit may be at most {svc.settings.max_limit}")
    found = notifier_for(svc).records(tenant)
    sys_attrs = "sysAttrs" in options_of(request)
    now = utcnow()
    items = [
        with_context(render_subscription(r, s, ctx, sys_attrs, now), output)
        for r, s in found[offset : offset + limit]
    ]
    headers = {}
    if (params.get("count") or "").lower() == "true":
        headers["NGSILD-Results-Count"] = str(len(found))
    return json_response(items, output, headers=headers)


@router.get("/{sub_id}", summary="Retrieve a subscription")
def retrieve_subscription(
    sub_id: str, request: Request, svc: Services = Depends(services)
) -> Response:
    svc.keys.require(request.headers.get("Authorization"), "read")
    tenant = tenant_of(request)
    ctx, spec = read_context(request, svc.resolver)
    output = negotiate(request, spec)
    found = notifier_for(svc).get(tenant, check_sub_id(sub_id))
    if found is None:
        raise not_found(f"subscription {sub_id} does not exist")
    sys_attrs = "sysAttrs" in options_of(request)
    shown = render_subscription(found[0], found[1], ctx, sys_attrs, utcnow())
    return json_response(with_context(shown, output), output)


@router.patch(
    "/{sub_id}",
    status_code=204,
    summary="Update a subscription",
    openapi_extra=body({"type": "object"}),
)
async def update_subscription(
    sub_id: str, request: Request, svc: Services = Depends(services)
) -> Response:
    svc.keys.require(request.headers.get("Authorization"), "subscribe")
    tenant = tenant_of(request)
    check_sub_id(sub_id)
    doc, ctx, _ = await read_body(request, svc.resolver)
    if not isinstance(doc, dict) or not set(doc) - {"@context", "id", "type"}:
        raise bad_request("send a JSON object with the members to change")
    if doc.get("id", sub_id) != sub_id:
        raise bad_request("the id in the body differs from the id in the path")
    if doc.get("type", "Subscription") != "Subscription":
        raise bad_request("type must be Subscription")
    notifier = notifier_for(svc)
    now = utcnow()
    members = parse_members(doc, ctx, notifier.settings, now, partial=True)
    await run_in_threadpool(
        notifier.update, tenant, sub_id, lambda old: merged_record(old, members, now)
    )
    return Response(status_code=204)


@router.delete("/{sub_id}", status_code=204, summary="Delete a subscription")
def delete_subscription(
    sub_id: str, request: Request, svc: Services = Depends(services)
) -> Response:
    svc.keys.require(request.headers.get("Authorization"), "subscribe")
    tenant = tenant_of(request)
    if not notifier_for(svc).remove(tenant, check_sub_id(sub_id)):
        raise not_found(f"subscription {sub_id} does not exist")
    return Response(status_code=204)
