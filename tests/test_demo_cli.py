"""The demo's pieces end to end at tiny size, and the data commands through the CLI."""

import json

import pandas as pd
from rich.console import Console
from typer.testing import CliRunner

from ichdet.cli import app
from ichdet.demo import DemoConfig, print_demo_table, run_demo

runner = CliRunner()


def test_demo_end_to_end_tiny(tmp_path):
    cfg = DemoConfig(
        studies=10,
        synth_size=48,
        size=32,
        model="test_efficientnet",
        epochs=1,
        workers=1,
        sequence_epochs=2,
        segment=True,
        segment_model="test_efficientnet",
        segment_epochs=1,
    )
    metrics = run_demo(tmp_path / "demo", cfg, log=lambda s: None)
    stages = {"synth", "index", "prepare", "train", "sequence", "segment", "predict", "validate"}
    assert set(metrics["timings"]) == stages
    validation = json.loads((tmp_path / "demo" / "validate" / "validation.json").read_text())
    assert validation["studies"]["joined"] == len(
        pd.read_csv(tmp_path / "demo" / "predict" / "studies.csv")
    )
    assert (tmp_path / "demo" / "validate" / "report.html").stat().st_size > 10_000
    assert (tmp_path / "demo" / "run" / "sequence" / "best.pt").is_file()
    slices = pd.read_csv(tmp_path / "demo" / "predict" / "slices.csv")
    assert "cnn_any" in slices  # predict took run/ as it is, with its series stage
    assert metrics["prior_log_loss"] > 0 and metrics["test"]["images"] > 0
    submission = pd.read_csv(tmp_path / "demo" / "predict" / "submission.csv")
    sample = pd.read_csv(tmp_path / "demo" / "data" / "stage_2_sample_submission.csv")
    assert submission["ID"].tolist() == sample["ID"].tolist()
    console = Console(record=True, width=200)
    print_demo_table(metrics, console)
    text = console.export_text()
    assert "prior-only baseline" in text and "intraventricular" in text
    assert "CNN + series stage" in text and "slice weighted log loss" in text
    assert "segmenter, held-out fold" in text and "volume CCC" in text
    studies = pd.read_csv(tmp_path / "demo" / "predict" / "studies.csv")
    assert studies["volume_ml_any"].notna().all()  # every test study measured
    assert metrics["segment_test"]["series"] == len(studies)


def test_data_commands(tmp_path):
    data, index, cache = tmp_path / "data", tmp_path / "ix" / "index.parquet", tmp_path / "c"
    result = runner.invoke(app, ["synth", str(data), "--studies", "6", "--size", "48", "--masks"])
    assert result.exit_code == 0, result.output
    summary = json.loads((data / "synth.json").read_text())
    assert summary["settings"]["masks"] and (data / "masks").is_dir()
    result = runner.invoke(app, ["index", str(data), "--out", str(index), "--folds", "2"])
    assert result.exit_code == 0, result.output
    df = pd.read_parquet(index)
    assert len(df) == summary["images"]["train"] + summary["images"]["test"]
    assert (tmp_path / "ix" / "index.report.json").is_file()
    result = runner.invoke(
        app, ["prepare", str(index), "--out", str(cache), "--size", "32", "--format", "npy"]
    )
    assert result.exit_code == 0, result.output
    assert len(list(cache.glob("32px_*_npy_*/*/*.npy"))) == len(df)
    result = runner.invoke(app, ["eda", str(index), "--out", str(tmp_path / "eda")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "eda" / "summary.md").is_file()
    bad = runner.invoke(app, ["prepare", str(index), "--out", str(cache), "--windows", "nope"])
    assert bad.exit_code == 1 and "unknown window" in bad.stderr
