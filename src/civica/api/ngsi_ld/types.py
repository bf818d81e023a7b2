"""NGSI-LD /types and /attributes: what the tenant holds, by type and by attribute."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from civica.api.http import (
    json_response,
    negotiate,
    read_context,
    require_known_tenant,
    tenant_of,
    with_context,
)
from civica.api.services import Services, services
from civica.core.problems import not_found

router = APIRouter(tags=["types"])


def _details(request: Request) -> bool:
    return request.query_params.get("details", "").lower() == "true"


@router.get("/types", summary="Available entity types")
def list_types(request: Request, svc: Services = Depends(services)) -> Response:
    svc.keys.require(request.headers.get("Authorization"), "read")
    tenant = tenant_of(request)
    require_known_tenant(tenant, svc.tenants)
    ctx, spec = read_context(request, svc.resolver)
    output = negotiate(request, spec)
    infos = svc.store.entity_types(tenant)
    if _details(request):
        body = [
            with_context(
                {
                    "id": ctx.expand(t.type),
                    "type": "EntityType",
                    "typeName": ctx.from_canonical(t.type),
                    "attributeNames": [ctx.from_canonical(a) for a in t.attributes],
                },
                output,
            )
            for t in infos
        ]
        return json_response(body, output)
    return json_response(
        with_context(
            {
                "id": "urn:ngsi-ld:EntityTypeList:civica",
                "type": "EntityTypeList",
                "typeList": [ctx.from_canonical(t.type) for t in infos],
            },
            output,
        ),
        output,
    )


@router.get("/types/{type_name}", summary="Details of one entity type")
def type_info(type_name: str, request: Request, svc: Services = Depends(services)) -> Response:
    svc.keys.require(request.headers.get("Authorization"), "read")
    tenant = tenant_of(request)
    require_known_tenant(tenant, svc.tenants)
    ctx, spec = read_context(request, svc.resolver)
    output = negotiate(request, spec)
    canonical = ctx.to_canonical(type_name)
    for info in svc.store.entity_types(tenant):
        if info.type == canonical:
            return json_response(
                with_context(
                    {
                        "id": ctx.expand(info.type),
                        "type": "EntityTypeInfo",
                        "typeName": ctx.from_canonical(info.type),
                        "entityCount": info.count,
                        "attributeDetails": [
                            {
                                "id": ctx.expand(a),
                                "type": "Attribute",
                                "attributeName": ctx.from_canonical(a),
                            }
                            for a in info.attributes
                        ],
                    },
                    output,
                ),
                output,
            )
    raise not_found(f"no entity of type {type_name!r}")


@router.get("/attributes", summary="Available attributes")
def list_attributes(request: Request, svc: Services = Depends(services)) -> Response:
    svc.keys.require(request.headers.get("Authorization"), "read")
    tenant = tenant_of(request)
    require_known_tenant(tenant, svc.tenants)
    ctx, spec = read_context(request, svc.resolver)
    output = negotiate(request, spec)
    by_attr: dict[str, list[str]] = {}
    for info in svc.store.entity_types(tenant):
        for attr in info.attributes:
            by_attr.setdefault(attr, []).append(info.type)
    if _details(request):
        return json_response(
            [
                with_context(
                    {
                        "id": ctx.expand(a),
                        "type": "Attribute",
                        "attributeName": ctx.from_canonical(a),
                        "typeNames": [ctx.from_canonical(t) for t in ts],
                    },
                    output,
                )
                for a, ts in sorted(by_attr.items())
            ],
            output,
        )
    return json_response(
        with_context(
            {
                "id": "urn:ngsi-ld:AttributeList:civica",
                "type": "AttributeList",
                "attributeList": [ctx.from_canonical(a) for a in sorted(by_attr)],
            },
            output,
        ),
        output,
    )


@router.get("/attributes/{attr}", summary="Details of one attribute")
def attribute_info(attr: str, request: Request, svc: Services = Depends(services)) -> Response:
    svc.keys.require(request.headers.get("Authorization"), "read")
    tenant = tenant_of(request)
    require_known_tenant(tenant, svc.tenants)
    ctx, spec = read_context(request, svc.resolver)
    output = negotiate(request, spec)
    canonical = ctx.to_canonical(attr)
    infos = [i for i in svc.store.entity_types(tenant) if canonical in i.attributes]
    if not infos:
        raise not_found(f"no entity has attribute {attr!r}")
    return json_response(
        with_context(
            {
                "id": ctx.expand(canonical),
                "type": "Attribute",
                "attributeName": ctx.from_canonical(canonical),
                "attributeCount": sum(i.count for i in infos),
                "typeNames": [ctx.from_canonical(i.type) for i in infos],
            },
            output,
        ),
        output,
    )
