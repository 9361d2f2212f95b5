"""The segmentation as a DICOM SEG in the source study (highdicom): one binary segment per
subtype that was found, frames on the source slices' own grid, each frame referencing its source
instance (the SOP Instance UID of the slice it was segmented on).

The segmenter's masks (at its input size) are scaled to each slice's rows and columns by nearest
neighbour. Segment types use the private scheme of the SR (``99ICHDET``: no SNOMED mapping is
claimed); the category is SNOMED's "Morphologically Abnormal Structure". A study where nothing
was segmented gets no SEG (its SR says 0 mL). A series whose de-identification stripped its
Frame of Reference UID gets a derived one (``frame_of_reference``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from ichdet.data.masks import read_series_masks, segmented_file, upscale_masks
from ichdet.labels import SUBTYPES
from ichdet.reports.dicom_results import (
    FINDINGS,
    MANUFACTURER,
    copy_deidentification,
    source_header,
)

SEG_SERIES = 9903
#: Display colours (CIELab) of the segments, one per subtype.
COLOURS = {
    "epidural": (60.0, 60.0, 50.0),
    "intraparenchymal": (55.0, 75.0, 60.0),
    "intraventricular": (70.0, -40.0, 60.0),
    "subarachnoid": (80.0, 0.0, 80.0),
    "subdural": (60.0, -30.0, -50.0),
}


def frame_of_reference(images: list[pydicom.Dataset]) -> None:
    """A SEG needs the images' Frame of Reference UID; de-identified sets (RSNA, CQ500) strip
    it. A series without one gets one derived from its Series Instance UID (the same for every
    run), which the SEG then carries; the images themselves are not changed."""
    missing = [ds for ds in images if not ds.get("FrameOfReferenceUID")]
    if missing:
        uid = generate_uid(
            entropy_srcs=["ichdet frame of reference", str(images[0].SeriesInstanceUID)]
        )
        for ds in missing:
            ds.FrameOfReferenceUID = uid


def _descriptions(labels: list[str], version: str) -> list[hd.seg.SegmentDescription]:
    algorithm = hd.AlgorithmIdentificationSequence(
        name="ichdet", family=codes.cid7162.ArtificialIntelligence, version=version
    )
    return [
        hd.seg.SegmentDescription(
            segment_number=k + 1,
            segment_label=name,
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=FINDINGS[name],
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            display_color=hd.color.CIELabColor(*COLOURS[name]),
        )
        for k, name in enumerate(labels)
    ]


def segmentation(
    mask_file: str | Path, sources: dict[str, str], version: str
) -> pydicom.Dataset | None:
    """The SEG of one segmented series (its mask file from ``predict --segmenter``; ``sources``
    maps image ids to their files), or None when nothing was segmented."""
    ids, _, masks, _ = read_series_masks(mask_file)
    present = [k for k in range(len(SUBTYPES)) if masks[:, k].any()]
    if not present:
        return None
    images = [source_header(sources[i]) for i in ids]  # headers: geometry and identity
    frame_of_reference(images)
    rows, columns = int(images[0].Rows), int(images[0].Columns)
    pixels = np.moveaxis(upscale_masks(masks[:, present], (rows, columns)), 1, -1)
    pixels = np.ascontiguousarray(pixels, dtype=np.uint8)  # frames x rows x columns x segments
    seg = hd.seg.Segmentation(
        source_images=images,
        pixel_array=pixels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=_descriptions([SUBTYPES[k] for k in present], version),
        series_instance_uid=generate_uid(),
        series_number=SEG_SERIES,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name="ichdet segmenter",
        software_versions=version,
        device_serial_number="0",
        content_label="ICHDET",
        content_description="hemorrhage by subtype (research use)",
    )
    seg.SeriesDescription = "ichdet hemorrhage segmentation (research use)"
    copy_deidentification(seg, images[0])
    return seg


def study_segmentation(
    study: Any, masks_folder: Path, sources: dict[str, str], version: str
) -> pydicom.Dataset | None:
    """The SEG of a study row of studies.csv (its ``segmented_series``), when it has one."""
    path = segmented_file(study, masks_folder)
    return segmentation(path, sources, version) if path is not None else None
