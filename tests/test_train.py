import json
import os
import shutil
import subprocess
import sys

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from ichdet.cli import app
from ichdet.data.cache import CacheSettings
from ichdet.data.index import build_index, write_index
from ichdet.data.prepare import prepare
from ichdet.labels import LABELS
from ichdet.models.checkpoint import load_checkpoint
from ichdet.synth.studies import synthesize
from ichdet.training.config import TrainConfig, read_recipe
from ichdet.training.cv import fit_all
from ichdet.training.slice_task import fit, resolve_cache

runner = CliRunner()
TINY = dict(model="test_efficientnet", size=32, batch_size=16, workers=0, lr=3e-3)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    synthesize(root / "data", studies=8, seed=2, size=48)
    df, errors, report = build_index(root / "data", folds=2)
    index = write_index(df, errors, report, root / "index.parquet")
    prepare(df, root / "cache", CacheSettings(size=32))
    return root, index


def _cfg(prepared, out, **kw):
    root, index = prepared
    settings = {"cache": str(root / "cache"), **TINY, "epochs": 2, **kw}
    return TrainConfig(index=str(index), out=str(out), **settings)


def _train_args(prepared, out, batch_size):
    root, index = prepared
    return [
        "train",
        str(index),
        "--cache",
        str(root / "cache"),
        "--out",
        str(out),
        "--model",
        "test_efficientnet",
        "--size",
        "32",
        "--epochs",
        "1",
        "--batch-size",
        str(batch_size),
        "--workers",
        "0",
    ]


def test_fit_writes_a_complete_run(prepared, tmp_path):
    report = fit(_cfg(prepared, tmp_path / "run", context=1), log=lambda s: None)
    run = tmp_path / "run"
    for name in (
        "config.yaml",
        "config.json",
        "log.csv",
        "last.pt",
        "best.pt",
        "metrics.json",
        "valid_predictions.csv",
        "thresholds.json",
    ):
        assert (run / name).is_file(), name
    log = pd.read_csv(run / "log.csv")
    assert log["epoch"].tolist() == [1, 2]
    assert {"train_loss", "valid_loss", "auc_any", "lr", "images_per_s"} <= set(log.columns)
    config = json.loads((run / "config.json").read_text())
    assert config["model_config"]["in_chans"] == 9 and "torch" in config["versions"]
    index = pd.read_parquet(prepared[1])
    valid = index[(index["split"] == "train") & (index["fold"] == 0)]
    preds = pd.read_csv(run / "valid_predictions.csv")
    assert len(preds) == 6 * len(valid)
    assert set(preds["ID"]) == {f"{i}_{n}" for i in valid["image_id"] for n in LABELS}
    assert preds["Label"].between(0, 1).all()
    assert report["complete"] and report["weighted_log_loss"] > 0
    assert set(json.loads((run / "thresholds.json").read_text())["labels"]) == set(LABELS)


class Interrupt(Exception):
    pass


def test_resume_after_a_crash_matches_a_straight_run(prepared, tmp_path):
    straight = _cfg(prepared, tmp_path / "straight", epochs=3, ema=0.9)
    fit(straight, log=lambda s: None)

    def crash(epoch, step):
        if epoch == 1 and step == 10:  # in the middle of the second epoch
            raise Interrupt

    broken = _cfg(prepared, tmp_path / "broken", epochs=3, ema=0.9)
    with pytest.raises(Interrupt):
        fit(broken, on_step=crash, log=lambda s: None)
    assert load_checkpoint(tmp_path / "broken" / "last.pt")["epochs_done"] == 1
    fit(broken, resume=True, log=lambda s: None)
    a = load_checkpoint(tmp_path / "straight" / "last.pt")
    b = load_checkpoint(tmp_path / "broken" / "last.pt")
    assert a["epochs_done"] == b["epochs_done"] == 3
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for key in a["ema"]:
        assert torch.equal(a["ema"][key], b["ema"][key]), key
    assert pd.read_csv(tmp_path / "broken" / "log.csv")["epoch"].tolist() == [1, 2, 3]
    with pytest.raises(ValueError, match="cannot resume with different model"):
        fit(_cfg(prepared, tmp_path / "broken", model="test_resnet"), resume=True)


