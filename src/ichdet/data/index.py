"""``ichdet index``: a folder, a Kaggle .zip, or a folder of pre-windowed images -> one table row
per image (ids, z, split, source, labels, fold).

Header-only DICOM reads, in parallel processes. Unreadable files never stop the run: they are
returned (and written beside the index) with the reason.
"""

from __future__ import annotations

import json
import os
import re
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from ichdet.data.folds import assign_folds
from ichdet.data.study_labels import join_study_labels, read_study_labels
from ichdet.dicom.read import DicomError, SliceMeta, read_hu, read_identity, read_meta
from ichdet.dicom.sources import (
    IMAGE_SUFFIXES,
    ZIP_SEP,
    find_member,
    list_sources,
    open_source,
    open_text,
    read_source,
    source_stem,
    split_source,
)
from ichdet.labels import LABELS, parse_kaggle_id
from ichdet.util.atomic import atomic_path, write_text
from ichdet.util.parallel import WORKER_DIED, map_chunks
from ichdet.util.tables import write_frame

ID_COLUMNS = ["image_id", "study_id", "series_id", "patient_id"]
#: Header facts per image that series selection reads (``SeriesFacts``; "" when absent).
SERIES_TEXT_COLUMNS = [
    "sop_class_uid",
    "image_type",
    "kernel",
    "contrast",
    "body_part",
    "description",
    "orientation",
]
SERIES_NUMBER_COLUMNS = ["series_number", "thickness", "pixel_spacing"]
SERIES_COLUMNS = SERIES_TEXT_COLUMNS + SERIES_NUMBER_COLUMNS
#: Study header facts a validation groups and joins by ("" when absent).
STUDY_TEXT_COLUMNS = ["manufacturer", "accession", "study_date"]
#: Files that sit beside images in datasets; listed as not images unless they hold DICOM.
NOT_IMAGES = (".csv", ".json", ".txt", ".md", ".parquet", ".xlsx", ".pdf", ".html", ".npz")
#: The reason given to such companion files; they are listed in the report, not as errors.
NOT_AN_IMAGE = "not an image or DICOM file"
KAGGLE_LABEL_FILES = ("stage_2_train.csv", "stage_1_train.csv")
_SPLIT = re.compile(r"(?:^|[_\-/])(train|test)(?:$|[_\-/])", re.IGNORECASE)


def split_from_path(source: str) -> str | None:
    """``stage_2_train/ID_x.dcm`` -> "train" ("test" likewise; None if the path says neither).

    ``source`` is a path relative to the dataset root, or a zip source.
    """
    archive, member = split_source(source)
    parents = str(Path(member if member is not None else archive).parent).replace("\\", "/")
    found = _SPLIT.findall("/" + parents + "/")
    return found[-1].lower() if found else None


def read_long_labels(text: str) -> tuple[pd.DataFrame, dict]:
    """Kaggle long-form CSV text (``ID,Label`` rows ``ID_<image>_<label>``) -> wide int table.

    Exact duplicate rows (the real file has them) are dropped; conflicting duplicates keep the
    maximum and are counted in the returned report.
    """
    from io import StringIO

    raw = pd.read_csv(StringIO(text), dtype={"ID": str})
    if list(raw.columns[:2]) != ["ID", "Label"]:
        raise ValueError(f"expected columns ID,Label; got {', '.join(map(str, raw.columns))}")
    exact = int(raw.duplicated().sum())
    raw = raw.drop_duplicates()
    parsed = [parse_kaggle_id(i) for i in raw["ID"]]
    raw["image_id"] = [p[0] for p in parsed]
    raw["label"] = [p[1] for p in parsed]
    conflicts = int(raw.duplicated(["image_id", "label"]).sum())
    wide = raw.pivot_table(index="image_id", columns="label", values="Label", aggfunc="max")
    missing = [name for name in LABELS if name not in wide.columns]
    if missing:
        raise ValueError(f"labels CSV lacks label(s): {', '.join(missing)}")
    wide = wide[list(LABELS)]
    incomplete = int(wide.isna().any(axis=1).sum())
    wide = wide.dropna().astype(np.int8)
    report = {
        "duplicate_rows": exact,
        "conflicting_rows": conflicts,
        "images_missing_some_labels": incomplete,
    }
    return wide, report


