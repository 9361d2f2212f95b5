"""Results as DICOM objects in the source study (highdicom): a Comprehensive 3D SR and Secondary
Capture images of the key slices.

Both go into the study they describe (same StudyInstanceUID and patient) as new series. The SR
holds one finding per label (probability, the flag at the run's operating threshold, the
threshold) with its key slice referenced by SOP Instance UID, and identifies the algorithm
(name, version, models) as the IHE AI Results profile asks; it is PARTIAL and UNVERIFIED (a
machine wrote it). Finding codes use the private scheme ``99ICHDET`` (no SNOMED mapping is
claimed). Each Secondary Capture shows the key slice in the brain window with the label's heat
map (occlusion sensitivity) and the probabilities burned in, and "NOT FOR DIAGNOSTIC USE".
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import highdicom as hd
import numpy as np
import pandas as pd
import pydicom
from pydicom.sequence import Sequence
from pydicom.sr.codedict import codes
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from ichdet.data.windows import PRESETS, apply_window
from ichdet.dicom.read import read_hu
from ichdet.inference.decode import display_source, frame_rows
from ichdet.labels import LABELS
from ichdet.reports.heatmaps import model_input, occlusion_map, overlay
from ichdet.util.atomic import atomic_path

SCHEME = "99ICHDET"
MANUFACTURER = "ichdet"
SR_SERIES, SC_SERIES = 9901, 9902
NOTICE = "NOT FOR DIAGNOSTIC USE"


def _code(value: str, meaning: str, scheme: str = SCHEME) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(value=value, scheme_designator=scheme, meaning=meaning)


FINDINGS = {name: _code(f"ICH-{name[:10].upper()}", f"{name} hemorrhage") for name in LABELS}
FINDING = _code("121071", "Finding", "DCM")
PROBABILITY = _code("ICH-PROB", "Probability of finding")
FLAG = _code("ICH-FLAG", "Flagged at operating threshold")
THRESHOLD = _code("ICH-THR", "Operating threshold")
KEY_SLICE = _code("ICH-KEY", "Key slice")
NOT_ASSESSABLE = _code("ICH-NA", "Study not assessable by the algorithm")
REASON = _code("ICH-NA-REASON", "Reason not assessable")
QUALITY = _code("ICH-QC", "Input quality note")
VOLUME = _code("ICH-VOL", "Hemorrhage volume (segmentation)")
THICKNESS = _code("ICH-THICK", "Maximal thickness of the collection (segmentation)")
UNITS = {
    "ml": hd.sr.CodedConcept(value="ml", scheme_designator="UCUM", meaning="milliliter"),
    "mm": hd.sr.CodedConcept(value="mm", scheme_designator="UCUM", meaning="millimeter"),
}
CONTAINS = hd.sr.RelationshipTypeValues.CONTAINS
PROPERTIES = hd.sr.RelationshipTypeValues.HAS_PROPERTIES
CONTEXT = hd.sr.RelationshipTypeValues.HAS_OBS_CONTEXT


def _measures(name: str, measures: dict[str, float]) -> list[Any]:
    """The finding's volume (mL) and, for a collection, its thickness (mm), when segmented."""
    items = []
    for concept, key, unit in ((VOLUME, "volume_ml", "ml"), (THICKNESS, "thickness_mm", "mm")):
        value = measures.get(f"{key}_{name}")
        if value is not None and value == value:
            items.append(
                hd.sr.NumContentItem(
                    concept, float(value), UNITS[unit], relationship_type=PROPERTIES
                )
            )
    return items


def _finding(
    name: str,
    p: float,
    flag: bool,
    threshold: float,
    key: pydicom.Dataset,
    measures: dict[str, float] | None = None,
) -> Any:
    item = hd.sr.CodeContentItem(FINDING, FINDINGS[name], relationship_type=CONTAINS)
    item.ContentSequence = Sequence(
        [
            hd.sr.NumContentItem(PROBABILITY, p, codes.UCUM.NoUnits, relationship_type=PROPERTIES),
            hd.sr.CodeContentItem(
                FLAG, codes.SCT.Yes if flag else codes.SCT.No, relationship_type=PROPERTIES
            ),
            hd.sr.NumContentItem(
                THRESHOLD, threshold, codes.UCUM.NoUnits, relationship_type=PROPERTIES
            ),
            hd.sr.ImageContentItem(
                KEY_SLICE, key.SOPClassUID, key.SOPInstanceUID, relationship_type=PROPERTIES
            ),
            *_measures(name, measures or {}),
        ]
    )
    return item


