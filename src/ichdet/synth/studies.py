"""``ichdet synth``: labelled synthetic head-CT studies in the RSNA Kaggle layout.

Writes ``OUT/stage_2_train/ID_<sop>.dcm``, ``OUT/stage_2_test/ID_<sop>.dcm``,
``OUT/stage_2_train.csv`` (Kaggle long form, with a few duplicate rows as in the real file),
``OUT/stage_2_sample_submission.csv``, ``OUT/stage_2_test_labels.csv`` (the held-out truth, which
only synthetic data has), optional ``OUT/masks/ID_<sop>.npz`` and ``OUT/synth.json`` (settings,
counts, prevalence). Deterministic for a seed, whatever the number of workers.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable
from concurrent.futures import as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from ichdet.dicom.header import SYNTHETIC_MANUFACTURER
from ichdet.dicom.write import ct_dataset, save_dataset
from ichdet.labels import LABELS, SUBTYPES
from ichdet.synth.phantom import Grid, StudyPlan, draw_lesion, plan_study, render_slice
from ichdet.synth.variants import MAIN_SERIES, write_variants
from ichdet.synth.variants import Context as VariantContext
from ichdet.util.atomic import atomic_path, write_text
from ichdet.util.parallel import process_pool

#: DICOM encodings seen in RSNA, with how often synth uses each.
ENCODINGS = {
    "signed_1024": 0.55,  # int16, intercept -1024, out-of-FOV stored as -2000 (-> -3024 HU)
    "unsigned_1024_str": 0.2,  # uint16, intercept "-1024.000000", PixelPaddingValue 0
    "rsna_12bit_bug": 0.15,  # uint16 12-bit, HU stored mod 4096, intercept 0 (RSNA's defect)
    "unsigned_1000": 0.1,  # uint16, intercept -1000
}


@dataclass(frozen=True)
class StudyJob:
    index: int
    seed: np.random.SeedSequence
    patient_id: str
    study_id: str
    series_id: str
    split: str
    subtypes: tuple[str, ...]  # lesions forced into this study (coverage of rare subtypes)


def _hex_id(rng: np.random.Generator, digits: int, taken: set[str]) -> str:
    while True:
        value = "ID_" + "".join(rng.choice(list("0123456789abcdef"), size=digits))
        if value not in taken:
            taken.add(value)
            return value


def sop_id(study_id: str, k: int) -> str:
    """RSNA-style image id (``ID_`` + 9 hex digits), a hash of the study id and slice number."""
    return "ID_" + hashlib.blake2b(f"{study_id}/{k}".encode(), digest_size=8).hexdigest()[:9]


def plan_jobs(studies: int, seed: int, test_fraction: float) -> list[StudyJob]:
    """Patients, studies, splits (by patient) and forced subtypes for ``studies`` studies."""
    rng = np.random.default_rng(seed)
    taken: set[str] = set()
    patients: list[str] = []
    for _ in range(studies):  # about one patient in five has two studies
        if patients and rng.random() < 0.25 and patients.count(patients[-1]) == 1:
            patients.append(patients[-1])
        else:
            patients.append(_hex_id(rng, 8, taken))
    unique = list(dict.fromkeys(patients))
    n_test = int(round(test_fraction * len(unique)))
    test_patients = set(rng.permutation(unique)[:n_test].tolist())
    # Every subtype should appear in a modest set: the rarest would often be absent by chance.
    forced: list[tuple[str, ...]] = [()] * studies
    train_studies = [i for i in range(studies) if patients[i] not in test_patients]
    if len(train_studies) >= len(SUBTYPES):
        for i, slot in enumerate(rng.permutation(train_studies)[: len(SUBTYPES)]):
            forced[int(slot)] = (SUBTYPES[i],)
    seeds = np.random.SeedSequence(seed).spawn(studies)
    return [
        StudyJob(
            i,
            seeds[i],
            patients[i],
            _hex_id(rng, 10, taken),
            _hex_id(rng, 10, taken),
            "test" if patients[i] in test_patients else "train",
            forced[i],
        )
        for i in range(studies)
    ]


def _encode(hu: np.ndarray, fov: np.ndarray, encoding: str) -> tuple[np.ndarray, dict]:
    """Rounded HU -> stored values and the dataset keywords of ``encoding``."""
    h = np.rint(hu).astype(np.int32)
    if encoding == "signed_1024":
        stored = np.clip(h + 1024, -2000, 32767)
        stored[~fov] = -2000
        return stored.astype(np.int16), {"intercept": -1024.0}
    if encoding == "unsigned_1024_str":
        stored = np.clip(h + 1024, 0, 65535)
        stored[~fov] = 0
        return stored.astype(np.uint16), {"intercept": "-1024.000000", "padding_value": 0}
    if encoding == "rsna_12bit_bug":
        stored = np.mod(np.clip(h, -1000, 3095), 4096)  # recoverable range of the fix
        return stored.astype(np.uint16), {"intercept": 0.0, "bits_stored": 12}
    if encoding == "unsigned_1000":
        stored = np.clip(h + 1000, 0, 65535)
        return stored.astype(np.uint16), {"intercept": -1000.0}
    raise ValueError(f"unknown encoding {encoding!r}")


def _tilt_orientation(rng: np.random.Generator) -> tuple[float, ...]:
    if rng.random() < 0.7:
        return (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
    t = math.radians(rng.uniform(-25, 25))
    return (1.0, 0.0, 0.0, 0.0, math.cos(t), -math.sin(t))


@dataclass(frozen=True)
class StudyDesign:
    """A study's phantom plus how its files are encoded (all drawn from the job's seed)."""

    plan: StudyPlan
    encoding: str
    orientation: tuple[float, ...]
    origin: np.ndarray
    syntax: str
    multivalued_window: bool
    order: np.ndarray  # the order in which slices are written (and named)


def design_study(job: StudyJob, size: int) -> StudyDesign:
    rng = np.random.default_rng(job.seed)
    plan = plan_study(rng, size, positive=True if job.subtypes else None)
    for name in job.subtypes:
        if all(lesion.subtype != name for lesion in plan.lesions):
            plan.lesions[0] = draw_lesion(rng, name, plan)
    return StudyDesign(
        plan=plan,
        encoding=str(rng.choice(list(ENCODINGS), p=list(ENCODINGS.values()))),
        orientation=_tilt_orientation(rng),
        origin=np.array([-(size - 1) / 2 * plan.spacing] * 2 + [rng.uniform(-50, 50)]),
        syntax=ImplicitVRLittleEndian if rng.random() < 0.1 else ExplicitVRLittleEndian,
        multivalued_window=bool(rng.random() < 0.5),  # RSNA has both forms
        order=rng.permutation(plan.n_slices),
    )


def render_study(
    job: StudyJob, out: Path, size: int, masks: bool, variants: tuple[str, ...] = ()
) -> list[dict]:
    """Render and write one study (and its other series, ``variants``: see
    ``ichdet.synth.variants``); returns one record per slice of the axial series."""
    design = design_study(job, size)
    plan, encoding, orientation = design.plan, design.encoding, design.orientation
    normal = np.cross(orientation[:3], orientation[3:])
    window = design.multivalued_window
    grid = Grid.for_plan(plan)
    folder = out / f"stage_2_{job.split}"
    records = []
    volume = np.zeros((plan.n_slices, size, size), np.float32) if variants else None
    for k in design.order:  # files in no particular order, as on disk
        hu, lesion_masks = render_slice(plan, int(k), grid)
        if volume is not None:
            volume[k] = hu
        stored, extra = _encode(hu, grid.fov, encoding)
        sop = sop_id(job.study_id, int(k))
        z = plan.slice_z(int(k))
        ds = ct_dataset(
            stored,
            position=tuple(design.origin + z * normal),
            orientation=orientation,
            pixel_spacing=(plan.spacing, plan.spacing),
            slice_thickness=plan.thickness,
            sop_instance_uid=sop,
            study_instance_uid=job.study_id,
            series_instance_uid=job.series_id,
            patient_id=job.patient_id,
            instance_number=int(k) + 1,
            transfer_syntax=design.syntax,
            window_center=["00036", "00036"] if window else 40,
            window_width=["00080", "00080"] if window else 80,
            **extra,
        )
        ds.Manufacturer = SYNTHETIC_MANUFACTURER  # runs record that they trained on phantoms
        for keyword, value in (MAIN_SERIES if variants else {}).items():
            setattr(ds, keyword, value)
        save_dataset(ds, folder / f"{sop}.dcm")
        if masks and lesion_masks:
            with atomic_path(out / "masks" / f"{sop}.npz") as tmp, open(tmp, "wb") as fh:
                np.savez_compressed(fh, **lesion_masks)  # type: ignore[arg-type]
        labels = {name: int(name in lesion_masks) for name in SUBTYPES}
        labels["any"] = max(labels.values())
        records.append(
            {
                "image_id": sop,
                "study_id": job.study_id,
                "series_id": job.series_id,
                "patient_id": job.patient_id,
                "split": job.split,
                "z": float(z),
                "encoding": encoding,
                **labels,
            }
        )
    if volume is not None:
        _variants(job, design, volume, folder, variants)
    return records


def _variants(
    job: StudyJob, design: StudyDesign, volume: np.ndarray, folder: Path, variants: tuple[str, ...]
) -> None:
    """The study's other series (``ichdet.synth.variants``), from its axial volume."""
    origin = design.origin
    context = VariantContext(
        job.study_id,
        job.patient_id,
        job.series_id,
        design.plan,
        volume,
        folder,
        design.plan.seed,
        (float(origin[0]), float(origin[1]), float(origin[2])),
        tuple(design.orientation),
    )
    write_variants(context, variants)


