"""Composition root: wire the store, the ingest path and the API into one ASGI app."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from civica import __version__
from civica.api import home
from civica.api.auth import KeyChecker
from civica.api.contexts import ContextResolver
from civica.api.limits import BodySizeLimit
from civica.api.ngsi_ld import batch, contexts, entities, subscriptions, temporal, types
from civica.api.notifier import notifier_for
from civica.api.services import Services, Settings
from civica.core.bus import EventBus
from civica.core.problems import (
    BAD_REQUEST_DATA,
    INTERNAL_ERROR,
    RESOURCE_NOT_FOUND,
    Problem,
    ProblemKind,
)
from civica.core.store import Store
from civica.domains import domain_catalogue
from civica.ingest.pipeline import Ingest
from civica.privacy.gate import PrivacyGate

log = logging.getLogger(__name__)
NGSI_LD_PREFIX = "/ngsi-ld/v1"


def problem_response(problem: Problem) -> Response:
    return Response(
        orjson.dumps(problem.to_dict()), status_code=problem.status, media_type="application/json"
    )


class StripTrailingSlash:
    """``/entities/`` and ``/entities`` are the same resource (some clients add the slash)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path: str = scope["path"]
            if len(path) > 1 and path.endswith("/"):
                scope = {**scope, "path": path.rstrip("/") or "/"}
        await self.app(scope, receive, send)


def build_services(
    store: Store, settings: Settings | None = None, ingest: Ingest | None = None
) -> Services:
    settings = settings or Settings()
    ingest = ingest or Ingest(store, PrivacyGate(domain_catalogue()), EventBus())
    return Services(
        store=store,
        ingest=ingest,
        resolver=ContextResolver(timeout=settings.context_timeout),
        keys=KeyChecker(store),
        settings=settings,
    )


def _lifespan(svc: Services) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """Run the notifier while the app serves; on shutdown, run ``svc.on_shutdown``.

    Shutdown work belongs here rather than after ``uvicorn.run`` returns: on SIGTERM uvicorn
    shuts the app down and then re-raises the signal, so code after it never runs.
    """
    notifier = notifier_for(svc)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            async with notifier.lifespan(app):
                yield
        finally:
            await asyncio.to_thread(svc.shut_down)

    return lifespan


def create_app(svc: Services) -> FastAPI:
    """The Civica HTTP application over already-built services."""
    app = FastAPI(
        title="Civica",
        version=__version__,
        description="City operations platform: NGSI-LD API (ETSI GS CIM 009 subset), "
        "privacy by construction.",
        openapi_url="/openapi.json",
        lifespan=_lifespan(svc),
    )
    app.state.services = svc
    for module in (entities, batch, types, contexts, temporal, subscriptions):
        app.include_router(module.router, prefix=NGSI_LD_PREFIX)
    for extra in svc.extras.get("routers", []):
        app.include_router(extra, prefix=NGSI_LD_PREFIX)

    app.include_router(home.router)

    @app.get("/health", tags=["ops"], summary="Liveness and a few counters")
    def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "version": __version__,
            "deadLetters": svc.store.count_dead_letters(),
        }

    @app.exception_handler(Problem)
    async def on_problem(_: Request, exc: Problem) -> Response:
        return problem_response(exc)

    @app.exception_handler(RequestValidationError)
    async def on_validation(_: Request, exc: RequestValidationError) -> Response:
        parts = [
            f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors()
        ]
        return problem_response(Problem(BAD_REQUEST_DATA, "; ".join(parts)[:1000]))

    @app.exception_handler(StarletteHTTPException)
    async def on_http(_: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 404:
            kind = RESOURCE_NOT_FOUND
        else:
            kind = ProblemKind(_reason(exc.status_code), exc.status_code)
        return problem_response(Problem(kind, str(exc.detail)))

    @app.exception_handler(Exception)
    async def on_crash(_: Request, exc: Exception) -> Response:
        log.exception("unhandled error")
        return problem_response(Problem(INTERNAL_ERROR, f"internal error: {type(exc).__name__}"))

    app.add_middleware(BodySizeLimit, max_bytes=svc.settings.max_body_bytes)
    app.add_middleware(StripTrailingSlash)
    return app


def _reason(status: int) -> str:
    from http import HTTPStatus

    try:
        return HTTPStatus(status).phrase.replace(" ", "")
    except ValueError:
        return "HttpError"
