"""NGSI-LD entities: create, retrieve, query, replace, merge, delete; attributes of one entity."""

from __future__ import annotations

import re
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from civica.api.http import (
    GEO_JSON,
    JSON,
    comma_list,
    json_response,
    negotiate,
    options_of,
    read_body,
    read_context,
    require_known_tenant,
    tenant_of,
)
from civica.api.ngsi_ld.render import render_entity, render_feature
from civica.api.ngsi_ld.schemas import ENTITY, FRAGMENT, body
from civica.api.services import Services, services
from civica.core.entity import check_entity_id
from civica.core.geo import parse_geo_query
from civica.core.ldcontext import LdContext
from civica.core.problems import TOO_MANY_RESULTS, Problem, bad_request, not_found
from civica.core.query import parse_q
from civica.core.store import EntityQuery

router = APIRouter(tags=["entities"])


def entity_query(
    request: Request, svc: Services, ctx: LdContext, params: dict[str, Any]
) -> EntityQuery:
    """Build an EntityQuery from NGSI-LD query parameters (GET) or a Query body (POST)."""
    types = comma_list(params.get("type"))
    ids = comma_list(params.get("id"))
    attrs = comma_list(params.get("attrs"))
    q_text = params.get("q")
    id_pattern = params.get("idPattern")
    geo = parse_geo_query(
        params.get("georel"),
        params.get("geometry"),
        params.get("coordinates"),
        params.get("geoproperty"),
    )
    if not (types or ids or attrs or q_text or id_pattern or geo):
        raise bad_request("give at least one of type, id, idPattern, attrs, q or a geo-query")
    if id_pattern is not None:
        try:
            re.compile(id_pattern)
        except (re.error, OverflowError) as err:  # OverflowError: a{99999999999}
            raise bad_request(f"idPattern is not a valid regular expression: {err}") from err
    if ids is not None:
        for eid in ids:
            check_entity_id(eid)
    limit = _int(params.get("limit"), svc.settings.default_limit, "limit")
    offset = _int(params.get("offset"), 0, "offset")
    if limit > svc.settings.max_limit:
        raise Problem(TOO_MANY_RESULTS, f"limit may be at most {svc.settings.max_limit}")
    q = parse_q(q_text).rename(ctx.to_canonical) if q_text else None
    if geo is not None and geo.geoproperty != "location":
        geo = type(geo)(
            geo.georel,
            geo.geometry,
            ctx.to_canonical(geo.geoproperty),
            geo.max_distance,
            geo.min_distance,
        )
    return EntityQuery(
        types=tuple(ctx.to_canonical(t) for t in types) if types else None,
        ids=ids,
        id_pattern=id_pattern,
        attrs=tuple(ctx.to_canonical(a) for a in attrs) if attrs else None,
        q=q,
        geo=geo,
        limit=limit,
        offset=offset,
    )


def _int(raw: Any, default: int, name: str) -> int:
    if raw is None:
        return default
    try:
        value = int(raw)
    except (TypeError, ValueError) as err:
        raise bad_request(f"{name} must be a whole number") from err
    if value < 0:
        raise bad_request(f"{name} must not be negative")
    return value


def _strings(values: list[Any], what: str) -> list[str]:
    """Members of a Query body that must be strings (anything else is not a name)."""
    if not all(isinstance(v, str) for v in values):
        raise bad_request(f"{what} must hold strings")
    return values


def _flag(raw: str | None) -> bool:
    return raw is not None and raw.lower() == "true"


def _answer_query(
    request: Request, svc: Services, params: dict[str, Any], ctx: LdContext, spec: Any
) -> Response:
    tenant = tenant_of(request)
    require_known_tenant(tenant, svc.tenants)
    output = negotiate(request, spec, allow_geojson=True)
    query = entity_query(request, svc, ctx, params)
    options = options_of(request)
    headers = {}
    count = _flag(params.get("count"))
    if spec is None and output.media_type == JSON and query.attrs is None and not options:
        # The entities exactly as stored: no need to decode and re-encode each of them.
        docs, total = svc.store.query_entity_documents(tenant, query)
        if count:
            headers["NGSILD-Results-Count"] = str(total)
        body = ("[" + ",".join(docs) + "]").encode()
        return Response(body, media_type=JSON, headers=headers)
    page = svc.store.query_entities(tenant, query)
    if count:
        headers["NGSILD-Results-Count"] = str(page.total)
    attrs = query.attrs
    if output.media_type == GEO_JSON:
        features = [render_feature(s, ctx, options) for s in page.items]
        return json_response(
            {"type": "FeatureCollection", "features": features}, output, headers=headers
        )
    items = [render_entity(s, ctx, output, attrs=attrs, options=options) for s in page.items]
    return json_response(items, output, headers=headers)


