"""NGSI-LD /jsonldContexts: the @contexts this server has cached or hosts."""

from __future__ import annotations

from urllib.parse import unquote

import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from civica.api.http import json_response
from civica.api.ngsi_ld.schemas import FRAGMENT, body
from civica.api.services import Services, services
from civica.core.entity import check_nesting
from civica.core.ldcontext import CORE_CONTEXT_URL, CORE_TERMS, DEFAULT_VOCAB
from civica.core.problems import bad_request, not_found
from civica.core.timefmt import format_time

router = APIRouter(prefix="/jsonldContexts", tags=["contexts"])


def _core_document() -> dict[str, object]:
    return {"@context": {"@vocab": DEFAULT_VOCAB, **CORE_TERMS}}


@router.get("", summary="List cached and hosted @contexts")
def list_contexts(request: Request, svc: Services = Depends(services)) -> Response:
    svc.keys.require(request.headers.get("Authorization"), "read")
    details = request.query_params.get("details", "").lower() == "true"
    entries = svc.resolver.entries()
    if not details:
        return json_response([CORE_CONTEXT_URL, *(e.url for e in entries)])
    return json_response(
        [
            {"URL": CORE_CONTEXT_URL, "localId": "core", "kind": "ImplicitlyCreated"},
            *(
                {
                    "URL": e.url,
                    "localId": e.url,
                    "kind": e.kind,
                    "createdAt": format_time(e.created_at),
                    "numberOfHits": e.hits,
                }
                for e in entries
            ),
        ]
    )


@router.get("/{context_id:path}", summary="One @context")
def get_context(context_id: str, request: Request, svc: Services = Depends(services)) -> Response:
    svc.keys.require(request.headers.get("Authorization"), "read")
    url = unquote(context_id)
    if url in ("core", CORE_CONTEXT_URL):
        return json_response(_core_document())
    entry = svc.resolver.get(url)
    if entry is None:
        raise not_found(f"no cached @context {url}")
    return json_response(entry.document)


@router.post("", status_code=201, summary="Host a @context", openapi_extra=body(FRAGMENT))
async def add_context(request: Request, svc: Services = Depends(services)) -> Response:
    svc.keys.require(request.headers.get("Authorization"), "manage")
    raw = await request.body()
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as err:
        raise bad_request("the body is not valid JSON") from err
    if not isinstance(doc, dict) or not isinstance(doc.get("@context"), dict | list | str):
        raise bad_request("post a JSON object with an @context member")
    check_nesting(doc, "the @context document")
    local = "urn:civica:context:" + str(len(svc.resolver.entries()) + 1)
    svc.resolver.store(local, doc, "Hosted")
    return Response(status_code=201, headers={"Location": f"/ngsi-ld/v1/jsonldContexts/{local}"})


@router.delete("/{context_id:path}", status_code=204, summary="Forget a @context")
def delete_context(
    context_id: str, request: Request, svc: Services = Depends(services)
) -> Response:
    svc.keys.require(request.headers.get("Authorization"), "manage")
    if not svc.resolver.delete(unquote(context_id)):
        raise not_found(f"no cached @context {unquote(context_id)}")
    return Response(status_code=204)
