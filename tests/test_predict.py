import json
import math
import re
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from ichdet.cli import app
from ichdet.data.cache import CacheSettings
from ichdet.data.index import build_index, write_index
from ichdet.data.prepare import prepare
from ichdet.dicom.write import ct_dataset, save_dataset
from ichdet.inference.predict import predict
from ichdet.inference.runners import TorchRunner, load_runner
from ichdet.labels import LABELS
from ichdet.selection.choose import SelectionOptions
from ichdet.synth.studies import synthesize
from ichdet.training.config import TrainConfig
from ichdet.training.slice_task import fit

runner = CliRunner()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    synthesize(root / "data", studies=6, seed=4, size=48, masks=True)
    df, errors, report = build_index(root / "data", folds=2)
    index = write_index(df, errors, report, root / "index.parquet")
    prepare(df, root / "cache", CacheSettings(size=32))
    runs = []
    for seed in (0, 1):
        cfg = TrainConfig(
            index=str(index),
            cache=str(root / "cache"),
            out=str(root / f"r{seed}"),
            model="test_efficientnet",
            size=32,
            epochs=1,
            batch_size=16,
            workers=0,
            context=1,
            seed=seed,
        )
        fit(cfg, log=lambda s: None)
        runs.append(root / f"r{seed}")
    return root, runs


def test_kaggle_submission_has_exactly_the_sample_ids(trained, tmp_path):
    root, runs = trained
    result = predict(load_runner([runs[0]]), root / "data", tmp_path / "out", workers=2)
    sample = pd.read_csv(root / "data" / "stage_2_sample_submission.csv")
    submission = pd.read_csv(tmp_path / "out" / "submission.csv")
    assert submission["ID"].tolist() == sample["ID"].tolist()
    assert submission["Label"].between(0, 1).all() and not submission["Label"].isna().any()
    test_images = {p.stem for p in (root / "data" / "stage_2_test").glob("*.dcm")}
    assert set(result.slices["image_id"]) == test_images  # the test split only
    slices = pd.read_csv(tmp_path / "out" / "slices.csv")
    assert list(slices.columns) == ["image_id", "study_id", "series_id", "z", *LABELS]
    for _, group in slices.groupby(["study_id", "series_id"], sort=False):
        assert (np.diff(group["z"].to_numpy()) > 0).all()
    # rows grouped: each series is one contiguous block
    blocks = (slices["series_id"] != slices["series_id"].shift()).sum()
    assert blocks == slices["series_id"].nunique()
    studies = pd.read_csv(tmp_path / "out" / "studies.csv")
    assert len(studies) == slices["study_id"].nunique()
    top = slices.loc[slices.groupby("study_id")["any"].idxmax()].set_index("study_id")
    for _, row in studies.iterrows():
        assert row["any"] == pytest.approx(top.loc[row["study_id"], "any"])
        assert row["any_slice"] == top.loc[row["study_id"], "image_id"]
        assert row["any_flag"] == (row["any"] >= load_runner([runs[0]]).thresholds["any"])


def test_tilted_series_in_slice_order_whatever_the_file_names(trained, tmp_path):
    root, runs = trained
    folder = tmp_path / "tilted" / "nested" / "deeper"
    folder.mkdir(parents=True)
    tilt = math.radians(20)
    orientation = (1.0, 0.0, 0.0, 0.0, math.cos(tilt), -math.sin(tilt))
    normal = np.cross(orientation[:3], orientation[3:])
    rng = np.random.default_rng(0)
    for k, i in enumerate(rng.permutation(10)):
        ds = ct_dataset(
            np.full((40, 40), 1064, np.int16),
            sop_instance_uid=f"1.2.3.{i}",
            study_instance_uid="1.2.9",
            series_instance_uid="1.2.9.1",
            position=np.array([0, 0, 10.0]) + 4.0 * i * normal,
            orientation=orientation,
            instance_number=int(10 - i),
        )
        save_dataset(ds, folder / f"IMG{k:04d}")  # no suffix, names unrelated to order
    off = SelectionOptions(series="off")  # a flat 40 x 40 test image is no head to choose
    result = predict(load_runner([runs[0]]), tmp_path / "tilted", tmp_path / "out", selection=off)
    assert result.slices["image_id"].tolist() == [f"1.2.3.{i}" for i in range(10)]
    assert result.submission is None


