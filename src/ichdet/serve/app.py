"""``ichdet serve``: one FastAPI app with the REST API (``ichdet.serve.api``), the web page,
``/healthz`` and ``/metrics``, over a :class:`Store` (jobs), a folder (files) and a
:class:`Processor` (worker threads with the model, loaded once).

Uploads are checked, written to disk and queued before the 202 answer; a full queue answers 429
with Retry-After. At start, half-received uploads are removed and studies a killed server left
running are queued again. Log lines carry internal ids and counts only; CORS is closed (no
cross-origin headers are sent).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from ichdet.inference.runners import Runner
from ichdet.serve.api import public, router
from ichdet.serve.context import Context, Settings

STATIC = {"app.js": "text/javascript", "app.css": "text/css"}

__all__ = ["Settings", "create_app"]


def create_app(runner: Runner, settings: Settings) -> FastAPI:
    ctx = Context(runner, settings)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        ctx.start()
        yield
        ctx.stop()

    app = FastAPI(title="ichdet", version="1", lifespan=lifespan)
    app.state.ctx = ctx

    @app.middleware("http")
    async def upload_size(request: Request, call_next: Any) -> Response:
        """Refuse an oversized upload from its Content-Length, before reading its body."""
        if request.method == "POST" and request.url.path == "/api/v1/studies":
            length = request.headers.get("content-length")
            if length is None:
                return JSONResponse({"detail": "Content-Length is required"}, 411)
            if not length.isdigit() or int(length) > settings.max_upload_bytes:
                ctx.metrics.refused.labels("413").inc()
                limit = settings.max_upload_bytes
                return JSONResponse({"detail": f"upload over the {limit}-byte limit"}, 413)
        return await call_next(request)

    app.include_router(router)
    app.include_router(public)
    app.add_api_route("/", page, response_class=HTMLResponse, include_in_schema=False)
    app.add_api_route("/static/{name}", static, include_in_schema=False)
    return app


def page() -> str:
    return resources.files("ichdet.serve").joinpath("static/index.html").read_text()


def static(name: str) -> Response:
    if name not in STATIC:
        raise HTTPException(404, "no such file")
    text = resources.files("ichdet.serve").joinpath(f"static/{name}").read_text()
    return Response(text, media_type=STATIC[name])
