"""NGSI-LD batch operations: /entityOperations/create|upsert|update|delete.

A batch is one store transaction; good entities are stored even when others fail, and a
207 BatchOperationResult says which failed and why.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from civica.api.http import JSON, json_response, link_context, options_of, read_body, tenant_of
from civica.api.ngsi_ld.schemas import ENTITY_LIST, ID_LIST, body
from civica.api.services import Services, services
from civica.core.problems import bad_request
from civica.ingest.pipeline import BatchOutcome

router = APIRouter(prefix="/entityOperations", tags=["batch"])


def _entities(doc: Any, svc: Services) -> list[Any]:
    if not isinstance(doc, list):
        raise bad_request("a batch must be a JSON array")
    if len(doc) > svc.settings.max_batch:
        raise bad_request(f"a batch may hold at most {svc.settings.max_batch} items")
    return doc


def _result(out: BatchOutcome, ok_status: int, ok_body: Any | None) -> Response:
    if out.errors:
        return json_response(
            {
                "success": out.success,
                "errors": [
                    {"entityId": eid, "error": problem.to_dict()} for eid, problem in out.errors
                ],
            },
            status=207,
        )
    if ok_body is None:
        return Response(status_code=ok_status)
    return json_response(ok_body, status=ok_status)


@router.post("/create", summary="Batch create", openapi_extra=body(ENTITY_LIST))
async def batch_create(request: Request, svc: Services = Depends(services)) -> Response:
    svc.keys.require(request.headers.get("Authorization"), "write")
    doc, ctx, _ = await read_body(request, svc.resolver)
    kv = "keyValues" in options_of(request)
    out = await run_in_threadpool(
        svc.ingest.create, tenant_of(request), _entities(doc, svc), ctx, key_values=kv
    )
    return _result(out, 201, out.created)


@router.post("/upsert", summary="Batch upsert", openapi_extra=body(ENTITY_LIST))
async def batch_upsert(request: Request, svc: Services = Depends(services)) -> Response:
    svc.keys.require(request.headers.get("Authorization"), "write")
    options = options_of(request)
    tenant = tenant_of(request)
    kv, replace = "keyValues" in options, "replace" in options
    if _plain_json(request):  # the sensors' usual case: admitted as bytes, maybe elsewhere
        out = await run_in_threadpool(
            svc.ingest.upsert_body,
            tenant,
            await request.body(),
            key_values=kv,
            replace=replace,
            max_batch=svc.settings.max_batch,
        )
    else:
        doc, ctx, _ = await read_body(request, svc.resolver)
        out = await run_in_threadpool(
            svc.ingest.upsert, tenant, _entities(doc, svc), ctx, key_values=kv, replace=replace
        )
    if out.created:
        return _result(out, 201, out.created)
    return _result(out, 204, None)


def _plain_json(request: Request) -> bool:
    """application/json in the core context: no Link header naming another context."""
    ctype = request.headers.get("Content-Type", "").split(";")[0].strip().lower()
    return ctype == JSON and link_context(request) is None


@router.post("/update", summary="Batch update", openapi_extra=body(ENTITY_LIST))
async def batch_update(request: Request, svc: Services = Depends(services)) -> Response:
    svc.keys.require(request.headers.get("Authorization"), "write")
    doc, ctx, _ = await read_body(request, svc.resolver)
    options = options_of(request)
    out = await run_in_threadpool(
        svc.ingest.update,
        tenant_of(request),
        _entities(doc, svc),
        ctx,
        key_values="keyValues" in options,
        no_overwrite="noOverwrite" in options,
    )
    return _result(out, 204, None)


@router.post("/delete", summary="Batch delete", openapi_extra=body(ID_LIST))
async def batch_delete(request: Request, svc: Services = Depends(services)) -> Response:
    svc.keys.require(request.headers.get("Authorization"), "delete")
    doc, _, _ = await read_body(request, svc.resolver, needs_context=False)
    out = await run_in_threadpool(svc.ingest.delete, tenant_of(request), _entities(doc, svc))
    return _result(out, 204, None)
