"""Masks in: per-slice files, NIfTI label maps joined by geometry; volume and thickness."""

from __future__ import annotations

import numpy as np
import pytest

from ichdet.data.index import build_index
from ichdet.data.mask_join import attach_masks, parse_label_map
from ichdet.data.masks import read_mask, slice_mask, write_mask
from ichdet.dicom.write import ct_dataset, save_dataset
from ichdet.evaluation.volume import (
    max_thickness_mm,
    slice_extent_mm,
    study_measures,
    volume_ml,
)
from ichdet.labels import SUBTYPES

nib = pytest.importorskip("nibabel")

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def _series(tmp_path, n=6, size=24, step=2.5, tilt=0.0, reverse=False, rng=None):
    """A DICOM series in shuffled files + its label volume and NIfTI affine (voxel i = column,
    j = row, k = slice in position order); ``tilt``: mm of y shift per slice (gantry tilt)."""
    rng = rng or np.random.default_rng(0)
    x, y = np.array([1.0, 0, 0]), np.array([0, 1.0, 0])
    spacing = (0.7, 0.6)  # between rows, between columns
    positions = [np.array([-8.0, -7.0 + k * tilt, 10.0 + k * step]) for k in range(n)]
    labels = rng.integers(0, 6, size=(size, size, n)).astype(np.int16)  # [column, row, slice]
    folder = tmp_path / "dicom"
    order = rng.permutation(n)
    for k in order:
        save_dataset(
            ct_dataset(
                np.full((size, size), 1064, np.int16),
                position=tuple(positions[k]),
                pixel_spacing=spacing,
                sop_instance_uid=f"1.2.3.{k + 1}",
                study_instance_uid="1.2.3",
                series_instance_uid="1.2.3.99",
                instance_number=int(n - k if reverse else k + 1),
            ),
            folder / f"f{k:03d}.dcm",
        )
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1] = x * spacing[1], y * spacing[0]
    lps[:3, 2], lps[:3, 3] = positions[1] - positions[0], positions[0]
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
    if reverse:  # the volume stored top to bottom: the same geometry, flipped k
        labels = labels[:, :, ::-1].copy()
        affine = affine @ np.array(
            [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, -1, n - 1], [0, 0, 0, 1]], float
        )
    return folder, labels, affine


def _truth(labels, image_id, reverse):
    k = int(image_id.rsplit(".", 1)[1]) - 1
    plane = labels[:, :, labels.shape[2] - 1 - k if reverse else k].T  # rows x columns
    return np.stack([plane == v for v in range(1, 6)])


@pytest.mark.parametrize(
    "tilt,reverse,step", [(0.0, False, 5.0), (1.2, False, 5.0), (0.0, True, 0.625)]
)
def test_nifti_joins_by_geometry(tmp_path, tilt, reverse, step):
    folder, labels, affine = _series(tmp_path, tilt=tilt, reverse=reverse, step=step)
    masks = tmp_path / "masks"
    masks.mkdir()
    nib.save(nib.Nifti1Image(labels, affine), masks / "1.2.3.99.nii.gz")
    index, errors, _ = build_index(folder)
    assert errors.empty
    joined, problems, report = attach_masks(index, masks, tmp_path / "out", parse_label_map(None))
    assert problems == [] and joined["mask_known"].all()
    assert report["slices_known"] == 6
    for row in joined.itertuples():
        got = slice_mask(True, row.mask, (24, 24))
        assert np.array_equal(got, _truth(labels, row.image_id, reverse))
        assert row.any == float(got.any())  # the labels a mask implies fill unknown ones


def test_nifti_that_does_not_fit_is_an_error_naming_it(tmp_path):
    folder, labels, affine = _series(tmp_path)
    masks = tmp_path / "masks"
    masks.mkdir()
    coarse = affine @ np.diag([2.0, 2.0, 1.0, 1.0])  # resampled to half the resolution
    nib.save(nib.Nifti1Image(labels, coarse), masks / "1.2.3.99.nii.gz")
    nib.save(nib.Nifti1Image(labels, affine), masks / "nobody.nii")
    index, _, _ = build_index(folder)
    joined, problems, _ = attach_masks(index, masks, tmp_path / "out", parse_label_map(None))
    assert not joined["mask_known"].any()
    reasons = dict(problems)
    assert "not one voxel step" in reasons[str(masks / "1.2.3.99.nii.gz")]
    assert "no series" in reasons[str(masks / "nobody.nii")]


