"""The series stage end to end on a small synthetic set: embeddings, training (one fold and
CV), partial and study-level labels, two-stage predict, ONNX export, provenance."""

import json
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
from ichdet.inference.predict import SYNTHETIC_WARNING, predict
from ichdet.inference.runners import load_runner
from ichdet.labels import LABELS, STUDY_LABELS
from ichdet.models.checkpoint import load_checkpoint
from ichdet.synth.studies import synthesize
from ichdet.training.config import SequenceTrainConfig, TrainConfig
from ichdet.training.cv import fit_all
from ichdet.training.embed import EMBED_FORMAT, Embeddings
from ichdet.training.sequence_task import _reusable, fit_sequence
from ichdet.training.slice_task import fit

runner = CliRunner()
TINY = dict(model="test_efficientnet", size=32, batch_size=16, workers=0, lr=3e-3)
QUIET = dict(log=lambda s: None)


@pytest.fixture(scope="module")
def cnn_run(tmp_path_factory):
    """A synthetic set indexed with 2 folds, prepared, and a CV run of a tiny CNN."""
    root = tmp_path_factory.mktemp("seq")
    synthesize(root / "data", studies=8, seed=2, size=48)
    df, errors, report = build_index(root / "data", folds=2)
    index = write_index(df, errors, report, root / "index.parquet")
    prepare(df, root / "cache", CacheSettings(size=32))
    cfg = TrainConfig(
        index=str(index), cache=str(root / "cache"), out=str(root / "cnn"), fold="all", epochs=1
    )
    fit_all(TrainConfig(**{**cfg.to_dict(), **TINY}), **QUIET)
    return root


def _seq(root, out, **kw):
    settings = dict(
        index=str(root / "index.parquet"),
        cache=str(root / "cache"),
        cnn=str(root / "cnn"),
        out=str(out),
        epochs=2,
        batch_size=2,
        hidden=16,
    )
    return SequenceTrainConfig(**{**settings, **kw})


@pytest.fixture(scope="module")
def seq_run(cnn_run):
    """The series stage of every fold, where predict finds it (CNN/sequence/fold_k)."""
    cv = fit_all(
        _seq(cnn_run, cnn_run / "cnn" / "sequence", fold="all"), fit_fold=fit_sequence, **QUIET
    )
    return cnn_run, cv


def test_one_fold_writes_slice_and_study_outputs(cnn_run, tmp_path):
    report = fit_sequence(_seq(cnn_run, tmp_path / "s", arch="transformer"), **QUIET)
    out = tmp_path / "s"
    index = pd.read_parquet(cnn_run / "index.parquet")
    valid = index[(index["fold"] == 0) & (index["split"] == "train")]
    slices = pd.read_csv(out / "valid_predictions.csv")
    assert len(slices) == 6 * len(valid)
    studies = pd.read_csv(out / "valid_studies.csv")
    assert set(studies["study_id"]) == set(valid["study_id"])
    assert list(studies.columns) == ["study_id", *LABELS]
    thresholds = json.loads((out / "thresholds.json").read_text())
    assert set(thresholds["labels"]) == set(LABELS) == set(thresholds["study_labels"])
    assert report["cnn"]["weighted_log_loss"] > 0 and "any" in report["study"]["auc"]
    ckpt = load_checkpoint(out / "best.pt")
    assert ckpt["kind"] == "sequence" and ckpt["model_config"]["arch"] == "transformer"
    assert ckpt["training_data"]["synthetic_only"] is True
    emb = Embeddings.load(cnn_run / "cnn" / "fold_0" / "embeddings.npz")
    assert emb.features.dtype == np.float16 and set(valid["image_id"]) <= set(emb.ids)


def test_embeddings_of_another_format_are_made_again(cnn_run, tmp_path):
    """A file from before the mask-head peaks (format 1) is never read as today's."""
    fold = cnn_run / "cnn" / "fold_0"
    emb = Embeddings.load(fold / "embeddings.npz")
    wanted = set(emb.ids.tolist())
    assert emb.meta["format"] == EMBED_FORMAT == 2
    emb.save(tmp_path / "same.npz")
    assert _reusable(tmp_path / "same.npz", fold / "best.pt", wanted) is not None
    emb.meta["format"] = 1
    emb.save(tmp_path / "old.npz")
    assert _reusable(tmp_path / "old.npz", fold / "best.pt", wanted) is None