def read_wide_labels(path: str | os.PathLike) -> pd.DataFrame:
    """A CSV with column ``image`` (file stem) and one or more label columns -> wide table.

    Optional columns ``study_id``, ``series_id``, ``patient_id`` and ``z`` are kept. Missing
    label columns stay empty; ``any`` is derived from the subtypes when all five are given.
    """
    df = pd.read_csv(path, dtype={"image": str})
    if "image" not in df.columns:
        raise ValueError(f"{path}: needs a column 'image' (the file stem)")
    given = [name for name in LABELS if name in df.columns]
    if not given:
        raise ValueError(f"{path}: no label columns (any of {', '.join(LABELS)})")
    df = df.drop_duplicates("image").set_index("image")
    df.index.name = "image_id"
    if "any" not in df.columns and all(n in df.columns for n in LABELS[:-1]):
        df["any"] = df[list(LABELS[:-1])].max(axis=1)
    return df


def _has_dicom_magic(source: str) -> bool:
    """``DICM`` at byte 128: a DICOM file whatever its name says."""
    try:
        with open_source(source) as stream:
            return stream.read(132)[128:] == b"DICM"
    except (ValueError, OSError, zipfile.BadZipFile, zlib.error, EOFError):
        return False


def _scan_one(source: str) -> dict | tuple[str, str]:
    suffix = os.path.splitext(split_source(source)[1] or source)[1].lower()
    if suffix in NOT_IMAGES and not _has_dicom_magic(source):
        return (source, NOT_AN_IMAGE)
    if suffix in IMAGE_SUFFIXES:
        return {"image_id": source_stem(source), "source": source, "kind": "image"}
    try:
        with open_source(source) as stream:
            meta = read_meta(stream)
    except (DicomError, ValueError) as exc:
        reason = exc.reason if isinstance(exc, DicomError) else str(exc)
        return other_object(source, reason) or (source, reason)
    except Exception as exc:  # noqa: BLE001 - one bad file must never stop a batch
        return (source, f"unreadable ({type(exc).__name__}: {exc})")
    return meta_record(meta, source)


def meta_record(meta: SliceMeta, source: str) -> dict:
    """The index row of one slice's header."""
    facts = meta.series
    return {
        "image_id": meta.sop_instance_uid or source_stem(source),
        "study_id": meta.study_instance_uid,
        "series_id": meta.series_instance_uid,
        "patient_id": meta.patient_id,
        "z": meta.z,
        "instance_number": meta.instance_number,
        "rows": meta.rows,
        "columns": meta.columns,
        "source": source,
        "kind": "dicom",
        "synthetic": meta.synthetic,
        "sop_class_uid": facts.sop_class_uid,
        "image_type": facts.image_type,
        "kernel": facts.kernel,
        "contrast": facts.contrast,
        "body_part": facts.body_part,
        "description": facts.description,
        "series_number": facts.series_number,
        "orientation": "\\".join(f"{v:.4f}" for v in meta.orientation or ()),
        "thickness": meta.slice_thickness,
        "pixel_spacing": meta.pixel_spacing[0] if meta.pixel_spacing else None,
        "manufacturer": meta.manufacturer,
        "accession": meta.accession,
        "study_date": meta.study_date,
    }


def other_object(source: str, reason: str) -> dict | None:
    """A DICOM object of a study that is not a CT slice ichdet reads (a dose report, a
    Secondary Capture, a multi-frame image): its study, series and what it is, so that series
    selection can list it; None when its header cannot be read either."""
    try:
        with open_source(source) as stream:
            identity = read_identity(stream)
    except Exception:  # noqa: BLE001 - a damaged file stays a plain error
        return None
    if not identity.get("study_id") or not identity.get("series_id"):
        return None
    return {**identity, "source": source, "kind": "other", "reason": reason}


def _scan_chunk(sources: list[str]) -> list[dict | tuple[str, str]]:
    return [_scan_one(s) for s in sources]


