import json

import numpy as np
import pandas as pd
import pydicom
import pytest

from ichdet.dicom.read import AIR_HU, FIX_RSNA_12BIT, read_meta, read_slice
from ichdet.labels import LABELS, SUBTYPES
from ichdet.synth.phantom import Grid, render_slice
from ichdet.synth.studies import design_study, plan_jobs, synthesize


@pytest.fixture(scope="module")
def synth_set(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    summary = synthesize(out, studies=12, seed=3, size=96, masks=True, workers=2)
    return out, summary


def _wide(csv):
    df = pd.read_csv(csv)
    parts = df["ID"].str.rsplit("_", n=1, expand=True)
    df["image_id"], df["label"] = parts[0], parts[1]
    return df


def test_layout_and_csv_forms(synth_set):
    out, summary = synth_set
    train = sorted(p.stem for p in (out / "stage_2_train").glob("*.dcm"))
    test = sorted(p.stem for p in (out / "stage_2_test").glob("*.dcm"))
    assert len(train) == summary["images"]["train"] and len(test) == summary["images"]["test"]
    assert all(len(name) == 12 and name.startswith("ID_") for name in train + test)
    labels = _wide(out / "stage_2_train.csv")
    assert list(labels.columns[:2]) == ["ID", "Label"]
    assert sorted(set(labels["image_id"])) == train
    assert labels.duplicated().sum() == 6 * summary["duplicate_csv_images"]
    per_image = labels.drop_duplicates().groupby("image_id")["label"].apply(list)
    assert all(v == list(LABELS) for v in per_image)  # 6 rows per image, Kaggle order
    sample = _wide(out / "stage_2_sample_submission.csv")
    assert sorted(set(sample["image_id"])) == test and (sample["Label"] == 0.5).all()
    assert len(sample) == 6 * len(test)
    assert json.loads((out / "synth.json").read_text())["images"] == summary["images"]


def test_labels_agree_with_masks_and_any_rule(synth_set):
    out, _ = synth_set
    frames = [_wide(out / "stage_2_train.csv"), _wide(out / "stage_2_test_labels.csv")]
    wide = (
        pd.concat(frames).drop_duplicates().pivot(index="image_id", columns="label", values="Label")
    )
    assert (wide["any"] == wide[list(SUBTYPES)].max(axis=1)).all()
    assert wide["any"].sum() > 0
    for image_id, row in wide.iterrows():
        path = out / "masks" / f"{image_id}.npz"
        present = {name for name in SUBTYPES if row[name] == 1}
        if not present:
            assert not path.exists()
            continue
        with np.load(path) as masks:
            assert set(masks.files) == present
            assert all(masks[name].any() and masks[name].dtype == bool for name in masks.files)


def test_every_subtype_present_and_prevalence_sane(synth_set):
    _, summary = synth_set
    prevalence = summary["prevalence"]
    assert all(prevalence[name] > 0 for name in SUBTYPES)
    assert 0.03 < prevalence["any"] < 0.5


def test_files_read_to_intended_hu_and_z_order(synth_set):
    out, _ = synth_set
    jobs = {j.study_id: j for j in plan_jobs(12, 3, 0.2)}
    seen_12bit = False
    by_series: dict[str, list] = {}
    for path in sorted(out.glob("stage_2_*/*.dcm")):
        ds = pydicom.dcmread(path)  # plain pydicom reads every file
        assert ds.pixel_array.shape == (96, 96)
        meta = read_meta(path)
        by_series.setdefault(meta.series_instance_uid, []).append((meta.instance_number, meta.z))
        if len(by_series[meta.series_instance_uid]) > 2:
            continue  # the HU check on the first two slices of each series is enough
        design = design_study(jobs[meta.study_instance_uid], 96)
        grid = Grid.for_plan(design.plan)
        expected, _ = render_slice(design.plan, meta.instance_number - 1, grid)
        expected = np.rint(expected)
        if design.encoding == "rsna_12bit_bug":
            expected = np.clip(expected, -1000, 3095)  # the range the 12-bit fix recovers
            seen_12bit = True
            assert FIX_RSNA_12BIT in meta.fixes
        elif design.encoding.startswith("unsigned"):
            floor = -1000 if design.encoding == "unsigned_1000" else -1024
            expected = np.maximum(expected, floor)  # unsigned storage cannot go below 0
        sl = read_slice(path)
        inside = grid.fov & (expected > -1100)
        np.testing.assert_array_equal(sl.hu[inside], expected[inside].astype(np.float32))
        assert (sl.hu[~grid.fov] >= AIR_HU).all() and (sl.hu[~grid.fov] <= -1000).all()
    assert seen_12bit or not any(
        design_study(j, 96).encoding == "rsna_12bit_bug" for j in jobs.values()
    )
    for slices in by_series.values():
        z = [z for _, z in sorted(slices)]  # InstanceNumber follows the phantom's z here
        assert np.all(np.diff(z) > 0)


def test_deterministic_by_seed(tmp_path):
    a = synthesize(tmp_path / "a", studies=3, seed=11, size=48, workers=1)
    b = synthesize(tmp_path / "b", studies=3, seed=11, size=48, workers=2)
    synthesize(tmp_path / "c", studies=3, seed=12, size=48, workers=1)
    assert a == b
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.dcm"))
    files_b = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*.dcm"))
    assert files_a == files_b
    for rel in files_a[:5]:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()
    assert (tmp_path / "a/stage_2_train.csv").read_text() != (
        tmp_path / "c/stage_2_train.csv"
    ).read_text()