@router.get("/entities", summary="Query entities")
def query_entities(request: Request, svc: Services = Depends(services)) -> Response:
    svc.keys.require(request.headers.get("Authorization"), "read")
    ctx, spec = read_context(request, svc.resolver)
    return _answer_query(request, svc, dict(request.query_params), ctx, spec)


@router.post(
    "/entityOperations/query", summary="Query entities (POST)", openapi_extra=body(FRAGMENT)
)
async def post_query(request: Request, svc: Services = Depends(services)) -> Response:
    svc.keys.require(request.headers.get("Authorization"), "read")
    doc, ctx, spec = await read_body(request, svc.resolver)
    if not isinstance(doc, dict):
        raise bad_request("a Query must be a JSON object")
    params: dict[str, Any] = dict(request.query_params)
    ents = doc.get("entities")
    if isinstance(ents, list):
        types = [e.get("type") for e in ents if isinstance(e, dict) and e.get("type")]
        ids = [e.get("id") for e in ents if isinstance(e, dict) and e.get("id")]
        if types:
            params["type"] = ",".join(_strings(types, "entities[].type"))
        if ids:
            params["id"] = ",".join(_strings(ids, "entities[].id"))
    if isinstance(doc.get("attrs"), list):
        params["attrs"] = ",".join(_strings(doc["attrs"], "attrs"))
    if isinstance(doc.get("q"), str):
        params["q"] = doc["q"]
    geo = doc.get("geoQ")
    if isinstance(geo, dict):
        params.update(
            georel=geo.get("georel"),
            geometry=geo.get("geometry"),
            coordinates=geo.get("coordinates"),
            geoproperty=geo.get("geoproperty"),
        )
    return await run_in_threadpool(_answer_query, request, svc, params, ctx, spec)


@router.post("/entities", status_code=201, summary="Create an entity", openapi_extra=body(ENTITY))
async def create_entity(request: Request, svc: Services = Depends(services)) -> Response:
    svc.keys.require(request.headers.get("Authorization"), "write")
    doc, ctx, _ = await read_body(request, svc.resolver)
    tenant = tenant_of(request)
    if isinstance(doc, list):
        raise bad_request("POST /entities takes one entity; use /entityOperations for batches")
    key_values = "keyValues" in options_of(request)
    out = await run_in_threadpool(svc.ingest.create, tenant, [doc], ctx, key_values=key_values)
    if out.errors:
        raise out.errors[0][1]
    eid = out.created[0]
    return Response(status_code=201, headers={"Location": f"/ngsi-ld/v1/entities/{eid}"})


@router.get("/entities/{entity_id}", summary="Retrieve an entity")
def retrieve_entity(
    entity_id: str, request: Request, svc: Services = Depends(services)
) -> Response:
    svc.keys.require(request.headers.get("Authorization"), "read")
    tenant = tenant_of(request)
    require_known_tenant(tenant, svc.tenants)
    ctx, spec = read_context(request, svc.resolver)
    output = negotiate(request, spec, allow_geojson=True)
    check_entity_id(entity_id)
    found = svc.store.get_entities(tenant, [entity_id]).get(entity_id)
    if found is None:
        raise not_found(f"entity {entity_id} does not exist")
    attrs = comma_list(request.query_params.get("attrs"))
    canonical = tuple(ctx.to_canonical(a) for a in attrs) if attrs else None
    if canonical and not any(a in found.entity for a in canonical):
        raise not_found(f"entity {entity_id} has none of the attributes {', '.join(attrs or ())}")
    options = options_of(request)
    if output.media_type == GEO_JSON:
        return json_response(render_feature(found, ctx, options), output)
    return json_response(
        render_entity(found, ctx, output, attrs=canonical, options=options), output
    )


@router.put(
    "/entities/{entity_id}",
    status_code=204,
    summary="Replace an entity",
    openapi_extra=body(FRAGMENT),
)
async def replace_entity(
    entity_id: str, request: Request, svc: Services = Depends(services)
) -> Response:
    svc.keys.require(request.headers.get("Authorization"), "write")
    doc, ctx, _ = await read_body(request, svc.resolver)
    await run_in_threadpool(svc.ingest.replace_entity, tenant_of(request), entity_id, doc, ctx)
    return Response(status_code=204)