def test_mixed_folder_skips_junk_rgb_and_truncated(trained, tmp_path):
    root, runs = trained
    folder = tmp_path / "mixed"
    shutil.copytree(root / "data" / "stage_2_test", folder)
    good = sorted(folder.glob("*.dcm"))
    good[0].write_bytes(good[0].read_bytes()[:-3000])  # truncated inside the pixel data
    (folder / "junk.bin").write_bytes(b"garbage" * 100)
    rgb = ct_dataset(np.zeros((8, 8), np.int16))
    rgb.SamplesPerPixel, rgb.PhotometricInterpretation = 3, "RGB"
    save_dataset(rgb, folder / "rgb.dcm")
    result = runner.invoke(
        app, ["predict", str(runs[0]), str(folder), "--out", str(tmp_path / "out")]
    )
    assert result.exit_code == 0, result.output
    errors = pd.read_csv(tmp_path / "out" / "errors.csv")
    names = {s.split("/")[-1]: r for s, r in zip(errors["source"], errors["reason"], strict=True)}
    assert set(names) == {good[0].name, "junk.bin", "rgb.dcm"}
    assert "truncated" in names[good[0].name] and "colour" in names["rgb.dcm"]
    slices = pd.read_csv(tmp_path / "out" / "slices.csv")
    assert len(slices) == len(good) - 1 and "skipped 3 file(s)" in result.stderr


def test_ensembles_average_and_tta(trained, tmp_path):
    root, runs = trained
    index = root / "index.parquet"
    each = [predict(load_runner([r]), index, tmp_path / f"o{i}").slices for i, r in enumerate(runs)]
    both = predict(load_runner(runs), index, tmp_path / "both").slices
    np.testing.assert_allclose(
        both[list(LABELS)].to_numpy(),
        (each[0][list(LABELS)].to_numpy() + each[1][list(LABELS)].to_numpy()) / 2,
        atol=1e-6,
    )
    plain = load_runner([runs[0]])
    tta = load_runner([runs[0]], tta=True)
    x = np.random.default_rng(0).integers(0, 255, (4, plain.spec.channels, 32, 32), np.uint8)
    expected = (plain(x) + plain(np.ascontiguousarray(x[..., ::-1]))) / 2
    np.testing.assert_allclose(tta(x), expected, atol=1e-6)
    assert isinstance(plain, TorchRunner) and plain.spec.context == 1