def test_fold_all_writes_oof_and_cv(prepared, tmp_path):
    cv = fit_all(_cfg(prepared, tmp_path / "cv", epochs=1), log=lambda s: None)
    index = pd.read_parquet(prepared[1])
    train = index[index["split"] == "train"]
    oof = pd.read_csv(tmp_path / "cv" / "oof_predictions.csv")
    assert len(oof) == 6 * len(train) and oof["ID"].is_unique
    assert set(cv["folds"]) == {0, 1} and cv["cv_weighted_log_loss"] > 0
    assert (tmp_path / "cv" / "cv.json").is_file()
    assert json.loads((tmp_path / "cv" / "thresholds.json").read_text())["source"] == "out-of-fold"
    assert read_recipe(tmp_path / "cv" / "config.yaml")["fold"] == "all"
    assert read_recipe(tmp_path / "cv" / "fold_1" / "config.yaml")["fold"] == 1


def test_cache_resolution(prepared):
    root, _ = prepared
    assert resolve_cache(root / "cache", 32, "brain,subdural,bone").name.startswith("32px")
    with pytest.raises(FileNotFoundError, match="no cache for size 64"):
        resolve_cache(root / "cache", 64, "brain,subdural,bone")


def test_cli_train_and_evaluate(prepared, tmp_path):
    root, index = prepared
    out = tmp_path / "cli"
    result = runner.invoke(app, _train_args(prepared, out, batch_size=16))
    assert result.exit_code == 0, result.output
    assert "weighted log loss" in result.stdout
    result = runner.invoke(
        app,
        [
            "evaluate",
            str(out / "valid_predictions.csv"),
            str(root / "data" / "stage_2_train.csv"),
            "--json",
            "--save-thresholds",
            str(tmp_path / "thr.json"),
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    metrics = json.loads((out / "metrics.json").read_text())
    assert report["weighted_log_loss"] == pytest.approx(metrics["weighted_log_loss"], rel=1e-4)
    assert report["labelled_without_prediction"] > 0  # the other fold's images
    assert json.loads((tmp_path / "thr.json").read_text())["labels"]["any"]["threshold"] >= 0


@pytest.mark.slow
def test_torchrun_two_cpu_processes(prepared, tmp_path):
    root, index = prepared
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",  # a free port on localhost
        "--nproc_per_node",
        "2",
        "-m",
        "ichdet",
        *_train_args(prepared, out, batch_size=8),
        "--device",
        "cpu",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    config = json.loads((out / "config.json").read_text())
    assert config["world_size"] == 2
    index_df = pd.read_parquet(index)
    valid = index_df[(index_df["split"] == "train") & (index_df["fold"] == 0)]
    preds = pd.read_csv(out / "valid_predictions.csv")
    assert len(preds) == 6 * len(valid)  # validation gathered across both ranks, no duplicates
    assert pd.read_csv(out / "log.csv")["epoch"].tolist() == [1]


def test_recipe_with_a_flag_override_and_the_runs_own_recipe_reproduces_it(prepared, tmp_path):
    root, index = prepared
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(
        f"index: {index}\ncache: {root / 'cache'}\nout: {tmp_path / 'a'}\n"
        "model: test_efficientnet\nsize: 32\nbatch_size: 16\nworkers: 0\nlr: 3e-3\nepochs: 3\n"
    )
    result = runner.invoke(app, ["train", "--config", str(recipe), "--epochs", "1", "--ema", "0.9"])
    assert result.exit_code == 0, result.output
    written = read_recipe(tmp_path / "a" / "config.yaml")
    assert (written["epochs"], written["ema"], written["lr"]) == (1, 0.9, 3e-3)
    assert pd.read_csv(tmp_path / "a" / "log.csv")["epoch"].tolist() == [1]
    again = ["train", "--config", str(tmp_path / "a" / "config.yaml"), "--out", str(tmp_path / "b")]
    result = runner.invoke(app, again)
    assert result.exit_code == 0, result.output
    a = load_checkpoint(tmp_path / "a" / "last.pt")
    b = load_checkpoint(tmp_path / "b" / "last.pt")
    assert a["kind"] == b["kind"] == "slice_cnn"
    for part in ("model", "ema"):
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), (part, key)
    assert read_recipe(tmp_path / "b" / "config.yaml") == {**written, "out": str(tmp_path / "b")}


def test_train_names_a_bad_recipe_setting(prepared, tmp_path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("epochs: three\n")
    result = runner.invoke(app, ["train", "--config", str(recipe)])
    assert result.exit_code == 1
    assert "bad.yaml: epochs: 'three' is not int" in result.output


# ------------------------------------------------------------------ hardening (issue 10)


def test_a_run_folder_with_an_earlier_run_is_refused_unless_resume_or_force(prepared, tmp_path):
    cfg = _cfg(prepared, tmp_path / "run", epochs=1)
    fit(cfg, log=lambda s: None)
    stale = tmp_path / "run" / "thresholds.json"
    stale.write_text("{}")
    with pytest.raises(ValueError, match="holds an earlier run; --resume continues it"):
        fit(cfg, log=lambda s: None)
    result = runner.invoke(app, _train_args(prepared, tmp_path / "run", batch_size=16))
    assert result.exit_code == 1 and "--force replaces it" in result.output
    result = runner.invoke(app, [*_train_args(prepared, tmp_path / "run", 16), "--force"])
    assert result.exit_code == 0, result.output
    assert json.loads(stale.read_text())["labels"]  # the new run's, not the stale file


def test_checkpoints_carry_no_local_paths(prepared, tmp_path):
    fit(_cfg(prepared, tmp_path / "run", epochs=1), log=lambda s: None)
    ckpt = load_checkpoint(tmp_path / "run" / "best.pt")
    assert not {"index", "cache", "out", "weights"} & set(ckpt["train_config"])
    assert ckpt["train_config"]["model"] == "test_efficientnet"


def test_missing_cache_entries_are_reported_or_refused(prepared, tmp_path):
    from ichdet.data.cache import cache_key, entry_path

    root, index = prepared
    shutil.copytree(root / "cache", tmp_path / "cache")
    directory = resolve_cache(tmp_path / "cache", 32, "brain,subdural,bone")
    df = pd.read_parquet(index)
    train = df[df["split"] == "train"]["image_id"].tolist()
    entry_path(directory, cache_key(train[0]), "zstd").unlink()
    lines: list[str] = []
    cfg = _cfg(prepared, tmp_path / "one", epochs=1, **{"cache": str(tmp_path / "cache")})
    report = fit(cfg, log=lines.append)
    assert report["missing_cache_entries"] == 1
    assert any(line.startswith("warning: 1 image(s)") for line in lines)
    for image_id in train[1:20]:
        entry_path(directory, cache_key(image_id), "zstd").unlink()
    with pytest.raises(ValueError, match="20 of .* images of the index have no entry"):
        fit(_cfg(prepared, tmp_path / "many", epochs=1, cache=str(tmp_path / "cache")))


def test_run_configs_keep_paths_relative_to_the_working_folder(prepared, tmp_path, monkeypatch):
    root, index = prepared
    work = tmp_path / "work"
    shutil.copytree(root / "cache", work / "cache")
    shutil.copy(index, work / "index.parquet")
    monkeypatch.chdir(work)
    cfg = TrainConfig(
        index=str(work / "index.parquet"),  # absolute, inside the working folder
        cache=str(work / "cache"),
        out=str(work / "runs" / "a"),
        **{**TINY, "epochs": 1},
    )
    fit(cfg, log=lambda s: None)
    config = json.loads((work / "runs" / "a" / "config.json").read_text())["train_config"]
    assert (config["index"], config["cache"], config["out"]) == ("index.parquet", "cache", "runs/a")
    assert read_recipe(work / "runs" / "a" / "config.yaml")["index"] == "index.parquet"