def _not_assessable(reason: str) -> Any:
    """The finding of a study that could not be read: no probability, the reason."""
    item = hd.sr.CodeContentItem(FINDING, NOT_ASSESSABLE, relationship_type=CONTAINS)
    item.ContentSequence = Sequence(
        [hd.sr.TextContentItem(REASON, reason[:1024] or "-", relationship_type=PROPERTIES)]
    )
    return item


def structured_report(
    summary: dict[str, Any],
    keys: dict[str, pydicom.Dataset],
    evidence: list[pydicom.Dataset],
    algorithm: dict[str, str],
) -> hd.sr.Comprehensive3DSR:
    """The SR: ``summary`` has probabilities, flags, thresholds and the segmentation's
    ``measures`` (or ``not_assessable``, the reason); ``keys`` the key slice of each label;
    ``evidence`` every instance it references (for a study not assessed, one instance of it);
    ``algorithm`` name, version, models."""
    content: list[Any] = [
        hd.sr.TextContentItem(
            _code("111001", "Algorithm Name", "DCM"), algorithm["name"], relationship_type=CONTEXT
        ),
        hd.sr.TextContentItem(
            _code("111003", "Algorithm Version", "DCM"),
            algorithm["version"],
            relationship_type=CONTEXT,
        ),
        hd.sr.TextContentItem(
            _code("111002", "Algorithm Parameters", "DCM"),
            algorithm["models"][:1024],
            relationship_type=CONTEXT,
        ),
    ]
    if summary.get("not_assessable") is not None:
        content.append(_not_assessable(summary["not_assessable"]))
    else:
        content += [
            _finding(
                n,
                summary["probabilities"][n],
                summary["flags"][n],
                summary["thresholds"][n],
                keys[n],
                summary.get("measures"),
            )
            for n in LABELS
        ]
    content += [
        hd.sr.TextContentItem(QUALITY, note[:1024], relationship_type=CONTAINS)
        for note in summary.get("notes", [])
    ]
    root = hd.sr.ContainerContentItem(_code("18748-4", "Diagnostic imaging report", "LN"))
    root.ContentSequence = Sequence(content)
    sr = hd.sr.Comprehensive3DSR(
        evidence=evidence,
        content=root,
        series_instance_uid=generate_uid(),
        series_number=SR_SERIES,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=False,
        is_verified=False,
    )
    sr.SeriesDescription = "ichdet hemorrhage findings (research use)"
    copy_deidentification(sr, evidence[0])
    return sr


def copy_deidentification(out: pydicom.Dataset, source: pydicom.Dataset) -> None:
    """A result of a de-identified study says so, and how (type 1C when identity removed)."""
    if str(source.get("PatientIdentityRemoved", "")).upper() != "YES":
        return
    out.PatientIdentityRemoved = "YES"
    out.DeidentificationMethod = source.get("DeidentificationMethod") or "as the source study"
    if "DeidentificationMethodCodeSequence" in source:
        out.DeidentificationMethodCodeSequence = source.DeidentificationMethodCodeSequence


def _burn(image: np.ndarray, lines: list[str]) -> np.ndarray:
    out = image.copy()
    scale = max(image.shape[0] / 512, 0.4)
    for k, text in enumerate(lines):
        y = int((22 + 20 * k) * scale)
        for colour, width in (((0, 0, 0), 3), ((255, 255, 0), 1)):
            cv2.putText(out, text, (6, y), cv2.FONT_HERSHEY_SIMPLEX, 0.5 * scale, colour, width)
    return out


