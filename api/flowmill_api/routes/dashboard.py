"""The dashboard: static HTML, JS and CSS shipped in the package (no build step, nothing
fetched from the internet), reading the same REST and SSE endpoints as any client."""

from __future__ import annotations

from functools import cache
from html import escape
from pathlib import Path
from string import Template

from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

from flowmill_api.health_svg import graph_svg
from flowmill_api.state import app_state

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"

router = APIRouter(include_in_schema=False)


@cache
def _index() -> str:
    return (STATIC_DIR / "index.html").read_text()


@cache
def _health_page() -> Template:
    return Template((STATIC_DIR / "health.html").read_text())


@router.get("/")
async def root() -> RedirectResponse:
    return RedirectResponse("/dashboard")


@router.get("/dashboard")
async def dashboard() -> HTMLResponse:
    return HTMLResponse(_index(), headers={"Cache-Control": "no-cache"})


@router.get("/dashboard/health")
async def health_view(request: Request, pipeline: str | None = Query(default=None)) -> HTMLResponse:
    """The health view: the Pipeline's graph drawn from its spec, filled in by health.js."""
    state = app_state(request)
    names = list(state.catalog.pipelines)
    if not names:
        return HTMLResponse("no Pipeline is served here", status_code=404)
    name = pipeline if pipeline in state.catalog.pipelines else names[0]
    options = "".join(
        f'<option value="{escape(n)}"{" selected" if n == name else ""}>{escape(n)}</option>'
        for n in names
    )
    page = _health_page().substitute(
        title=escape(f"{name} · flowmill health"),
        pipeline=escape(name),
        options=options,
        svg=graph_svg(state.health.graph(name), f"Pipeline {name}"),
    )
    return HTMLResponse(page, headers={"Cache-Control": "no-cache"})


def mount_static(app: FastAPI) -> None:
    app.mount("/dashboard/static", StaticFiles(directory=STATIC_DIR), name="dashboard-static")
