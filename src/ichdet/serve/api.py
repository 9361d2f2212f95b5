"""The REST API under ``/api/v1`` (and ``/healthz``, ``/metrics``): routes over the app's
:class:`Context`. Study ids in URLs are internal 32-hex ids; anything else is a 404.

Authentication, the Host and Origin checks and the body cap happen before any route, in
``ichdet.serve.security``; the routes record who read or changed which study in the audit log.
The worklist carries patient name and id, accession, study date and description: a caller gets
here only with the token (or on the loopback service without one, as the local user)."""

from __future__ import annotations

import json
import logging
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, File, HTTPException, Query, Request, UploadFile
from fastapi.responses import FileResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ichdet.serve.context import Context
from ichdet.serve.images import VIEW_WINDOWS, slice_masks, slice_png
from ichdet.serve.store import SORTS, Job
from ichdet.serve.uploads import UploadError, UploadLimits, expand_zips, save_parts, split_studies

log = logging.getLogger("ichdet.serve")
ID = re.compile(r"[0-9a-f]{32}")
SORT_PATTERN = "^(triage|" + "|".join(f"-?{k}" for k in SORTS) + ")$"


def context(request: Request) -> Context:
    return request.app.state.ctx


def actor(request: Request) -> str:
    """Who calls (set by the security middleware): ``token:<hash>`` or ``local``."""
    return str(getattr(request.state, "actor", "local"))


