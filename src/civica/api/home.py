"""The landing page: the city's assets on a map (the full dashboard arrives later)."""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

router = APIRouter(tags=["ops"])


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
def home() -> HTMLResponse:
    page = resources.files("civica.api").joinpath("static/home.html").read_text("utf-8")
    return HTMLResponse(page)
