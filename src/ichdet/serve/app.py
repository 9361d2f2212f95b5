"""``ichdet serve``: one FastAPI app with the REST API (``ichdet.serve.api``), the web page,
``/healthz`` and ``/metrics``, over a :class:`Store` (jobs), a folder (files) and a
:class:`Processor` (worker threads with the model, loaded once).

Every request passes ``ichdet.serve.security.Guard`` first (Host, Origin, token, body cap,
security headers). Uploads are checked, written to disk and queued before the 202 answer; a
full queue answers 429 with Retry-After. At start, this server's half-received uploads are
removed and the studies it left running are queued again. Log lines carry internal ids and
counts only; CORS is closed (no cross-origin headers are sent); there is no ``/docs`` (Swagger
UI would load from a CDN) and ``/openapi.json`` needs the token.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources

from fastapi import FastAPI, HTTPException
from fastapi.responses import HTMLResponse, Response

from ichdet.inference.runners import Runner
from ichdet.serve.api import public, router
from ichdet.serve.context import Context, Settings
from ichdet.serve.security import Guard, allowed_hosts

STATIC = {"app.js": "text/javascript", "app.css": "text/css"}

__all__ = ["Settings", "create_app"]


def create_app(runner: Runner, settings: Settings) -> FastAPI:
    ctx = Context(runner, settings)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        ctx.start()
        yield
        ctx.stop()

    app = FastAPI(title="ichdet", version="1", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.ctx = ctx
    app.add_middleware(
        Guard,
        token=settings.token,
        hosts=allowed_hosts(settings.http_host, settings.allowed_hosts),
        max_body=settings.max_upload_bytes,
        refused=lambda status: ctx.metrics.refused.labels(str(status)).inc(),
    )

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