def test_label_map_values_and_unknown_values(tmp_path):
    assert parse_label_map("1=intraparenchymal, 2=intraventricular") == {
        1: "intraparenchymal",
        2: "intraventricular",
    }
    with pytest.raises(ValueError, match="VALUE=SUBTYPE"):
        parse_label_map("1=blood")
    folder, labels, affine = _series(tmp_path)
    masks = tmp_path / "masks"
    masks.mkdir()
    nib.save(nib.Nifti1Image(labels, affine), masks / "1.2.3.99.nii.gz")
    index, _, _ = build_index(folder)
    _, problems, _ = attach_masks(index, masks, tmp_path / "out", parse_label_map("1=subdural"))
    assert "not in the label map" in problems[0][1]


def test_mask_files_round_trip_and_refuse_junk(tmp_path):
    mask = np.zeros((5, 8, 8), bool)
    mask[1, 2:4, 2:5] = True
    path = write_mask(tmp_path / "m.npz", mask)
    assert np.array_equal(read_mask(path, (8, 8)), mask)
    with pytest.raises(ValueError, match="shapes"):
        read_mask(path, (9, 8))
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="junk.npz: not a readable mask"):
        read_mask(tmp_path / "junk.npz")
    np.savez(tmp_path / "odd.npz", blood=np.ones((8, 8), bool))
    with pytest.raises(ValueError, match="unknown subtype"):
        read_mask(tmp_path / "odd.npz")
    assert not slice_mask(True, "", (8, 8)).any() and slice_mask(False, "", (8, 8)) is None


def test_volume_is_exact_from_positions_in_any_order():
    z = np.array([0.0, 5.0, 10.0, 12.0, 14.0])  # a gap, then thin slices
    extent = slice_extent_mm(z)
    assert extent.tolist() == [5.0, 5.0, 3.5, 2.0, 2.0]
    mask = np.zeros((5, 10, 10), bool)
    mask[:, 2:6, 3:8] = True  # 20 pixels per slice
    expected = 20 * 0.5 * 0.4 * extent.sum() / 1000
    assert volume_ml(mask, z, (0.5, 0.4)) == pytest.approx(expected)
    order = np.array([3, 0, 4, 1, 2])
    assert volume_ml(mask[order], z[order], (0.5, 0.4)) == pytest.approx(expected)
    with pytest.raises(ValueError, match="thickness"):
        volume_ml(mask[:1], z[:1], (0.5, 0.4))
    assert volume_ml(mask[:1], z[:1], (0.5, 0.4), thickness=5) == pytest.approx(20 * 0.2 * 5e-3)
    with pytest.raises(ValueError, match="share one position"):
        slice_extent_mm([1.0, 1.0])


def test_thickness_and_study_measures():
    plane = np.zeros((1, 40, 40), bool)
    plane[0, 5:35, 10:18] = True  # 8 pixels thick
    assert abs(max_thickness_mm(plane, (0.5, 0.5)) - 4.0) <= 0.5
    masks = np.zeros((3, 5, 40, 40), bool)
    masks[:, SUBTYPES.index("subdural")] = plane
    masks[1, SUBTYPES.index("intraparenchymal"), 20:30, 20:30] = True
    out = study_measures(masks, [0.0, 5.0, 10.0], (0.5, 0.5))
    assert out["volume_ml_subdural"] == pytest.approx(3 * 240 * 0.25 * 5 / 1000, abs=1e-3)
    assert out["volume_ml_intraparenchymal"] == pytest.approx(100 * 0.25 * 5 / 1000, abs=1e-3)
    assert out["volume_ml_any"] == pytest.approx(
        out["volume_ml_subdural"] + out["volume_ml_intraparenchymal"], abs=1e-3
    )
    assert out["thickness_mm_epidural"] == 0.0 and out["thickness_mm_subdural"] >= 3.5


