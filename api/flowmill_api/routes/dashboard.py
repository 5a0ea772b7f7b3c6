"""The dashboard: static HTML, JS and CSS shipped in the package (no build step, nothing
fetched from the internet), reading the same REST and SSE endpoints as any client."""

from __future__ import annotations

from functools import cache
from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"

router = APIRouter(include_in_schema=False)


@cache
def _index() -> str:
    return (STATIC_DIR / "index.html").read_text()


@router.get("/")
async def root() -> RedirectResponse:
    return RedirectResponse("/dashboard")


@router.get("/dashboard")
async def dashboard() -> HTMLResponse:
    return HTMLResponse(_index(), headers={"Cache-Control": "no-cache"})


def mount_static(app: FastAPI) -> None:
    app.mount("/dashboard/static", StaticFiles(directory=STATIC_DIR), name="dashboard-static")