def patient_orientation(ds: pydicom.Dataset) -> tuple[str, str]:
    """The patient direction of the rows and of the columns (dominant axis of each direction
    cosine; axial default ("L", "P") when the header has none)."""
    cosines = [float(v) for v in ds.get("ImageOrientationPatient", [1, 0, 0, 0, 1, 0])]
    out = []
    for vector in (cosines[:3], cosines[3:]):
        axis = int(np.argmax(np.abs(vector)))
        out.append(("LR", "PA", "HF")[axis][0 if vector[axis] > 0 else 1])
    return out[0], out[1]


def capture(
    runner: Any,
    rows: list[tuple[str, str, str]],
    n: int,
    label: str,
    summary: dict[str, Any],
    ref: pydicom.Dataset,
    series_uid: str,
    number: int,
) -> hd.sc.SCImage:
    """Key slice ``n`` of a series for ``label``: brain window, heat map, text burned in."""
    preset = PRESETS["brain"]
    gray = apply_window(read_hu(display_source(rows[n])), preset.center, preset.width)
    cam = occlusion_map(runner, model_input(runner, rows, n), LABELS.index(label))
    probs = summary["probabilities"]
    warning = ["MODEL TRAINED ON SYNTHETIC PHANTOMS ONLY"] if summary.get("warning") else []
    lines = [NOTICE, *warning, f"ichdet: key slice for {label}"] + [
        f"{k}: {probs[k]:.3f}{' FLAG' if summary['flags'][k] else ''}" for k in LABELS
    ]
    pixels = _burn(overlay(gray, cam), lines)
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=ref,
        pixel_array=pixels,
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        patient_orientation=patient_orientation(ref),
        series_instance_uid=series_uid,
        series_number=SC_SERIES,
        sop_instance_uid=generate_uid(),
        instance_number=number,
        manufacturer=MANUFACTURER,
        transfer_syntax_uid=ExplicitVRLittleEndian,
    )
    sc.SeriesDescription = "ichdet key slices (NOT FOR DIAGNOSTIC USE)"
    sc.BurnedInAnnotation = "YES"
    sc.Laterality = ""  # the head is not a paired part (type 2C: present, empty)
    source = pydicom.Dataset()
    source.ReferencedSOPClassUID = ref.SOPClassUID
    source.ReferencedSOPInstanceUID = ref.SOPInstanceUID
    sc.SourceImageSequence = Sequence([source])
    sc.DerivationDescription = "key slice, heat map and probabilities burned in (ichdet)"
    copy_deidentification(sc, ref)
    return sc


def source_header(source: str) -> pydicom.Dataset:
    """A key slice's header, with the SOP Class UID some exports (RSNA's) leave out."""
    ds = pydicom.dcmread(source, stop_before_pixels=True)
    if "SOPClassUID" not in ds:
        meta = getattr(ds, "file_meta", None)
        ds.SOPClassUID = (meta.get("MediaStorageSOPClassUID") if meta else None) or CTImageStorage
    for keyword in TYPE2:  # empty where the export left them out (the results copy them)
        if keyword not in ds:
            setattr(ds, keyword, "")
    return ds


#: Patient and study attributes (type 2: present, may be empty) the results carry over.
TYPE2 = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)