@router.patch(
    "/entities/{entity_id}",
    status_code=204,
    summary="Merge into an entity",
    openapi_extra=body(FRAGMENT),
)
async def merge_entity(
    entity_id: str, request: Request, svc: Services = Depends(services)
) -> Response:
    svc.keys.require(request.headers.get("Authorization"), "write")
    doc, ctx, _ = await read_body(request, svc.resolver)
    key_values = "keyValues" in options_of(request)
    await run_in_threadpool(
        svc.ingest.write_attributes,
        tenant_of(request),
        entity_id,
        _fragment(doc, entity_id),
        ctx,
        key_values=key_values,
        mode="append",
    )
    return Response(status_code=204)


@router.delete("/entities/{entity_id}", status_code=204, summary="Delete an entity")
def delete_entity(entity_id: str, request: Request, svc: Services = Depends(services)) -> Response:
    svc.keys.require(request.headers.get("Authorization"), "delete")
    tenant = tenant_of(request)
    out = svc.ingest.delete(tenant, [entity_id])
    if out.errors:
        raise out.errors[0][1]
    return Response(status_code=204)


def _fragment(doc: Any, entity_id: str) -> Any:
    if isinstance(doc, dict):
        if "id" in doc and doc["id"] != entity_id:
            raise bad_request("the id in the body differs from the id in the path")
        return {k: v for k, v in doc.items() if k not in ("id", "type", "@context")}
    return doc


@router.post(
    "/entities/{entity_id}/attrs", summary="Append attributes", openapi_extra=body(FRAGMENT)
)
async def append_attrs(
    entity_id: str, request: Request, svc: Services = Depends(services)
) -> Response:
    svc.keys.require(request.headers.get("Authorization"), "write")
    doc, ctx, _ = await read_body(request, svc.resolver)
    options = options_of(request)
    mode = "noOverwrite" if "noOverwrite" in options else "append"
    skipped = await run_in_threadpool(
        svc.ingest.write_attributes,
        tenant_of(request),
        entity_id,
        _fragment(doc, entity_id),
        ctx,
        key_values="keyValues" in options,
        mode=mode,
    )
    if skipped:
        return _partial(doc, skipped, "attribute exists and noOverwrite was asked")
    return Response(status_code=204)


@router.patch(
    "/entities/{entity_id}/attrs", summary="Update attributes", openapi_extra=body(FRAGMENT)
)
async def update_attrs(
    entity_id: str, request: Request, svc: Services = Depends(services)
) -> Response:
    svc.keys.require(request.headers.get("Authorization"), "write")
    doc, ctx, _ = await read_body(request, svc.resolver)
    skipped = await run_in_threadpool(
        svc.ingest.write_attributes,
        tenant_of(request),
        entity_id,
        _fragment(doc, entity_id),
        ctx,
        key_values="keyValues" in options_of(request),
        mode="update",
    )
    if skipped:
        return _partial(doc, skipped, "attribute does not exist")
    return Response(status_code=204)


def _partial(doc: Any, skipped: list[str], reason: str) -> Response:
    updated = [k for k in doc if k not in skipped and k not in ("id", "type", "@context")]
    return json_response(
        {
            "updated": updated,
            "notUpdated": [{"attributeName": k, "reason": reason} for k in skipped],
        },
        status=207,
    )


@router.patch(
    "/entities/{entity_id}/attrs/{attr}",
    status_code=204,
    summary="Partial attribute update",
    openapi_extra=body(FRAGMENT),
)
async def patch_attr(
    entity_id: str, attr: str, request: Request, svc: Services = Depends(services)
) -> Response:
    svc.keys.require(request.headers.get("Authorization"), "write")
    doc, ctx, _ = await read_body(request, svc.resolver)
    await run_in_threadpool(
        svc.ingest.patch_attribute, tenant_of(request), entity_id, attr, doc, ctx
    )
    return Response(status_code=204)


@router.put(
    "/entities/{entity_id}/attrs/{attr}",
    status_code=204,
    summary="Replace an attribute",
    openapi_extra=body(FRAGMENT),
)
async def replace_attr(
    entity_id: str, attr: str, request: Request, svc: Services = Depends(services)
) -> Response:
    svc.keys.require(request.headers.get("Authorization"), "write")
    doc, ctx, _ = await read_body(request, svc.resolver)
    await run_in_threadpool(
        svc.ingest.patch_attribute, tenant_of(request), entity_id, attr, doc, ctx, replace=True
    )
    return Response(status_code=204)


@router.delete("/entities/{entity_id}/attrs/{attr}", status_code=204, summary="Delete an attribute")
def delete_attr(
    entity_id: str, attr: str, request: Request, svc: Services = Depends(services)
) -> Response:
    svc.keys.require(request.headers.get("Authorization"), "write")
    ctx, _ = read_context(request, svc.resolver)
    svc.ingest.delete_attribute(tenant_of(request), entity_id, attr, ctx)
    return Response(status_code=204)
