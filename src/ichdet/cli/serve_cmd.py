"""``ichdet serve`` (the REST service and web page, optionally with the DICOM listener) and
``ichdet listen`` (the DICOM listener alone); both share one store and one worker pool."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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
    dicom_port: int | None = typer.Option(None, help="also run the DICOM listener on this port"),
    ae_title: str = typer.Option("ICHDET", help="the listener's AE title"),
    quiet_seconds: float = typer.Option(10.0, help="a study is complete after this silence"),
    send_to: str | None = typer.Option(None, help="AET@HOST:PORT for the SR and key slices"),
    series: str = typer.Option("best", help="best | all: the series read (as predict)"),
    slab: str = typer.Option("auto", help="thin series as slabs: off | auto | MM (as predict)"),
) -> None:
    """Serve MODEL: upload, triage and review head CT studies (API under /api/v1, page at /)."""
    import logging

    import uvicorn

    from ichdet.serve.app import Settings, create_app

    token = None
    if token_file is not None:
        token = token_file.read_text().strip() if token_file.is_file() else ""
        if not token:
            fail(f"{token_file}: no token in it")
    if host not in LOOPBACK and token is None:
        fail(f"binding to {host} needs --token-file (the API would be open to the network)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    runner = _runner(model, store)
    settings = Settings(
        store=store,
        workers=workers,
        token=token,
        max_upload_bytes=max_upload_mb * 2**20,
        queue_size=queue_size,
        retention_days=retention_days,
        dicom_port=dicom_port,
        dicom_host=host,
        ae_title=ae_title,
        quiet_seconds=quiet_seconds,
        send_to=_destination(send_to),
        selection=_selection(series, slab),
    )
    console.print(f"ichdet serve: {', '.join(runner.names)} on http://{host}:{port}/")
    uvicorn.run(create_app(runner, settings), host=host, port=port, log_level="info")


def _runner(model: Path, store: Path) -> Any:
    from ichdet.serve.model import load_model

    store.mkdir(parents=True, exist_ok=True)
    try:
        return load_model(model, store)
    except (FileNotFoundError, ValueError, ImportError) as exc:
        fail(str(exc))


def _selection(series: str, slab: str) -> Any:
    """predict's series options, checked before the service starts."""
    from ichdet.selection.choose import SelectionOptions
    from ichdet.selection.slabs import parse_slab

    if series not in ("best", "all"):
        fail(f"--series takes best or all here, not {series!r}")
    try:
        return SelectionOptions(series=series, slab=parse_slab(slab))
    except ValueError as exc:
        fail(str(exc))


def _destination(text: str | None) -> str | None:
    if text is not None:
        from ichdet.serve.outbox import Destination

        try:
            Destination.parse(text)
        except ValueError as exc:
            fail(str(exc))
    return text


def listen(
    model: Path = typer.Argument(..., help="a run folder or an .onnx model"),
    ae_title: str = typer.Option("ICHDET", help="the listener's AE title"),
    port: int = typer.Option(11112),
    host: str = typer.Option("127.0.0.1", help="address to bind"),
    store: Path = typer.Option(Path("ichdet-store"), help="the same store as `ichdet serve`"),
    quiet_seconds: float = typer.Option(10.0, help="a study is complete after this silence"),
    send_to: str | None = typer.Option(None, help="AET@HOST:PORT for the SR and key slices"),
    series: str = typer.Option("best", help="best | all: the series read (as predict)"),
    slab: str = typer.Option("auto", help="thin series as slabs: off | auto | MM (as predict)"),
    workers: int = typer.Option(1, help="studies predicted at once"),
) -> None:
    """A DICOM Storage SCP: predict studies as they arrive (C-STORE), send back a DICOM SR and
    Secondary Capture key slices."""
    import logging
    import signal
    import threading

    from ichdet.serve.context import Context, Settings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    settings = Settings(
        store=store,
        workers=workers,
        dicom_port=port,
        dicom_host=host,
        ae_title=ae_title,
        quiet_seconds=quiet_seconds,
        send_to=_destination(send_to),
        selection=_selection(series, slab),
    )
    ctx = Context(_runner(model, store), settings)
    ctx.start()
    console.print(f"ichdet listen: {ae_title} on {host}:{port}, store {store}")
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    done.wait()
    ctx.stop()