def scan(
    sources: list[str],
    workers: int = 1,
    progress: Callable[[int], None] | None = None,
    mapper: Callable[..., list] = map_chunks,
) -> tuple[list[dict], list[tuple[str, str]]]:
    """Header-read every source; returns (records, errors as (source, reason)). ``mapper``:
    how the work is spread (this machine's processes; ``ichdet.util.ray_engine.mapper``)."""
    results = mapper(
        _scan_chunk, sources, workers, progress=progress, on_crash=lambda s: [(s, WORKER_DIED)]
    )
    records = [r for r in results if isinstance(r, dict)]
    errors = [r for r in results if isinstance(r, tuple)]
    errors += [(r["source"], r["reason"]) for r in records if r["kind"] == "other"]
    return records, errors


def order_series(df: pd.DataFrame) -> pd.DataFrame:
    """Sort by study, series and z; add ``slice_index`` and ``series_slices``."""
    key = df["z"].where(df["z"].notna(), df.get("instance_number", 0).astype(float))
    df = df.assign(_key=key).sort_values(["study_id", "series_id", "_key", "image_id"])
    df["slice_index"] = df.groupby(["study_id", "series_id"]).cumcount().astype(np.int32)
    df["series_slices"] = df.groupby(["study_id", "series_id"])["image_id"].transform("size")
    return df.drop(columns="_key").reset_index(drop=True)


def find_labels(
    data: str | os.PathLike, labels: str | os.PathLike | None, report: dict
) -> pd.DataFrame | None:
    """The label table: ``labels`` (long or wide form), else the Kaggle CSV found in ``data``."""
    if labels is not None:
        text = Path(labels).read_text()
        if text.startswith("ID,Label"):
            table, report["labels_csv"] = read_long_labels(text)
            return table
        return read_wide_labels(labels)
    for name in KAGGLE_LABEL_FILES:
        found = find_member(data, name)
        if found:
            table, report["labels_csv"] = read_long_labels(open_text(found))
            report["labels_file"] = found
            return table
    return None


def _drop_duplicates(df: pd.DataFrame, errors: list) -> pd.DataFrame:
    """One row per image id: of several files with one id (a re-send, a truncated copy), the
    first whose pixels decode is kept; the others are listed."""
    dup = df.duplicated("image_id", keep=False)
    if not dup.any():
        return df
    drop = []
    for image_id, group in df[dup].groupby("image_id", sort=False):
        pairs = list(zip(group.index, group["source"], strict=True))
        keep = next((i for i, s in pairs if _decodes(s)), group.index[0])
        kept = df.at[keep, "source"]
        drop += [i for i in group.index if i != keep]
        errors += [
            (s, f"duplicate image id {image_id}; kept {kept}") for i, s in pairs if i != keep
        ]
    return df.drop(index=drop)


def _decodes(source: str) -> bool:
    try:
        read_hu(read_source(source))
    except (DicomError, ValueError, OSError):
        return False
    return True


def _fill_ids(df: pd.DataFrame, label_table: pd.DataFrame | None) -> pd.DataFrame:
    """Ids from the labels CSV where headers had none (image folders), else the image id."""
    for column in ("study_id", "series_id", "patient_id", "z"):
        if label_table is not None and column in label_table:
            df[column] = df[column].astype(object).fillna(df["image_id"].map(label_table[column]))
    for column in ("study_id", "series_id", "patient_id"):
        present = df[column].notna() & (df[column].astype(str) != "")
        df[column] = df[column].astype(object).where(present, df["image_id"]).astype(str)
    df["z"] = pd.to_numeric(df["z"])
    for column in SERIES_NUMBER_COLUMNS:
        df[column] = pd.to_numeric(df[column])
    for column in [*SERIES_TEXT_COLUMNS, *STUDY_TEXT_COLUMNS]:
        df[column] = df[column].astype(object).fillna("").astype(str)
    df["synthetic"] = df["synthetic"].astype("boolean").fillna(False).astype(bool)
    return df


def _join_labels(df: pd.DataFrame, label_table: pd.DataFrame | None, report: dict) -> pd.Series:
    """Label columns joined onto ``df`` (NaN where unknown); returns which rows are labelled."""
    for name in LABELS:
        df[name] = np.nan
    if label_table is None:
        return pd.Series(False, index=df.index)
    present = [n for n in LABELS if n in label_table.columns]
    joined = df[["image_id"]].join(label_table[present], on="image_id")
    df[present] = joined[present].to_numpy(dtype=float)
    labelled = df["any"].notna() if "any" in present else df[present].notna().any(axis=1)
    report["images_without_labels"] = int((~labelled & (df["split"] != "test")).sum())
    report["labels_without_images"] = int((~label_table.index.isin(df["image_id"])).sum())
    return labelled


