"""The REST API under ``/api/v1`` (and ``/healthz``, ``/metrics``): routes over the app's
:class:`Context`. Study ids in URLs are internal 32-hex ids; anything else is a 404."""

from __future__ import annotations

import json
import logging
import re
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, File, HTTPException, Query, Request, UploadFile
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ichdet.serve.context import Context
from ichdet.serve.images import VIEW_WINDOWS, slice_png
from ichdet.serve.store import Job
from ichdet.serve.uploads import UploadError, UploadLimits, expand_zips, save_parts, split_studies

log = logging.getLogger("ichdet.serve")
ID = re.compile(r"[0-9a-f]{32}")
_bearer = HTTPBearer(auto_error=False)


def context(request: Request) -> Context:
    return request.app.state.ctx


def auth(
    request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(_bearer)
) -> None:
    """With a token configured, every call needs ``Authorization: Bearer <token>``."""
    token = context(request).settings.token
    if token is None:
        return
    given = credentials.credentials if credentials else ""
    if not secrets.compare_digest(given.encode(), token.encode()):
        raise HTTPException(401, "a valid bearer token is required", {"WWW-Authenticate": "Bearer"})


router = APIRouter(dependencies=[Depends(auth)])
public = APIRouter()


def job_or_404(ctx: Context, study_id: str) -> Job:
    job = ctx.store.get(study_id) if ID.fullmatch(study_id) else None
    if job is None:
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
    }
    if job.reason:
        out["reason"] = job.reason
    if job.result:
        r = job.result
        out["assessable"] = r.get("assessable", True)
        keys = ["probabilities", "flags", "key_slices", "thresholds", "warning", "series_stage"]
        keys += ["not_assessable", "notes"]
        out.update({k: r[k] for k in keys if k in r})
        if full:
            out["slices"] = [{k: s[k] for k in ("n", "z", "probabilities")} for s in r["slices"]]
            out["models"] = r["models"]
            out["series"] = r.get("series", [])
    return out


@router.post("/api/v1/studies", status_code=202)
def upload(files: list[UploadFile] = File(...), ctx: Context = Depends(context)) -> Any:
    """DICOM files (form field ``files``, repeated) or one .zip: one job per study found."""
    if ctx.store.count("queued") >= ctx.settings.queue_size:
        ctx.metrics.refused.labels("429").inc()
        return JSONResponse({"detail": "queue full; retry later"}, 429, {"Retry-After": "10"})
    tmp = Path(tempfile.mkdtemp(dir=ctx.settings.store, prefix="incoming-"))
    try:
        limits = UploadLimits(ctx.settings.max_upload_bytes)
        save_parts((f.file for f in files), tmp / "files", limits)
        expand_zips(tmp / "files", limits)
        found, skipped = split_studies(tmp / "files", ctx.studies)
    except UploadError as exc:
        ctx.metrics.refused.labels(str(exc.status)).inc()
        log.info("upload refused (%d)", exc.status)
        return JSONResponse({"detail": exc.reason}, exc.status)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for study_id, count in found:
        ctx.store.add(study_id, count)
        log.info("study %s queued (%d files, %d skipped)", study_id, count, len(skipped))
    ctx.processor.wake.set()
    answers = [{"id": i, "status": "queued", "files": n} for i, n in found]
    return answers[0] if len(answers) == 1 else answers


@router.get("/api/v1/studies")
def worklist(
    offset: int = Query(0, ge=0),
    limit: int = Query(50, ge=1, le=500),
    ctx: Context = Depends(context),
) -> Any:
    """Studies, flagged first, then by p(any), then newest; paged."""
    jobs, total = ctx.store.worklist(offset, limit)
    return {"total": total, "offset": offset, "items": [public_view(j, False) for j in jobs]}


@router.get("/api/v1/studies/{study_id}")
def study(study_id: str, ctx: Context = Depends(context)) -> Any:
    """Status; when done, the six probabilities, flags, key slices and the slices in z order."""
    return public_view(job_or_404(ctx, study_id), full=True)


@router.delete("/api/v1/studies/{study_id}", status_code=204)
def delete(study_id: str, ctx: Context = Depends(context)) -> Response:
    if job_or_404(ctx, study_id).status == "running":
        raise HTTPException(409, "the study is being processed; delete it afterwards")
    ctx.store.delete(study_id)
    shutil.rmtree(ctx.studies / study_id, ignore_errors=True)
    return Response(status_code=204)


@router.get("/api/v1/studies/{study_id}/report")
def report(study_id: str, ctx: Context = Depends(context)) -> Any:
    """The self-contained HTML report (written on first request)."""
    job = job_or_404(ctx, study_id)
    if job.status != "done":
        raise HTTPException(409, f"the study is {job.status}")
    try:
        path = ctx.processor.report(job.id)
    except (ValueError, OSError) as exc:
        raise HTTPException(500, f"the report could not be written ({exc})") from None
    return FileResponse(path, media_type="text/html")


@router.get("/api/v1/studies/{study_id}/slices/{n}.png")
def slice_image(
    study_id: str,
    n: int,
    window: str = Query("brain", pattern="^(brain|subdural|bone)$"),
    overlay: str = Query("none", pattern="^(heatmap|none)$"),
    label: str = Query("any"),
    ctx: Context = Depends(context),
) -> Response:
    """Slice ``n`` (z order) in a window, with the heat map of ``label`` when asked."""
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
    png = slice_png(ctx.runner, rows, n, window, overlay == "heatmap", label)
    return Response(png, media_type="image/png", headers={"Cache-Control": "max-age=3600"})


def slice_row(files: Path, entry: dict[str, Any]) -> tuple[str, str, str]:
    """The decode row of a summary's slice: a file of the study, or a slab of its files."""
    if entry.get("slab_files"):
        return (str(entry["n"]), json.dumps([str(files / f) for f in entry["slab_files"]]), "slab")
    return (str(entry["n"]), str(files / entry["file"]), "dicom")


@router.get("/metrics")
def metrics(ctx: Context = Depends(context)) -> Response:
    """Prometheus text format."""
    return Response(generate_latest(ctx.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@public.get("/healthz")
def healthz(ctx: Context = Depends(context)) -> Any:
    return {
        "status": "ok",
        "queued": ctx.store.count("queued"),
        "running": ctx.store.count("running"),
    }