def _long_form(records: list[dict], value: Callable[[dict, str], str]) -> str:
    lines = ["ID,Label"]
    for r in records:
        lines += [f"{r['image_id']}_{name},{value(r, name)}" for name in LABELS]
    return "\n".join(lines) + "\n"


def render_all(
    jobs: list[StudyJob],
    out: Path,
    size: int,
    masks: bool,
    workers: int,
    progress: Callable[[int], None] | None,
    variants: tuple[str, ...] = (),
) -> list[dict]:
    """Render every study (in ``workers`` processes); records in job order, each study by z."""
    results: dict[int, list[dict]] = {}
    if workers > 1:
        with process_pool(workers) as pool:
            futures = {
                pool.submit(render_study, j, out, size, masks, variants): j.index for j in jobs
            }
            for future in as_completed(futures):
                results[futures[future]] = future.result()
                progress and progress(len(results[futures[future]]))
    else:
        for job in jobs:
            results[job.index] = render_study(job, out, size, masks, variants)
            progress and progress(len(results[job.index]))
    records = [r for j in jobs for r in sorted(results[j.index], key=lambda r: r["z"])]
    ids = [r["image_id"] for r in records]
    if len(set(ids)) != len(ids):  # 9 hex digits: a clash is ~1e-5 likely at 10^4 images
        raise RuntimeError("synthetic image ids clash; choose another seed")
    return records