def index_frame(records: list[dict]) -> pd.DataFrame:
    """An index of header records (no labels, splits or folds), in series order."""
    return order_series(_frame(records))


def _frame(records: list[dict]) -> pd.DataFrame:
    columns = [*ID_COLUMNS, "z", "instance_number", "rows", "columns", "source", "kind"]
    columns += ["synthetic", *SERIES_COLUMNS, *STUDY_TEXT_COLUMNS]
    return pd.DataFrame(records, columns=columns)


def build_index(
    data: str | os.PathLike,
    labels: str | os.PathLike | None = None,
    folds: int | None = None,
    workers: int = 1,
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
    total: Callable[[int], None] | None = None,
    study_labels: str | os.PathLike | None = None,
    mapper: Callable[..., list] = map_chunks,
) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Index ``data``; returns (index, errors, report). See the module docstring.

    ``study_labels``: a CSV of study-level labels (see ``ichdet.data.study_labels``);
    ``mapper``: where the header reads run (:func:`scan`).
    """
    study_table = read_study_labels(study_labels) if study_labels is not None else None
    skipped: list[tuple[str, str]] = []
    sources = list(list_sources(data, skipped))
    total and total(len(sources))
    records, errors = scan(sources, workers, progress, mapper)
    others = [r for r in records if r["kind"] == "other"]
    records = [r for r in records if r["kind"] != "other"]
    not_images = [s for s, reason in errors if reason == NOT_AN_IMAGE]
    errors = skipped + [e for e in errors if e[1] != NOT_AN_IMAGE]
    report: dict = {
        "files": len(sources) + len(skipped),
        "errors": len(errors),
        "not_images": not_images,  # labels CSVs and other companions: listed, not indexed
        # DICOM objects that are no CT slice (dose reports, captures): listed per series
        "other_objects": [{k: v for k, v in r.items() if k != "kind"} for r in others],
    }
    label_table = find_labels(data, labels, report)
    df = _frame(records)
    df = _fill_ids(_drop_duplicates(df, errors), label_table)
    root = Path(data)
    df["split"] = [
        split_from_path(s if ZIP_SEP in s else os.path.relpath(s, root)) for s in df["source"]
    ]
    labelled = _join_labels(df, label_table, report)
    labelled |= join_study_labels(df, study_table, report)
    df["split"] = df["split"].where(df["split"].notna(), np.where(labelled, "train", "test"))
    df = order_series(df)
    if folds:
        df["fold"] = (
            assign_folds(df[df["split"] == "train"], folds, seed)
            .reindex(df.index, fill_value=-1)
            .astype(np.int64)
        )
    report["images"] = int(len(df))
    report["by_split"] = {k: int(v) for k, v in df["split"].value_counts().items()}
    return df, pd.DataFrame(errors, columns=["source", "reason"]), report


def index_paths(out: str | os.PathLike) -> tuple[Path, Path, Path]:
    """(index, errors, report) paths: ``X.parquet`` -> ``X.errors.csv``, ``X.report.json``."""
    out = Path(out)
    base = out.with_suffix("")
    return (
        out,
        base.with_name(base.name + ".errors.csv"),
        base.with_name(base.name + ".report.json"),
    )


def write_index(
    df: pd.DataFrame, errors: pd.DataFrame, report: dict, out: str | os.PathLike
) -> Path:
    """Write the index (parquet), its errors (CSV) and report (JSON), each atomically.

    The files of an earlier index at ``out`` are removed first and the parquet is written
    last, so a crash never leaves a new errors list beside a stale index.
    """
    index_path, errors_path, report_path = index_paths(out)
    for path in (index_path, errors_path, report_path):
        path.unlink(missing_ok=True)
    write_frame(errors_path, errors)
    write_text(report_path, json.dumps(report, indent=2) + "\n")
    with atomic_path(index_path) as tmp:
        df.to_parquet(tmp, index=False)
    return index_path


def read_index(path: str | os.PathLike) -> pd.DataFrame:
    return pd.read_parquet(path)