#: what every error answer is: a JSON object with ``detail`` (a reason, or FastAPI's list of
#: validation errors)
PROBLEM = {"type": "object", "required": ["detail"], "properties": {"detail": {}}}
WHY = {
    400: "a malformed request (no file, an unreadable zip)",
    401: "the bearer token is missing or wrong",
    403: "a cross-origin request",
    404: "no such study or slice",
    409: "the study is not in a state for this",
    413: "over the upload limit (bytes received, or what its zips inflate to)",
    421: "a Host header this server does not answer to",
    422: "invalid parameters, or no readable CT slice in the upload",
    429: "the queue is full: retry after Retry-After seconds",
    500: "the report could not be written",
    503: "a part of the service is down, or too many connections",
}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI description of these error answers."""
    return {
        code: {"description": WHY[code], "content": {"application/json": {"schema": PROBLEM}}}
        for code in codes
    }


router = APIRouter(responses=errors(401, 421, 422, 503))
public = APIRouter(responses=errors(421, 503))


def job_or_404(ctx: Context, study_id: str) -> Job:
    job = ctx.store.get(study_id) if ID.fullmatch(study_id) else None
    if job is None or job.status == "deleting":
        raise HTTPException(404, "no such study")
    return job


def public_view(job: Job, full: bool) -> dict[str, Any]:
    """A job as the API shows it: the worklist entry, or (``full``) the study with its slices."""
    out: dict[str, Any] = {
        "id": job.id,
        "status": job.status,
        "received": job.received,
        "finished": job.finished,
        "files": job.files,
        "version": job.version,
        "patient": job.patient,
    }
    if job.reason:
        out["reason"] = job.reason
    if job.result:
        r = job.result
        out["assessable"] = r.get("assessable", True)
        keys = ["probabilities", "flags", "key_slices", "thresholds", "warning", "series_stage"]
        keys += ["not_assessable", "notes", "segmentation"]
        out.update({k: r[k] for k in keys if k in r})
        out["series_read"] = ", ".join(s["series"] for s in r.get("series", []) if s["read"])
        if full:
            out["slices"] = [{k: s[k] for k in ("n", "z", "probabilities")} for s in r["slices"]]
            out["models"] = r["models"]
            out["series"] = r.get("series", [])
    return out


@router.post("/api/v1/studies", status_code=202, responses=errors(400, 403, 413, 429))
def upload(
    request: Request, files: list[UploadFile] = File(...), ctx: Context = Depends(context)
) -> Any:
    """DICOM files (form field ``files``, repeated) or one .zip: one job per study found."""
    if ctx.queue_room() <= 0:
        ctx.metrics.refused.labels("429").inc()
        return JSONResponse({"detail": "queue full; retry later"}, 429, {"Retry-After": "10"})
    tmp = Path(tempfile.mkdtemp(dir=ctx.settings.store, prefix=ctx.incoming_prefix))
    try:
        limits = UploadLimits(ctx.settings.max_upload_bytes)
        save_parts((f.file for f in files), tmp / "files", limits)
        expand_zips(tmp / "files", limits)
        found, skipped = split_studies(
            tmp / "files", ctx.studies, ctx.settings.owner, ctx.queue_room()
        )
    except UploadError as exc:
        ctx.metrics.refused.labels(str(exc.status)).inc()
        log.info("upload refused (%d)", exc.status)
        retry = {"Retry-After": "10"} if exc.status == 429 else None
        return JSONResponse({"detail": exc.reason}, exc.status, retry)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for study_id, count in found:
        ctx.store.add(study_id, count)
        ctx.audit.record(actor(request), "upload", study_id)
        log.info("study %s queued (%d files, %d skipped)", study_id, count, len(skipped))
    ctx.processor.wake.set()
    answers = [{"id": i, "status": "queued", "files": n} for i, n in found]
    return answers[0] if len(answers) == 1 else answers


@router.get("/api/v1/studies")
def worklist(
    request: Request,
    offset: int = Query(0, ge=0, le=10**9),
    limit: int = Query(50, ge=1, le=500),
    q: str = Query("", max_length=100, description="patient name or id, accession, description"),
    sort: str = Query("triage", pattern=SORT_PATTERN),
    ctx: Context = Depends(context),
) -> Any:
    """Studies (triage order: flagged first, then by p(any), then newest; or by a column,
    ``-column`` descending), searched by ``q``; paged. Every view is audited."""
    jobs, total = ctx.store.worklist(offset, limit, q, sort)
    ctx.audit.record(actor(request), "worklist")
    return {"total": total, "offset": offset, "items": [public_view(j, False) for j in jobs]}


@router.get("/api/v1/studies/{study_id}", responses=errors(404))
def study(study_id: str, request: Request, ctx: Context = Depends(context)) -> Any:
    """Status; when done, the six probabilities, flags, key slices and the slices in z order."""
    job = job_or_404(ctx, study_id)
    ctx.audit.record(actor(request), "view", job.id)
    return public_view(job, full=True)


@router.delete("/api/v1/studies/{study_id}", status_code=204, responses=errors(403, 404, 409))
def delete(study_id: str, request: Request, ctx: Context = Depends(context)) -> Response:
    """Marked deleting first (a crash cannot bring it back), then its files, then its row."""
    job = job_or_404(ctx, study_id)
    if job.status == "deleting":
        return Response(status_code=204)
    if not ctx.store.mark_deleting(job.id):
        raise HTTPException(409, "the study is being processed; delete it afterwards")
    ctx.audit.record(actor(request), "delete", job.id)
    ctx.processor.delete(job.id)
    return Response(status_code=204)


@router.get("/api/v1/audit")
def audit(
    study: str | None = Query(None, pattern="^[0-9a-f]{32}$"),
    limit: int = Query(1000, ge=1, le=10000),
    ctx: Context = Depends(context),
) -> Any:
    """The audit log, newest first: who read or changed which study, and when."""
    return {"events": ctx.audit.events(study, limit=limit)}


@router.get(
    "/api/v1/studies/{study_id}/report",
    response_class=FileResponse,
    responses={200: {"content": {"text/html": {}}}, **errors(404, 409, 500)},
)
def report(study_id: str, request: Request, ctx: Context = Depends(context)) -> Any:
    """The self-contained HTML report (written on first request)."""
    job = job_or_404(ctx, study_id)
    ctx.audit.record(actor(request), "report", job.id)
    if job.status != "done":
        raise HTTPException(409, f"the study is {job.status}")
    try:
        path = ctx.processor.report(job.id)
    except (ValueError, OSError) as exc:
        raise HTTPException(500, f"the report could not be written ({exc})") from None
    return FileResponse(path, media_type="text/html")


@router.get(
    "/api/v1/studies/{study_id}/slices/{n}.png",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}, **errors(404, 409)},
)
def slice_image(
    study_id: str,
    n: int,
    window: str = Query("brain", pattern="^(brain|subdural|bone)$"),
    overlay: str = Query("none", pattern="^(heatmap|segmentation|none)$"),
    label: str = Query("any"),
    ctx: Context = Depends(context),
) -> Response:
    """Slice ``n`` (z order) in a window, with the heat map of ``label`` or the segmentation
    (a study predicted with a segmenter) when asked."""
    job = job_or_404(ctx, study_id)
    if job.result is None:
        raise HTTPException(409, f"the study is {job.status}")
    slices = job.result["slices"]
    if not 0 <= n < len(slices) or window not in VIEW_WINDOWS:
        raise HTTPException(404, "no such slice")
    if label not in job.result["probabilities"]:
        raise HTTPException(422, "unknown label")
    files = ctx.studies / job.id / "files"
    rows = [slice_row(files, s) for s in slices]
    masks = None
    if overlay == "segmentation":
        try:
            masks = slice_masks(ctx.studies / job.id / "result", job.result, n)
        except LookupError as exc:
            raise HTTPException(404, str(exc)) from None
    png = slice_png(ctx.runner, rows, n, window, overlay == "heatmap", label, masks)
    return Response(png, media_type="image/png", headers={"Cache-Control": "max-age=3600"})


def slice_row(files: Path, entry: dict[str, Any]) -> tuple[str, str, str]:
    """The decode row of a summary's slice: a file of the study, or a slab of its files."""
    if entry.get("slab_files"):
        return (str(entry["n"]), json.dumps([str(files / f) for f in entry["slab_files"]]), "slab")
    return (str(entry["n"]), str(files / entry["file"]), "dicom")


@router.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
def metrics(ctx: Context = Depends(context)) -> Response:
    """Prometheus text format."""
    return Response(generate_latest(ctx.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@public.get("/healthz")
def healthz(ctx: Context = Depends(context)) -> Any:
    """200 while every part runs; 503 naming the parts that are down (they are restarted)."""
    down = ctx.down()
    body = {
        "status": "down" if down else "ok",
        "queued": ctx.store.count("queued"),
        "running": ctx.store.count("running"),
    }
    if down:
        return JSONResponse({**body, "down": down}, 503)
    return body
