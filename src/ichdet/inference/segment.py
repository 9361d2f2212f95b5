"""``ichdet predict --segmenter``: where and how much, per series and per study.

Each read series is decoded at the segmenter's own size and windows (in chunks, as the slice
model's inputs are), segmented (probability >= 0.5 per subtype) and measured: volume per
subtype and in total (mL, slice extents from positions), and the thickest point of subdural and
epidural collections (mm); a pixel of the segmenter's grid stands for (rows x spacing / size) by
(columns x spacing / size) mm. The masks are kept at the segmenter's size, one file per series
(``masks/<series_id>.npz``: image ids in z order, packed masks, the pixel size), for the overlays
and the DICOM SEG.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from ichdet.data.masks import series_mask_file, write_series_masks
from ichdet.evaluation.volume import measure_columns, study_measures
from ichdet.inference.decode import decode_ahead, frame_rows, series_chunks
from ichdet.inference.seg_runner import Segmenter


@dataclass
class SeriesMasks:
    """One series' predicted masks (N x 5 x size x size, bool) in z order."""

    study_id: str
    series_id: str
    image_ids: list[str]
    z: np.ndarray
    masks: np.ndarray
    pixel_mm: tuple[float, float]  #: the size of one mask pixel (between rows, columns)
    thickness: float | None

    @cached_property
    def measures(self) -> dict[str, float]:
        """Volumes and thicknesses (ValueError when the positions give none: two slices at one
        position)."""
        return study_measures(self.masks, self.z, self.pixel_mm, self.thickness)


def _pixel_mm(group: pd.DataFrame, size: int) -> tuple[float, float]:
    spacing = float(group["pixel_spacing"].iloc[0]) if "pixel_spacing" in group else float("nan")
    if not spacing > 0:
        raise ValueError("no PixelSpacing: a volume needs the pixel size")
    if group["z"].isna().any():
        raise ValueError("slice positions unknown: a volume needs them")
    return (
        float(group["rows"].iloc[0]) * spacing / size,
        float(group["columns"].iloc[0]) * spacing / size,
    )


def segment_rows(
    segmenter: Segmenter,
    rows: pd.DataFrame,
    workers: int = 1,
    detected: dict[str, float] | None = None,
) -> Iterator[SeriesMasks | tuple[str, str]]:
    """Segment every series of ``rows`` (read-plan rows); yields SeriesMasks, or (series id,
    reason) for a series that cannot be measured (no pixel size or positions, two slices at
    one position, every slice unreadable). ``detected``: the detector's slice probability of
    any hemorrhage by image id; a slice below the segmenter's ``gate`` keeps no mask."""
    spec = segmenter.spec
    size = spec.settings.size
    for (study, series), group in rows.groupby(["study_id", "series_id"], sort=False):
        group = group.sort_values("z", kind="stable")
        try:
            pixel = _pixel_mm(group, size)
        except ValueError as exc:
            yield str(series), str(exc)
            continue
        chunks = series_chunks(frame_rows(group), spec.context)
        ids: list[str] = []
        parts = []
        for chunk_ids, volume, _ in decode_ahead(chunks, spec.settings, spec.context, workers, 2):
            if volume is not None:
                ids += chunk_ids
                parts.append(segmenter(volume) >= 0.5)
        if not ids:
            yield str(series), "no slice of the series could be read"
            continue
        masks = np.concatenate(parts)
        if detected is not None and segmenter.gate > 0:
            keep = np.array([detected.get(i, 1.0) >= segmenter.gate for i in ids])
            masks[~keep] = False
        z = group.set_index(group["image_id"].astype(str)).loc[ids, "z"].to_numpy(float)
        thickness = group["thickness"].iloc[0] if "thickness" in group else None
        found = SeriesMasks(
            str(study),
            str(series),
            ids,
            z,
            masks,
            pixel,
            float(thickness) if thickness is not None and thickness == thickness else None,
        )
        try:
            found.measures  # noqa: B018 - measured here, so a bad series is reported, not raised
        except ValueError as exc:
            yield str(series), str(exc)
            continue
        yield found


def volume_table(found: list[SeriesMasks]) -> pd.DataFrame:
    """Per study: the measures of its read series with the most blood (``volume_ml_any``)."""
    columns = ["study_id", "series_id", *measure_columns()]
    rows = [{"study_id": s.study_id, "series_id": s.series_id, **s.measures} for s in found]
    table = pd.DataFrame(rows, columns=columns)
    if table.empty:
        return table.drop(columns="series_id")
    best = table.sort_values("volume_ml_any", ascending=False, kind="stable")
    best = best.drop_duplicates("study_id").set_index("study_id")
    return best.rename(columns={"series_id": "segmented_series"}).reset_index()


def segment_outputs(
    segmenter: Segmenter,
    rows: pd.DataFrame,
    out: Path,
    workers: int = 1,
    detected: dict[str, float] | None = None,
) -> tuple[pd.DataFrame, list[tuple[str, str]]]:
    """Segment and measure the read rows (gated by ``detected``, see ``segment_rows``); masks
    into ``out/masks``. Returns (per-study measures, errors as (what, reason))."""
    found, errors = [], []
    folder = out / "masks"
    for item in segment_rows(segmenter, rows, workers, detected):
        if isinstance(item, SeriesMasks):
            write_series_masks(
                series_mask_file(folder, item.series_id),
                item.image_ids,
                item.z,
                item.masks,
                item.pixel_mm,
            )
            found.append(item)
        else:
            errors.append((f"series {item[0]} (segmenter)", item[1]))
    return volume_table(found), errors


def with_volumes(studies: pd.DataFrame, volumes: pd.DataFrame) -> pd.DataFrame:
    """studies.csv with the measure columns before its last two (``series_read``, ``notes``);
    a study without a measured series gets empty cells."""
    extra = volumes.set_index("study_id").reindex(studies["study_id"]).reset_index(drop=True)
    extra.index = studies.index
    head, tail = studies.iloc[:, :-2], studies.iloc[:, -2:]
    return pd.concat([head, extra, tail], axis=1)


def clear_masks(out: Path) -> None:
    """Remove the mask files of an earlier run in ``out`` (a rerun never mixes them)."""
    for path in (out / "masks").glob("*.npz"):
        path.unlink(missing_ok=True)