def test_import_nifti_gives_dicom_series_and_masks_that_join_back(tmp_path):
    from typer.testing import CliRunner

    from ichdet.cli import app
    from ichdet.dicom.read import read_hu

    rng = np.random.default_rng(3)
    shape = (20, 16, 5)  # i (columns), j (rows), k (slices)
    hu = rng.integers(-1000, 1500, size=shape).astype(np.int16)
    labels = np.zeros(shape, np.uint8)
    labels[4:9, 3:7, 1:4] = 2  # intraparenchymal
    labels[12:15, 9:12, 2] = 5  # subdural
    affine = np.array(  # RAS, as dcm2niix writes an axial head CT: x and y flipped
        [[-0.45, 0, 0, 40.0], [0, -0.5, 0, 60.0], [0, 0, 5.0, -20.0], [0, 0, 0, 1]]
    )
    (tmp_path / "img").mkdir()
    (tmp_path / "lab").mkdir()
    nib.save(nib.Nifti1Image(hu, affine), tmp_path / "img" / "case_07.nii.gz")
    nib.save(nib.Nifti1Image(labels, affine), tmp_path / "lab" / "case_07.nii.gz")
    nib.save(nib.Nifti1Image(hu, affine), tmp_path / "img" / "no_labels.nii.gz")
    out = tmp_path / "out"
    cli = CliRunner()
    args = ["import-nifti", str(tmp_path / "img"), "--out", str(out), "--labels"]
    result = cli.invoke(app, [*args, str(tmp_path / "lab")])
    assert result.exit_code == 0, result.output
    assert "1 volume(s), 5 slices" in result.output and "no label map" in result.stderr
    index, errors, _ = build_index(out / "dicom")
    assert errors.empty and len(index) == 5 and index["patient_id"].eq("case_07").all()
    joined, problems, _ = attach_masks(index, out / "masks", tmp_path / "j", parse_label_map(None))
    assert problems == [] and joined["mask_known"].all()
    for row in joined.sort_values("z").reset_index(drop=True).itertuples():
        k = row.Index  # z order is k order (the affine's third axis points up)
        assert np.array_equal(read_hu(row.source), hu[:, :, k].T.astype(np.float32))
        mask = slice_mask(True, row.mask, (16, 20))
        assert np.array_equal(mask[SUBTYPES.index("intraparenchymal")], labels[:, :, k].T == 2)
        assert np.array_equal(mask[SUBTYPES.index("subdural")], labels[:, :, k].T == 5)
    volume = volume_ml(
        np.stack(
            [slice_mask(True, p, (16, 20)).any(axis=0) for p in joined.sort_values("z")["mask"]]
        ),
        np.sort(joined["z"].to_numpy()),
        (0.5, 0.45),
    )
    assert volume == pytest.approx((labels > 0).sum() * 0.45 * 0.5 * 5.0 / 1000)


def test_hostile_mask_files_are_errors_naming_them_and_the_rest_goes_on(tmp_path):
    folder, labels, affine = _series(tmp_path)
    masks = tmp_path / "masks"
    masks.mkdir()
    nib.save(nib.Nifti1Image(labels, affine), masks / "1.2.3.99.nii.gz")
    good = (masks / "1.2.3.99.nii.gz").read_bytes()
    (masks / "1.2.3.nii.gz").write_bytes(good[: len(good) // 2])  # truncated: the study's name
    (masks / "ID_patient.nii").write_bytes(b"\x00" * 400)  # the patient's name
    (masks / "seg.dcm").write_bytes(b"DICM but not really")
    index, _, _ = build_index(folder)
    joined, problems, _ = attach_masks(index, masks, tmp_path / "out", parse_label_map(None))
    reasons = dict(problems)
    assert joined["mask_known"].all()  # the good map joined all the same
    assert "unreadable voxel data" in reasons[str(masks / "1.2.3.nii.gz")]
    assert "not a readable NIfTI" in reasons[str(masks / "ID_patient.nii")]
    assert "not a readable DICOM SEG" in reasons[str(masks / "seg.dcm")]


def test_a_series_with_two_slices_at_one_position_is_reported_not_measured(tmp_path):
    from ichdet.inference.segment import segment_rows

    class Everything:  # a segmenter calling every pixel subdural
        spec = type(
            "Spec", (), {"settings": __import__("ichdet").CacheSettings(size=32), "context": 0}
        )
        gate = 0.1

        def __call__(self, batch):
            out = np.zeros((len(batch), 5, 32, 32), np.float32)
            out[:, 4] = 1
            return out

    folder, _, _ = _series(tmp_path)
    index, _, _ = build_index(folder)
    good = list(segment_rows(Everything(), index))
    full = good[0].measures["volume_ml_subdural"]
    assert full > 0
    # the detector's slice probabilities gate the masks: below the gate, no blood on a slice
    detected = {i: (0.05 if k < 2 else 0.9) for k, i in enumerate(good[0].image_ids)}
    (gated,) = list(segment_rows(Everything(), index, detected=detected))
    assert not gated.masks[:2].any() and gated.masks[2:, 4].all()
    assert gated.measures["volume_ml_subdural"] == pytest.approx(full * 4 / 6, abs=1e-3)
    index.loc[1, "z"] = index.loc[0, "z"]
    (bad,) = list(segment_rows(Everything(), index))
    assert bad == ("1.2.3.99", "two slices share one position: not one series")
