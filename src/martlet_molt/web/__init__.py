"""The chat page: `GET /` and `/static/*`, served from files built out of `web/` at the repo root
(`cd web && npm ci && npm run build`) and committed, so serving never needs Node.

The page speaks only the public HTTP API, so nothing here needs the run manager or a key:
the page itself is public; everything it reads is behind the API's own checks."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).parent / "static"
"""The built page: index.html, app.js, app.css."""

page_router = APIRouter(include_in_schema=False)


@page_router.get("/")
async def index() -> FileResponse:
    """The chat page. Revalidated on every load; its assets carry content hashes."""
    return FileResponse(
        STATIC_DIR / "index.html",
        media_type="text/html; charset=utf-8",
        headers={"Cache-Control": "no-cache"},
    )


def mount_web(app: FastAPI) -> None:
    """Serve the chat page at `/` and its assets at `/static`."""
    app.include_router(page_router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR, check_dir=False), name="static")
