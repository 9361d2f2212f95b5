"""``ichdet serve``: the REST service and web page."""

from __future__ import annotations

from pathlib import Path

import typer

from ichdet.cli.common import console, fail

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def serve(
    model: Path = typer.Argument(..., help="a run folder or an .onnx model"),
    host: str = typer.Option(
        "127.0.0.1", help="address to bind (other than loopback: --token-file)"
    ),
    port: int = typer.Option(8000),
    store: Path = typer.Option(Path("ichdet-store"), help="jobs (SQLite), uploads and results"),
    workers: int = typer.Option(1, help="studies predicted at once"),
    token_file: Path | None = typer.Option(None, help="file holding the API bearer token"),
    max_upload_mb: int = typer.Option(
        2048, help="largest upload (a zip: also what it inflates to)"
    ),
    queue_size: int = typer.Option(100, help="queued studies before uploads get 429"),
    retention_days: float = typer.Option(0, help="delete finished studies after this (0: keep)"),
) -> None:
    """Serve MODEL: upload, triage and review head CT studies (API under /api/v1, page at /)."""
    import logging

    import uvicorn

    from ichdet.serve.app import Settings, create_app
    from ichdet.serve.model import load_model

    token = None
    if token_file is not None:
        token = token_file.read_text().strip() if token_file.is_file() else ""
        if not token:
            fail(f"{token_file}: no token in it")
    if host not in LOOPBACK and token is None:
        fail(f"binding to {host} needs --token-file (the API would be open to the network)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    store.mkdir(parents=True, exist_ok=True)
    try:
        runner = load_model(model, store)
    except (FileNotFoundError, ValueError, ImportError) as exc:
        fail(str(exc))
    settings = Settings(
        store=store,
        workers=workers,
        token=token,
        max_upload_bytes=max_upload_mb * 2**20,
        queue_size=queue_size,
        retention_days=retention_days,
    )
    console.print(f"ichdet serve: {', '.join(runner.names)} on http://{host}:{port}/")
    uvicorn.run(create_app(runner, settings), host=host, port=port, log_level="info")