def dicom_results(
    runner: Any,
    study: pd.Series,
    slices: pd.DataFrame,
    sources: dict[str, str],
    thresholds: dict[str, float],
    version: str,
    decode: dict[str, tuple[str, str, str]] | None = None,
    reference: str | None = None,
) -> list[pydicom.Dataset]:
    """[SR, Secondary Captures...] for one study of a prediction (``slices`` in z order); a
    study not assessed gets the SR alone, saying so (``reference``: one of its instances).
    ``decode``: the decode row of each slice read (a slab's slices) for the heat maps."""
    notes = [n for n in str(study.get("notes") or "").split("; ") if n]
    used = (getattr(runner, "site", None) or {}).get("source", "the model's")
    models = f"{', '.join(runner.names)}; thresholds: {used}"
    algorithm = {"name": "ichdet", "version": version, "models": models}
    if str(study.get("status") or "assessed") != "assessed":
        summary: dict[str, Any] = {"not_assessable": str(study["reason"]), "notes": notes}
        if reference is None:
            raise ValueError("a study not assessed needs one of its instances to refer to")
        header = source_header(reference)
        return [structured_report(summary, {}, [header], algorithm)]
    summary = {
        "probabilities": {k: float(study[k]) for k in LABELS},
        "flags": {k: bool(study[f"{k}_flag"]) for k in LABELS},
        "thresholds": {k: float(thresholds.get(k, 0.5)) for k in LABELS},
        "warning": str(study.get("warning") or ""),
        "notes": notes,
        "measures": {
            k: float(v)
            for k, v in study.items()
            if str(k).startswith(("volume_ml_", "thickness_mm_")) and v == v
        },
    }
    key_ids = {k: str(study[f"{k}_slice"]) for k in LABELS}
    headers = {i: source_header(sources[i]) for i in dict.fromkeys(key_ids.values())}
    keys = {k: headers[i] for k, i in key_ids.items()}
    out: list[pydicom.Dataset] = [
        structured_report(summary, keys, list(headers.values()), algorithm)
    ]
    series_uid = generate_uid()
    for number, image_id in enumerate(headers, start=1):
        label = next(k for k in reversed(LABELS) if key_ids[k] == image_id)
        series = slices[
            slices["series_id"] == slices.set_index("image_id").at[image_id, "series_id"]
        ]
        rows = [(decode or {}).get(i, (i, sources[i], "dicom")) for i in series["image_id"]]
        n = list(series["image_id"]).index(image_id)
        out.append(capture(runner, rows, n, label, summary, headers[image_id], series_uid, number))
    return out


def write_datasets(datasets: list[pydicom.Dataset], folder: Path) -> list[Path]:
    """Each dataset as ``<modality>_<k>.dcm`` under ``folder``, atomically."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, ds in enumerate(datasets):
        path = folder / f"{str(ds.Modality).lower()}_{k}.dcm"
        with atomic_path(path) as tmp:
            ds.save_as(tmp, enforce_file_format=True)
        paths.append(path)
    return paths


def write_study_results(
    runner: Any, result: Any, out: Path, version: str
) -> tuple[list[Path], list[tuple[str, str]]]:
    """``predict --dicom-out``: every study's SR and Secondary Captures (and SEG, with a
    segmenter) under ``out/<study>/`` (a UID that is not a plain id is hashed); returns
    (files, failures)."""
    from ichdet.reports.dicom_seg import study_segmentation
    from ichdet.util.names import path_component

    masks = Path(result.files["studies"]).parent / "masks"
    sources, decode, references = result_inputs(result)
    by_study = dict(tuple(result.slices.groupby("study_id", sort=False)))
    paths: list[Path] = []
    failed: list[tuple[str, str]] = []
    for _, study in result.studies.iterrows():
        try:
            datasets = dicom_results(
                runner,
                study,
                by_study.get(study["study_id"], result.slices.iloc[:0]),
                sources,
                runner.study_thresholds,
                version,
                decode,
                references.get(study["study_id"]),
            )
            seg = study_segmentation(study, masks, sources, version)
            datasets += [seg] if seg is not None else []
            paths += write_datasets(datasets, out / path_component(str(study["study_id"])))
        except Exception as exc:  # noqa: BLE001 - one study must never stop the others
            failed.append((str(study["study_id"]), f"{type(exc).__name__}: {exc}"))
    return paths, failed


def result_inputs(
    result: Any,
) -> tuple[dict[str, str], dict[str, tuple[str, str, str]], dict[str, str]]:
    """What the DICOM results of a prediction read: the source of each slice read, its decode
    row (a slab's slices), and one instance of every study, read or not (for the SR of a study
    not assessed)."""
    rows = result.index
    sources = dict(zip(rows["image_id"], rows["source"], strict=True))
    decode = dict(zip(rows["image_id"], frame_rows(rows), strict=True))
    frame = result.inputs if result.inputs is not None else rows
    first = frame.groupby("study_id", sort=False)["source"].first() if len(frame) else {}
    return sources, decode, {str(k): str(v) for k, v in dict(first).items()}
