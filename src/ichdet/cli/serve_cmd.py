"""``ichdet serve`` (the REST service and web page, optionally with the DICOM listener) and
``ichdet listen`` (the DICOM listener alone); both share one store and one worker pool."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ichdet.cli.common import console, fail

LOOPBACK = ("127.0.0.1", "localhost", "::1")


Model = Annotated[Path, typer.Argument(help="a run folder or an .onnx model")]
Store = Annotated[Path, typer.Option(help="jobs (SQLite), uploads and results; 0700 on disk")]
Workers = Annotated[int, typer.Option(help="studies predicted at once")]
AeTitle = Annotated[str, typer.Option(help="the listener's AE title (the called AE title)")]
Quiet = Annotated[float, typer.Option(help="a study is complete after this silence")]
SendTo = Annotated[str | None, typer.Option(help="AET@HOST:PORT for the SR and key slices")]
Series = Annotated[str, typer.Option(help="best | all: the series read (as predict)")]
Slab = Annotated[str, typer.Option(help="thin series as slabs: off | auto | MM (as predict)")]
Allow = Annotated[
    list[str], typer.Option("--allow", help="a DICOM peer allowed in: AET or AET@HOST (repeat)")
]
AllowFile = Annotated[
    Path | None, typer.Option(help="allowed DICOM peers: AET or AET@HOST, one a line")
]
AllowAny = Annotated[
    bool, typer.Option("--dicom-allow-any", help="any calling AE title (warns; not with a token)")
]
TlsFile = Annotated[Path | None, typer.Option(help="DICOM TLS: PEM file")]
Limits = Annotated[
    list[str],
    typer.Option(
        "--dicom-limit",
        help="KEY=VALUE (repeat): max_instance_mb, max_instances_per_study, min_free_mb, "
        "max_associations, acse_timeout, dimse_timeout, network_timeout",
    ),
]
Database = Annotated[
    str | None, typer.Option(help="SQLAlchemy URL (postgresql+psycopg://...) shared by servers")
]
ServerId = Annotated[
    str | None, typer.Option(help="this server's id in a shared database (default host:ports)")
]
Site = Annotated[
    Path | None, typer.Option(help="site thresholds (ichdet validate --fit-site), flags and SR")
]
SegmenterPath = Annotated[
    Path | None,
    typer.Option(help="a segmenter run or .onnx: volumes in the results, a DICOM SEG back"),
]
Hosts = Annotated[
    list[str], typer.Option("--allowed-host", help="a Host header name to accept (repeat)")
]


Host = Annotated[str, typer.Option(help="address to bind (other than loopback: token)")]
DicomwebUrl = Annotated[
    str | None,
    typer.Option(
        "--dicomweb", help="watch dicomweb+https://HOST/dicom-web: new CT studies become jobs"
    ),
]
Poll = Annotated[float, typer.Option(help="with --dicomweb: seconds between QIDO-RS polls")]
Settle = Annotated[
    float,
    typer.Option(help="with --dicomweb: a study is read once its size is unchanged this long"),
]
DicomwebToken = Annotated[
    Path | None,
    typer.Option(help="with --dicomweb: bearer token file (else $ICHDET_DICOMWEB_TOKEN)"),
]


def serve(
    model: Model,
    host: Host = "127.0.0.1",
    port: int = 8000,
    store: Store = Path("ichdet-store"),
    workers: Workers = 1,
    token_file: Annotated[Path | None, typer.Option(help="the API bearer token (0600)")] = None,
    max_upload_mb: Annotated[int, typer.Option(help="largest upload, zips inflated")] = 2048,
    queue_size: Annotated[int, typer.Option(help="queued studies (HTTP + DICOM)")] = 100,
    retention_days: Annotated[float, typer.Option(help="delete finished studies after")] = 0,
    dicom_port: Annotated[int | None, typer.Option(help="also listen for DICOM here")] = None,
    ae_title: AeTitle = "ICHDET",
    quiet_seconds: Quiet = 10.0,
    send_to: SendTo = None,
    series: Series = "best",
    slab: Slab = "auto",
    allow: Allow = [],  # noqa: B006 - typer's list option
    allow_file: AllowFile = None,
    allow_any: AllowAny = False,
    tls_cert: TlsFile = None,
    tls_key: TlsFile = None,
    tls_ca: TlsFile = None,
    dicom_limit: Limits = [],  # noqa: B006
    database: Database = None,
    server_id: ServerId = None,
    allowed_host: Hosts = [],  # noqa: B006
    max_connections: Annotated[int, typer.Option(help="HTTP connections at once")] = 64,
    site: Site = None,
    segmenter: SegmenterPath = None,
    dicomweb: DicomwebUrl = None,
    poll: Poll = 60.0,
    settle: Settle = 60.0,
    dicomweb_token_file: DicomwebToken = None,
) -> None:
    """Serve MODEL: upload, triage and review head CT studies (API under /api/v1, page at /)."""
    token = _start_process(token_file, host)
    access = _access(allow, allow_file, allow_any, (tls_cert, tls_key, tls_ca), dicom_limit)
    access = _serve_door(access, token, host, dicom_port)
    settings = _settings(
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
        dicom_access=access,
        database=database,
        server_id=server_id,
        allowed_hosts=tuple(allowed_host),
        http_host=host,
        http_port=port,
        **_dicomweb(dicomweb, dicomweb_token_file, poll, settle),
    )
    _run(_runner(model, store, site, segmenter), settings, max_connections)


def _settings(**values: Any) -> Any:
    from ichdet.serve.app import Settings  # the service's modules load when it starts

    return Settings(**values)


def _run(runner: Any, settings: Any, max_connections: int) -> None:
    from ichdet.serve.app import create_app
    from ichdet.serve.http_server import run

    app = create_app(runner, settings)
    run(app, settings.http_host, settings.http_port, max_connections)


def _dicomweb(
    url: str | None, token_file: Path | None, poll: float, settle: float
) -> dict[str, Any]:
    """The Settings of ``serve --dicomweb URL --poll S --settle S`` (none without a URL)."""
    if url is None:
        return {}
    from ichdet.dicomweb.client import parse_server

    if poll <= 0 or settle < 0:
        fail("--poll takes a number of seconds above 0, --settle 0 or more")
    try:
        server = parse_server(url, token_file)
        return {"dicomweb": server, "poll_seconds": poll, "settle_seconds": settle}
    except ValueError as exc:
        fail(str(exc))


def _serve_door(access: Any, token: str | None, host: str, dicom_port: int | None) -> Any:
    """``access``, checked against how the service listens."""
    if dicom_port is not None:
        _check_open_door(access, token, host)
    elif access.peers or access.tls_cert:
        fail("--allow and --tls-* are for the DICOM listener: add --dicom-port")
    return access


def _start_process(token_file: Path | None, host: str = "127.0.0.1") -> str | None:
    """Logging and private files for a service process; the token, checked (an HTTP service
    beyond loopback needs one)."""
    import logging

    from ichdet.serve.privacy import TokenError, protect_process, read_token

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    protect_process()
    if token_file is None:
        if host not in LOOPBACK:
            fail(f"binding to {host} needs --token-file (the API would be open to the network)")
        return None
    try:
        return read_token(token_file)
    except TokenError as exc:
        fail(str(exc))


def _access(
    allow: list[str],
    allow_file: Path | None,
    allow_any: bool,
    tls: tuple[Path | None, Path | None, Path | None],
    limits: list[str],
) -> Any:
    """The DICOM door's settings from the command line, checked before anything starts."""
    from ichdet.serve.dicom_access import DicomAccess, parse_limits, read_peers

    cert, key, ca = tls
    if (cert is None) != (key is None) or (ca is not None and cert is None):
        fail("DICOM TLS needs --tls-cert and --tls-key (and --tls-ca for mutual TLS)")
    try:
        access = DicomAccess(read_peers(allow, allow_file), allow_any, cert, key, ca)
        access.limits = parse_limits(limits)
        access.ssl_context()  # the files load
    except (ValueError, OSError) as exc:
        fail(str(exc))
    return access