def synthesize(
    out: str | os.PathLike,
    studies: int = 30,
    seed: int = 0,
    size: int = 512,
    test_fraction: float = 0.2,
    masks: bool = False,
    workers: int = 1,
    progress: Callable[[int], None] | None = None,
    series: tuple[str, ...] = (),
) -> dict:
    """Write a synthetic dataset in the Kaggle layout; returns the summary written to synth.json.

    ``series``: other series to write into each study beside the labelled axial one (see
    ``ichdet.synth.variants``: localizer, bone, coronal, sagittal, contrast, thin, dose-sr, chest).
    """
    if studies < 1:
        raise ValueError("studies must be >= 1")
    if size < 32:
        raise ValueError("size must be >= 32")
    out = Path(out)
    for split in ("train", "test"):
        (out / f"stage_2_{split}").mkdir(parents=True, exist_ok=True)
    jobs = plan_jobs(studies, seed, test_fraction)
    records = render_all(jobs, out, size, masks, workers, progress, tuple(series))
    train = [r for r in records if r["split"] == "train"]
    test = [r for r in records if r["split"] == "test"]
    # the real stage_2_train.csv repeats some rows; so does ours (one image in 200)
    dup_rng = np.random.default_rng(seed + 1)
    duplicated = [r for r in train if dup_rng.random() < 0.005]
    write_text(
        out / "stage_2_train.csv", _long_form(train + duplicated, lambda r, name: str(r[name]))
    )
    write_text(out / "stage_2_sample_submission.csv", _long_form(test, lambda r, name: "0.5"))
    write_text(out / "stage_2_test_labels.csv", _long_form(test, lambda r, name: str(r[name])))
    settings: dict[str, Any] = dict(
        studies=studies, seed=seed, size=size, test_fraction=test_fraction, masks=masks
    )
    if series:
        settings["series"] = list(series)
    summary = {
        "settings": settings,
        "images": {"train": len(train), "test": len(test)},
        "studies": {
            "train": len({r["study_id"] for r in train}),
            "test": len({r["study_id"] for r in test}),
        },
        "patients": len({r["patient_id"] for r in records}),
        "prevalence": {name: float(np.mean([r[name] for r in records])) for name in LABELS},
        "duplicate_csv_images": len(duplicated),
    }
    write_text(out / "synth.json", json.dumps(summary, indent=2) + "\n")
    return summary