def test_the_sequence_model_of_a_fold_needs_that_folds_cnn(cnn_run, tmp_path):
    with pytest.raises(ValueError, match="held out fold 0, not 1"):
        fit_sequence(_seq(cnn_run, tmp_path / "s", cnn=str(cnn_run / "cnn" / "fold_0"), fold=1))


def test_cv_writes_out_of_fold_slices_and_studies(seq_run):
    root, cv = seq_run
    out = root / "cnn" / "sequence"
    assert (out / "oof_studies.csv").is_file() and (out / "oof_predictions.csv").is_file()
    assert set(cv["study"]["auc"]) == set(LABELS)
    assert "sensitivity" in cv["study"]["operating_points"]["any"]
    thresholds = json.loads((out / "thresholds.json").read_text())
    assert thresholds["source"] == "out-of-fold" and "study_labels" in thresholds


def test_predict_uses_both_stages_and_onnx_matches_torch(seq_run, tmp_path):
    root, _ = seq_run
    torch_runner = load_runner([root / "cnn"])
    assert torch_runner.series is not None and len(torch_runner.names) == 4
    result = predict(torch_runner, root / "data", tmp_path / "p")
    cnn_columns = [f"cnn_{n}" for n in LABELS]
    assert set(cnn_columns) <= set(result.slices.columns)
    assert not np.allclose(result.slices[list(LABELS)], result.slices[cnn_columns])
    assert (result.studies["warning"] == "").all()  # phantoms in, phantom-trained model
    result = runner.invoke(app, ["export", str(root / "cnn"), "--out", str(tmp_path / "m.onnx")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "m.sequence.onnx").is_file()
    onnx_pred = predict(load_runner([tmp_path / "m.onnx"]), root / "data", tmp_path / "q")
    torch_pred = predict(torch_runner, root / "data", tmp_path / "p")
    columns = [*LABELS, *cnn_columns]
    assert np.abs(onnx_pred.slices[columns] - torch_pred.slices[columns]).to_numpy().max() < 1e-3
    assert (
        np.abs(onnx_pred.studies[list(LABELS)] - torch_pred.studies[list(LABELS)]).max().max()
        < 1e-3
    )
    code = (
        "import sys; from ichdet.inference.runners import load_runner; "
        f"r = load_runner([{str(tmp_path / 'm.onnx')!r}]); "
        "assert r.series is not None; assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_stale_series_stage_is_refused(seq_run, tmp_path):
    root, _ = seq_run
    import shutil

    copy = tmp_path / "cnn"
    shutil.copytree(root / "cnn", copy)
    ckpt = load_checkpoint(copy / "fold_1" / "best.pt")
    ckpt["epoch"] = 99  # a retrained CNN: another file
    import torch

    torch.save(ckpt, copy / "fold_1" / "best.pt")
    with pytest.raises(ValueError, match="trained on another version"):
        load_runner([copy])
    shutil.rmtree(copy / "sequence" / "fold_0")
    with pytest.raises(ValueError, match="no sequence model for"):
        load_runner([copy])


def test_a_model_trained_on_phantoms_warns_on_real_images(seq_run, write_ct, tmp_path):
    from serve_fixtures import ct_study  # a head phantom without the synth Manufacturer

    root, _ = seq_run
    ct_study(tmp_path / "real")
    result = predict(load_runner([root / "cnn"]), tmp_path / "real", tmp_path / "out")
    assert result.studies["warning"].tolist() == [SYNTHETIC_WARNING]
    assert pd.read_csv(tmp_path / "out" / "studies.csv")["warning"][0] == SYNTHETIC_WARNING
    cli = runner.invoke(
        app,
        [
            "predict",
            str(root / "cnn"),
            str(tmp_path / "real"),
            "-o",
            str(tmp_path / "o2"),
            "--report",
        ],
    )
    assert cli.exit_code == 0, cli.output
    assert "synthetic phantoms" in cli.output
    page = next((tmp_path / "o2" / "report").glob("*.html")).read_text()
    assert "WARNING: model trained only on synthetic phantoms" in page
    assert "the series model's study output" in page


def test_partial_labels_train_the_cnn(cnn_run, tmp_path):
    """Only "any" is known: the CNN trains on it; the other labels' metrics are NaN."""
    truth = pd.read_csv(cnn_run / "data" / "stage_2_train.csv")
    any_rows = truth[truth["ID"].str.endswith("_any")]
    labels = pd.DataFrame({"image": any_rows["ID"].str[: -len("_any")], "any": any_rows["Label"]})
    labels.to_csv(tmp_path / "any.csv", index=False)
    df, errors, report = build_index(cnn_run / "data", labels=tmp_path / "any.csv", folds=2)
    index = write_index(df, errors, report, tmp_path / "index.parquet")
    cfg = TrainConfig(
        index=str(index), cache=str(cnn_run / "cache"), out=str(tmp_path / "r"), epochs=1
    )
    report = fit(TrainConfig(**{**cfg.to_dict(), **TINY}), **QUIET)
    assert np.isfinite(report["weighted_log_loss"]) and np.isnan(report["auc"]["epidural"])
    assert report["labelled"]["epidural"] == 0 and report["labelled"]["any"] == report["images"]


def test_study_labels_only_train_the_series_stage(cnn_run, tmp_path):
    """CQ500-style reads (one row per study) and no slice label: the CNN refuses, the series
    stage learns its study head from them (multiple-instance learning)."""
    index = pd.read_parquet(cnn_run / "index.parquet")
    reads = index.groupby("study_id")[list(LABELS)].max().reset_index()
    reads.to_csv(tmp_path / "reads.csv", index=False)
    empty = tmp_path / "nolabels.csv"
    pd.DataFrame({"image": ["none"], "any": [0]}).to_csv(empty, index=False)
    result = runner.invoke(
        app,
        [
            "index",
            str(cnn_run / "data"),
            "-o",
            str(tmp_path / "study.parquet"),
            "--folds",
            "2",
            "--labels",
            str(empty),
            "--study-labels",
            str(tmp_path / "reads.csv"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "study labels: 6 studies labelled, 0 label rows match no study" in result.output
    study_index = pd.read_parquet(tmp_path / "study.parquet")
    assert study_index[list(LABELS)].isna().all().all()
    train = study_index["split"] == "train"
    assert study_index.loc[train, list(STUDY_LABELS)].notna().all().all()
    assert sorted(study_index.loc[train, "fold"].unique()) == [0, 1]  # study labels make folds
    with pytest.raises(ValueError, match="no image of the training split has a slice label"):
        fit(
            TrainConfig(
                index=str(tmp_path / "study.parquet"),
                cache=str(cnn_run / "cache"),
                out=str(tmp_path / "c"),
                **TINY,
            )
        )
    report = fit_sequence(
        _seq(cnn_run, tmp_path / "s", index=str(tmp_path / "study.parquet")), **QUIET
    )
    assert np.isnan(report["weighted_log_loss"])  # no slice label to score
    assert np.isfinite(report["study"]["weighted_log_loss"])


def test_cli_trains_the_sequence_task_into_the_cnn_run(cnn_run, tmp_path):
    import shutil

    shutil.copytree(cnn_run / "cnn" / "fold_0", tmp_path / "run")
    args = ["train", str(cnn_run / "index.parquet"), "--cache", str(cnn_run / "cache")]
    bad = runner.invoke(app, [*args, "--out", str(tmp_path / "x"), "--arch", "gru"])
    assert bad.exit_code != 0 and "unknown setting(s) arch" in bad.output
    seq = ["--task", "sequence", "--cnn", str(tmp_path / "run"), "--epochs", "1", "--hidden", "8"]
    result = runner.invoke(app, [*args, *seq])
    assert result.exit_code == 0, result.output
    assert "study AUC(any)" in result.output
    assert (tmp_path / "run" / "sequence" / "best.pt").is_file()
    assert load_runner([tmp_path / "run"]).series is not None


@pytest.mark.slow
def test_torchrun_two_cpu_processes_train_the_series_stage(cnn_run, tmp_path):
    """Rank 0 embeds, the other rank waits for the file; validation is gathered once."""
    import os
    import shutil

    shutil.copytree(cnn_run / "cnn" / "fold_0", tmp_path / "run")
    (tmp_path / "run" / "embeddings.npz").unlink(missing_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "ichdet",
        "train",
        str(cnn_run / "index.parquet"),
        "--cache",
        str(cnn_run / "cache"),
        "--task",
        "sequence",
        "--cnn",
        str(tmp_path / "run"),
        "--epochs",
        "1",
        "--batch-size",
        "1",
        "--hidden",
        "8",
        "--device",
        "cpu",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    out = tmp_path / "run" / "sequence"
    assert json.loads((out / "config.json").read_text())["world_size"] == 2
    index = pd.read_parquet(cnn_run / "index.parquet")
    valid = index[(index["split"] == "train") & (index["fold"] == 0)]
    assert len(pd.read_csv(out / "valid_predictions.csv")) == 6 * len(valid)
    assert set(pd.read_csv(out / "valid_studies.csv")["study_id"]) == set(valid["study_id"])