def test_onnx_export_parity_and_no_torch_import(trained, tmp_path):
    root, runs = trained
    out = tmp_path / "model.onnx"
    result = runner.invoke(app, ["export", str(runs[0]), "--out", str(out)])
    assert result.exit_code == 0, result.output
    index = root / "index.parquet"
    torch_slices = predict(load_runner([runs[0]]), index, tmp_path / "t").slices
    onnx_slices = predict(load_runner([out]), index, tmp_path / "o").slices
    assert (torch_slices["image_id"] == onnx_slices["image_id"]).all()
    diff = np.abs(torch_slices[list(LABELS)].to_numpy() - onnx_slices[list(LABELS)].to_numpy())
    assert diff.max() < 1e-3
    code = (
        "import sys; from ichdet.inference.runners import load_runner; "
        f"r = load_runner([{str(out)!r}]); import numpy as np; "
        "r(np.zeros((2, r.spec.channels, 32, 32), np.uint8)); "
        "print('torch' in sys.modules)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "False"


def test_report_is_self_contained_with_a_section_per_label(trained, tmp_path):
    root, runs = trained
    result = runner.invoke(
        app,
        ["predict", str(runs[0]), str(root / "data"), "--out", str(tmp_path / "out"), "--report"],
    )
    assert result.exit_code == 0, result.output
    studies = pd.read_csv(tmp_path / "out" / "studies.csv")
    reports = sorted((tmp_path / "out" / "report").glob("*.html"))
    assert len(reports) == len(studies)
    page = reports[0].read_text()
    for name in LABELS:
        assert f"id='label-{name}'" in page
    assert page.count("data:image/png;base64,") >= 1 + 6 * 4  # curves, windows, heat maps
    assert "heat map (any)" in page
    assert not re.search(r"(src|href)=['\"](https?:|//)", page)  # nothing outside the file


# ------------------------------------------------------------------ hardening (issue 10)


def test_a_missing_kaggle_test_image_is_listed(trained, tmp_path):
    root, runs = trained
    data = tmp_path / "data"
    shutil.copytree(root / "data", data)
    gone = sorted((data / "stage_2_test").glob("*.dcm"))[0]
    gone.unlink()
    result = runner.invoke(app, ["predict", str(runs[0]), str(data), "--out", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    errors = pd.read_csv(tmp_path / "o" / "errors.csv")
    assert errors["source"].tolist() == [f"{gone.stem} (sample submission)"]
    assert "1 image(s) of the sample submission were not predicted" in result.stderr
    submission = pd.read_csv(tmp_path / "o" / "submission.csv")
    assert submission["ID"].str.startswith(gone.stem).sum() == 6  # still written, filled


def test_outputs_are_formula_safe_and_never_mixed_with_stale_ones(trained, tmp_path):
    root, runs = trained
    folder = tmp_path / "in"
    for i in range(3):
        ds = ct_dataset(
            np.full((40, 40), 1064, np.int16),
            study_instance_uid='=HYPERLINK("http://evil")',
            instance_number=i + 1,
            position=(0.0, 0.0, 5.0 * i),
        )
        save_dataset(ds, folder / f"{i}.dcm")
    out = tmp_path / "out"
    out.mkdir()
    (out / "submission.csv").write_text("stale from a Kaggle run")
    result = predict(load_runner([runs[0]]), folder, out)
    assert not (out / "submission.csv").exists()
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest["files"]) == {"slices", "studies", "series", "errors"}
    assert manifest["models"] == ["r0/best.pt"]  # no local absolute path
    cells = pd.read_csv(out / "studies.csv", dtype=str)["study_id"]
    assert cells.iloc[0] == "'" + '=HYPERLINK("http://evil")'  # text to a spreadsheet
    assert result.studies["study_id"].iloc[0].startswith("=")  # the data itself is unchanged


def test_one_failing_report_does_not_stop_the_others(trained, tmp_path, monkeypatch):
    import ichdet.reports.study_reports as reports

    root, runs = trained
    run = load_runner([runs[0]])
    result = predict(run, root / "index.parquet", tmp_path / "o")
    first = str(result.studies["study_id"].iloc[0])
    real = reports.study_report

    def flaky(study, summary, *args, **kwargs):
        if str(summary["study_id"]) == first:
            raise RuntimeError("boom")
        return real(study, summary, *args, **kwargs)

    monkeypatch.setattr(reports, "study_report", flaky)
    paths, failed = reports.write_reports(run, result, tmp_path / "r")
    assert len(paths) == len(result.studies) - 1
    assert failed == [(first, "report failed: RuntimeError: boom")]


def test_report_names_are_safe_and_distinct(trained, tmp_path):
    from ichdet.reports.study_reports import write_reports

    root, runs = trained
    run = load_runner([runs[0]])
    folder = tmp_path / "in"
    uids = ["1.2/3", "1.2_3", "9" * 300]
    for k, uid in enumerate(uids):
        ds = ct_dataset(np.full((40, 40), 1064, np.int16), study_instance_uid=uid)
        save_dataset(ds, folder / f"{k}.dcm")
    result = predict(run, folder, tmp_path / "o")
    paths, failed = write_reports(run, result, tmp_path / "r")
    assert not failed and len({p.name for p in paths}) == 3
    assert all(p.parent == tmp_path / "r" for p in paths)


def test_a_fold_ensemble_flags_with_the_runs_out_of_fold_thresholds(trained, tmp_path):
    root, runs = trained
    cv = tmp_path / "cv"
    for k, run in enumerate(runs):
        shutil.copytree(run, cv / f"fold_{k}")
    oof = {"source": "out-of-fold", "labels": {n: {"threshold": 0.123} for n in LABELS}}
    (cv / "thresholds.json").write_text(json.dumps(oof))
    assert load_runner([cv]).thresholds == dict.fromkeys(LABELS, 0.123)
    assert load_runner([cv / "fold_0"]).thresholds != dict.fromkeys(LABELS, 0.123)
    page = _one_report(load_runner([cv]), root, tmp_path)
    assert "mean of 2 models; heat maps show where the first of them looked" in page
    out = tmp_path / "m.onnx"
    assert runner.invoke(app, ["export", str(cv), "--out", str(out)]).exit_code == 0
    onnx_runner = load_runner([out])
    assert onnx_runner.thresholds == dict.fromkeys(LABELS, 0.123)


def _one_report(run, root, tmp_path) -> str:
    from ichdet.reports.study_reports import write_reports

    result = predict(run, root / "index.parquet", tmp_path / "pred")
    paths, _ = write_reports(run, result, tmp_path / "reports")
    return paths[0].read_text()
