"""The segmenter: training on joined masks, volumes in predict, ONNX export, mask scoring."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from ichdet.cli import app
from ichdet.data.cache import CacheSettings
from ichdet.data.index import build_index, write_index
from ichdet.data.mask_join import attach_masks, parse_label_map
from ichdet.data.masks import read_series_masks, slice_mask, write_series_masks
from ichdet.data.prepare import prepare
from ichdet.evaluation.seg_metrics import bland_altman, concordance, dice, hd95
from ichdet.evaluation.volume import study_measures
from ichdet.labels import SUBTYPES
from ichdet.synth.studies import synthesize
from ichdet.training.config import SegmentTrainConfig, TrainConfig
from ichdet.training.segment_task import SegmentTask, per_slice_counts
from ichdet.training.slice_task import fit

runner = CliRunner()
TINY = dict(model="test_efficientnet", size=32, batch_size=16, workers=0, lr=3e-3)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("segment")
    synthesize(root / "data", studies=8, seed=2, size=48, masks=True)
    df, errors, report = build_index(root / "data", folds=2)
    df, problems, _ = attach_masks(df, root / "data" / "masks", root / "m", parse_label_map(None))
    assert problems == []
    index = write_index(df, errors, report, root / "index.parquet")
    prepare(df, root / "cache", CacheSettings(size=32))
    return root, index


@pytest.fixture(scope="module")
def trained(prepared):
    root, index = prepared
    args = ["train", str(index), "--task", "segment", "--cache", str(root / "cache")]
    args += ["--out", str(root / "seg"), "--epochs", "2", "--fold", "0"]
    args += [f"--{k.replace('_', '-')}={v}" for k, v in TINY.items()]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "Dice(any)" in result.output and "volume CCC" in result.output
    cnn = TrainConfig(index=str(index), out=str(root / "cnn"), cache=str(root / "cache"), **TINY)
    cnn.epochs = 1
    fit(cnn, log=lambda _: None)
    return root, index


@pytest.mark.slow
def test_training_writes_metrics_and_exact_true_volumes(trained):
    root, index = trained
    metrics = json.loads((root / "seg" / "metrics.json").read_text())
    assert set(metrics["dice"]) >= {"any", "pooled", "subdural"}
    assert metrics["series"] > 0 and "ccc" in metrics["volume"]
    table = pd.read_csv(root / "seg" / "valid_volumes.csv")
    frame = pd.read_parquet(index)
    series = table.loc[table["true_volume_ml_any"].idxmax(), "series_id"]
    rows = frame[frame["series_id"] == series]
    masks = np.stack([slice_mask(True, p, (48, 48)) for p in rows["mask"]])
    spacing = float(rows["pixel_spacing"].iloc[0])
    truth = study_measures(masks, rows["z"].to_numpy(), (spacing, spacing))
    assert truth["volume_ml_any"] > 0
    got = table.set_index("series_id").loc[series, "true_volume_ml_any"]
    assert got == pytest.approx(truth["volume_ml_any"], abs=1e-3)


@pytest.mark.slow
def test_predict_with_segmenter_torch_and_onnx(trained, tmp_path):
    root, _ = trained
    test_dir = root / "data" / "stage_2_test"
    outs = {}
    onnx = tmp_path / "seg.onnx"
    exported = runner.invoke(app, ["export", str(root / "seg"), "--out", str(onnx)])
    assert exported.exit_code == 0, exported.output
    for name, seg in (("torch", root / "seg"), ("onnx", onnx)):
        out = tmp_path / name
        args = ["predict", str(root / "cnn"), str(test_dir), "--out", str(out)]
        args += ["--dicom-out", str(out / "dicom")] if name == "torch" else []
        result = runner.invoke(app, [*args, "--segmenter", str(seg)])
        assert result.exit_code == 0, result.output
        assert "volumes of" in result.output
        outs[name] = pd.read_csv(out / "studies.csv")
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["masks"] == "masks"
        studies = outs[name].set_index("study_id")
        for path in (out / "masks").glob("*.npz"):  # the csv's volumes are the masks' volumes
            ids, z, masks, pixel = read_series_masks(path)
            study = pd.read_csv(out / "slices.csv").set_index("image_id").loc[ids[0], "study_id"]
            measured = study_measures(masks, z, pixel)
            assert studies.loc[study, "volume_ml_any"] == pytest.approx(measured["volume_ml_any"])
    _check_sr_measures(tmp_path / "torch", outs["torch"])
    columns = [c for c in outs["torch"] if c.startswith(("volume_ml_", "thickness_mm_"))]
    assert "volume_ml_subdural" in columns and "thickness_mm_epidural" in columns
    pd.testing.assert_frame_equal(outs["torch"][columns], outs["onnx"][columns], atol=0.05)


def _check_sr_measures(out, studies):
    """Every SR carries the study's volumes (UCUM ml) and thicknesses (mm); a SEG is written
    exactly for the studies where something was segmented."""
    import pydicom

    for study in studies.itertuples():
        folder = out / "dicom" / study.study_id
        sr = pydicom.dcmread(folder / "sr_0.dcm")
        numbers = [
            (item.ConceptNameCodeSequence[0].CodeValue, item.MeasuredValueSequence[0])
            for finding in sr.ContentSequence
            if "ContentSequence" in finding
            for item in finding.ContentSequence
            if item.ValueType == "NUM"
            and item.ConceptNameCodeSequence[0].CodeValue != "ICH-PROB"
            and item.ConceptNameCodeSequence[0].CodeValue != "ICH-THR"
        ]
        volumes = [float(v.NumericValue) for c, v in numbers if c == "ICH-VOL"]
        units = {v.MeasurementUnitsCodeSequence[0].CodeValue for c, v in numbers}
        assert len(volumes) == 6 and units == {"ml", "mm"}
        assert max(volumes) == pytest.approx(study.volume_ml_any, abs=1e-3)
        assert any(folder.glob("seg_*.dcm")) == (study.volume_ml_any > 0)


def test_segment_config_checks_size():
    with pytest.raises(ValueError, match="multiple of 32"):
        SegmentTrainConfig(size=100)


def test_counts_and_loss_follow_the_masks(prepared):
    root, index = prepared
    cfg = SegmentTrainConfig(index=str(index), cache=str(root / "cache"), out=str(root / "x"))
    cfg.model, cfg.size, cfg.augment = "test_efficientnet", 32, False
    task = SegmentTask(cfg)
    x, y = next(iter(torch.utils.data.DataLoader(task.train_set, batch_size=8)))
    assert y.shape == (8, 5, 32, 32) and y.dtype == torch.uint8 and y.max() > 0
    truth = (y >= 128).float() * 40 - 20  # logits that say exactly the mask

    class Perfect(torch.nn.Module):
        def forward(self, _):
            return truth

    from ichdet.training.distributed import make_runtime

    rt = make_runtime("cpu", False, False)
    good, _ = task.loss(Perfect(), (x, y), rt)
    truth = -truth
    bad, _ = task.loss(Perfect(), (x, y), rt)
    assert float(good) < 0.2 < 1.0 < float(bad)
    counts = per_slice_counts(y >= 128, y >= 128).numpy()
    assert np.array_equal(counts[:, :6], counts[:, 6:12])  # pred == true
    assert np.array_equal(counts[:, 12:], counts[:, :6])  # all overlap


def test_mask_metrics():
    a = np.zeros((4, 20, 20), bool)
    a[1:3, 5:10, 5:10] = True
    b = np.roll(a, 2, axis=2)
    assert dice(a, a) == 1.0 and dice(a, b) == pytest.approx(0.6)
    assert np.isnan(dice(a & False, b & False))
    assert hd95(a, a, (5.0, 0.5, 0.5)) == 0.0
    assert hd95(a, b, (5.0, 0.5, 0.5)) == pytest.approx(1.0)  # 2 pixels of 0.5 mm
    assert hd95(a, a & False, (1, 1, 1)) == float("inf")
    assert concordance([1, 2, 3], [1, 2, 3]) == pytest.approx(1.0)
    assert concordance([1, 2, 3], [2, 3, 4]) < 1.0
    ba = bland_altman([2.0, 3.0, 4.0], [1.0, 2.0, 3.0])
    assert ba["bias"] == pytest.approx(1.0) and ba["lower"] == ba["upper"] == pytest.approx(1.0)


def test_evaluate_masks_scores_a_perfect_and_a_shifted_prediction(prepared, tmp_path):
    root, index = prepared
    frame = pd.read_parquet(index)
    for name, shift in (("perfect", 0), ("shifted", 3)):
        folder = tmp_path / name / "masks"
        for series, rows in frame.groupby("series_id"):
            rows = rows.sort_values("z")
            masks = np.stack([slice_mask(True, p, (48, 48)) for p in rows["mask"]])
            spacing = float(rows["pixel_spacing"].iloc[0])
            write_series_masks(
                folder / f"{series}.npz",
                rows["image_id"].tolist(),
                rows["z"].to_numpy(),
                np.roll(masks, shift, axis=-1),
                (spacing, spacing),
            )
        result = runner.invoke(
            app, ["evaluate", str(tmp_path / name), str(index), "--masks", "--json"]
        )
        assert result.exit_code == 0, result.output
        summary = json.loads(result.output)
        found = summary["labels"]["any"]
        assert summary["series"] == frame["series_id"].nunique() and found["series_with_blood"] > 0
        if shift == 0:
            assert found["dice_mean"] == 1.0 and found["hd95_median_mm"] == 0.0
            assert found["volume"]["ccc"] == pytest.approx(1.0) and found["volume"]["bias"] == 0
        else:  # a shift keeps the volume (up to the image edge) and costs Dice and distance
            assert found["dice_mean"] < 0.95 and found["hd95_median_mm"] > 0
            assert found["volume"]["ccc"] > 0.95
    (tmp_path / "junk" / "masks").mkdir(parents=True)
    (tmp_path / "junk" / "masks" / "x.npz").write_bytes(b"junk")
    result = runner.invoke(app, ["evaluate", str(tmp_path / "junk"), str(index), "--masks"])
    assert result.exit_code != 0 and "no predicted series" in result.output


def _truth_files(frame, folder):
    """Series mask files holding the true masks at full resolution (what a perfect segmenter
    with the slices' own size would write)."""
    for series, rows in frame.groupby("series_id"):
        rows = rows.sort_values("z")
        masks = np.stack([slice_mask(True, p, (48, 48)) for p in rows["mask"]])
        spacing = float(rows["pixel_spacing"].iloc[0])
        ids, z = rows["image_id"].tolist(), rows["z"].to_numpy()
        write_series_masks(folder / f"{series}.npz", ids, z, masks, (spacing, spacing))


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_seg_written_and_read_back_gives_the_same_voxels(prepared, tmp_path):
    import shutil
    import subprocess

    import pydicom

    from ichdet.reports.dicom_seg import segmentation

    root, index = prepared
    frame = pd.read_parquet(index)
    _truth_files(frame, tmp_path / "truth")
    sources = dict(zip(frame["image_id"], frame["source"], strict=True))
    (tmp_path / "segs").mkdir()
    for path in sorted((tmp_path / "truth").glob("*.npz")):
        seg = segmentation(path, sources, "test")
        blood = bool((frame[frame["series_id"] == path.stem]["mask"] != "").any())
        assert (seg is not None) == blood  # no SEG where nothing was segmented
        if seg is not None:
            seg.save_as(tmp_path / "segs" / f"{path.stem}.dcm")
    with_seg = {p.stem for p in (tmp_path / "segs").glob("*.dcm")}
    assert with_seg
    checker = shutil.which("dciodvfy")
    if checker:
        for path in (tmp_path / "segs").glob("*.dcm"):
            out = subprocess.run([checker, str(path)], capture_output=True, text=True)
            errors = [x for x in (out.stdout + out.stderr).splitlines() if x.startswith("Error")]
            # the phantoms' UIDs are RSNA-style ID_... strings on purpose; nothing else may fail
            uid_noise = ("ID_", "invalid data values for Value Representations")
            assert not [x for x in errors if not any(n in x for n in uid_noise)], errors
    back, problems, report = attach_masks(
        frame.drop(columns=["mask", "mask_known"]), tmp_path / "segs", tmp_path / "m2", {}
    )
    assert problems == [] and report["layout"] == "DICOM SEG"
    # every slice of a series with a SEG is known (empty frames too), no other slice is
    assert back["mask_known"].tolist() == frame["series_id"].isin(with_seg).tolist()
    joined = back[back["mask_known"]]
    for row in joined.itertuples():
        truth = slice_mask(True, frame.set_index("image_id").at[row.image_id, "mask"], (48, 48))
        assert np.array_equal(slice_mask(True, row.mask, (48, 48)), truth)
    seg = pydicom.dcmread(next((tmp_path / "segs").glob("*.dcm")))
    assert {s.SegmentLabel for s in seg.SegmentSequence} <= set(SUBTYPES)


def test_rare_subtypes_are_repeated_in_training():
    from ichdet.training.segment_task import balanced

    rows = [{"subdural": 1.0}] * 8 + [{"epidural": 1.0}] * 2 + [{"epidural": 1.0, "subdural": 1.0}]
    blood = pd.DataFrame(rows).reindex(columns=list(SUBTYPES)).fillna(0.0)
    out = balanced(blood, cap=3)
    counts = out.index.value_counts()
    assert (counts.loc[range(8)] == 1).all()  # the common subtype once
    assert (counts.loc[[8, 9, 10]] == 3).all()  # epidural (9 vs 3 slices: 3x, the cap)
    assert balanced(blood, cap=1).equals(blood)


@pytest.mark.slow
def test_segmenter_resumes_only_with_its_own_settings(prepared, tmp_path):
    from ichdet.training.segment_task import fit_segment

    root, index = prepared
    settings = dict(index=str(index), cache=str(root / "cache"), out=str(tmp_path / "run"), **TINY)
    fit_segment(SegmentTrainConfig(**settings, epochs=1), log=lambda _: None)
    resumed = fit_segment(SegmentTrainConfig(**settings, epochs=2), resume=True, log=lambda _: None)
    assert resumed["epochs"] == 2
    with pytest.raises(ValueError, match="different balance"):
        fit_segment(
            SegmentTrainConfig(**settings, epochs=3, balance=1.0), resume=True, log=lambda _: None
        )
    with pytest.raises(ValueError, match="--pretrained"):
        SegmentTask(SegmentTrainConfig(**settings, weights="w.pt"))