def _check_open_door(access: Any, token: str | None, host: str) -> None:
    """The DICOM port is not opened to everyone by accident."""
    if not access.peers and not access.allow_any:
        fail("the DICOM listener needs --allow AET[@HOST] (or --allow-file; --dicom-allow-any)")
    if access.allow_any:
        console.print("[yellow]warning: --dicom-allow-any: any DICOM peer can send studies[/]")
    if token is not None and access.allow_any:
        fail("--token-file protects HTTP only: give the DICOM port an --allow list too")
    if host not in LOOPBACK and access.tls_cert is None:
        console.print("[yellow]warning: DICOM without TLS beyond loopback (--tls-cert)[/]")


def _runner(
    model: Path, store: Path, site: Path | None = None, segmenter: Path | None = None
) -> Any:
    """The model (and the segmenter it runs with: volumes, SEG) the service predicts with;
    says which on the console."""
    from ichdet.cli.predict_cmds import with_site
    from ichdet.inference.seg_runner import load_segmenter
    from ichdet.serve.model import load_model

    store.mkdir(parents=True, exist_ok=True)
    try:
        runner: Any = with_site(load_model(model, store), site)
        runner.segmenter = load_segmenter([segmenter]) if segmenter else None
    except (FileNotFoundError, ValueError, ImportError) as exc:
        fail(str(exc))
    console.print(f"model: {', '.join(runner.names)}")
    if runner.segmenter is not None:
        console.print(f"segmenter: {', '.join(runner.segmenter.names)}")
    return runner


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
    model: Model,
    ae_title: AeTitle = "ICHDET",
    port: int = 11112,
    host: Annotated[str, typer.Option(help="address to bind")] = "127.0.0.1",
    store: Store = Path("ichdet-store"),
    quiet_seconds: Quiet = 10.0,
    send_to: SendTo = None,
    series: Series = "best",
    slab: Slab = "auto",
    workers: Workers = 1,
    allow: Allow = [],  # noqa: B006 - typer's list option
    allow_file: AllowFile = None,
    allow_any: AllowAny = False,
    tls_cert: TlsFile = None,
    tls_key: TlsFile = None,
    tls_ca: TlsFile = None,
    dicom_limit: Limits = [],  # noqa: B006
    queue_size: Annotated[int, typer.Option(help="queued studies before C-STOREs wait")] = 100,
    database: Database = None,
    server_id: ServerId = None,
    site: Site = None,
    segmenter: SegmenterPath = None,
) -> None:
    """A DICOM Storage SCP: predict studies as they arrive (C-STORE), send back a DICOM SR and
    Secondary Capture key slices. Only the peers on the allow list may send."""
    import signal
    import threading

    from ichdet.serve.context import Context, Settings

    _start_process(None)
    access = _access(allow, allow_file, allow_any, (tls_cert, tls_key, tls_ca), dicom_limit)
    _check_open_door(access, None, host)
    settings = Settings(
        store=store,
        workers=workers,
        dicom_port=port,
        dicom_host=host,
        ae_title=ae_title,
        quiet_seconds=quiet_seconds,
        send_to=_destination(send_to),
        selection=_selection(series, slab),
        dicom_access=access,
        queue_size=queue_size,
        database=database,
        server_id=server_id,
        http_port=0,
    )
    ctx = Context(_runner(model, store, site, segmenter), settings)
    ctx.start()
    console.print(f"ichdet listen: {ae_title} on {host}:{port}, store {store}")
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    done.wait()
    ctx.stop()
