"""``ichdet demo``: the whole pipeline on built-in synthetic data, small enough for a laptop CPU.

synth -> index (5 patient-grouped folds) -> prepare (128 px) -> train fold 0 of a TinyNet-D (an
EfficientNet scaled down) from scratch -> train the series stage (a bidirectional GRU over each
series' slice embeddings, fold 0 again) -> the CNN and the series stage side by side on the
held-out fold -> predict the test split with both stages (Kaggle submission) and score it against
the synthetic truth.
Sizes were chosen by measurement on 2 CPU cores (see README and benchmarks/RESULTS.md).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from ichdet import __version__
from ichdet.data.cache import CacheSettings
from ichdet.data.index import build_index, write_index
from ichdet.data.mask_join import DEFAULT_LABELS, attach_masks
from ichdet.data.prepare import prepare
from ichdet.evaluation.evaluate import evaluate_files
from ichdet.evaluation.mask_eval import evaluate_masks
from ichdet.inference.predict import predict
from ichdet.inference.runners import load_runner
from ichdet.inference.seg_runner import load_segmenter
from ichdet.labels import LABELS
from ichdet.synth.studies import synthesize
from ichdet.training.config import SegmentTrainConfig, SequenceTrainConfig, TrainConfig
from ichdet.training.segment_task import fit_segment
from ichdet.training.sequence_task import fit_sequence
from ichdet.training.slice_task import fit
from ichdet.util.jsonio import read_json


@dataclass(frozen=True)
class DemoConfig:
    studies: int = 260
    synth_size: int = 160
    size: int = 128
    model: str = "tinynet_d"
    epochs: int = 7  # 3 seeds, held out: 0.32-0.52x the prior (6 epochs: 0.49-0.51x)
    batch_size: int = 16
    lr: float = 6e-3  # 6 epochs, 3 seeds: 3e-3 0.43-0.60x the prior, 6e-3 0.49-0.51x
    context: int = 0
    mask_loss: float = 1.0  # the mask head: where the blood lies, from the phantoms' masks
    channels_last: bool = True  # ~1.3x faster training on the CPU (oneDNN NHWC kernels)
    seed: int = 0
    workers: int = 2  # synth, index, prepare and predict
    # training reads the cache in its own process: on 2 cores a loader worker only competes with
    # torch's threads (0 workers: 1.1-1.2x the images/s of 1; the same batches, the same results)
    train_workers: int = 0
    sequence_epochs: int = 30
    sequence_lr: float = 3e-3
    sequence_arch: str = "gru"
    sequence_tta: bool = True  # embed each slice and its mirror image (train and predict)
    threads: int = 2  # torch's CPU threads: results depend on it (reductions split by thread)
    segment: bool = False  # ``ichdet demo --segment``: train the segmenter too, measure volumes
    segment_epochs: int = 8
    segment_model: str = "tinynet_e"
    segment_lr: float = 3e-3


def train_config(cfg: DemoConfig, out: str | os.PathLike) -> TrainConfig:
    """The demo's training settings (``configs/demo.yaml`` is the same recipe)."""
    out = Path(out)
    return TrainConfig(
        index=str(out / "index.parquet"),
        cache=str(out / "cache"),
        out=str(out / "run"),
        fold=0,
        epochs=cfg.epochs,
        model=cfg.model,
        size=cfg.size,
        context=cfg.context,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        mask_loss=cfg.mask_loss,
        channels_last=cfg.channels_last,
        seed=cfg.seed,
        workers=cfg.train_workers,
        device="cpu",
    )


def sequence_config(cfg: DemoConfig, out: str | os.PathLike) -> SequenceTrainConfig:
    """The demo's series stage: fold 0 over the demo CNN's embeddings, into ``run/sequence``."""
    out = Path(out)
    return SequenceTrainConfig(
        index=str(out / "index.parquet"),
        cache=str(out / "cache"),
        cnn=str(out / "run"),
        out=str(out / "run" / "sequence"),
        fold=0,
        arch=cfg.sequence_arch,
        embed_tta=cfg.sequence_tta,
        epochs=cfg.sequence_epochs,
        lr=cfg.sequence_lr,
        seed=cfg.seed,
        device="cpu",
    )


def segment_config(cfg: DemoConfig, out: str | os.PathLike) -> SegmentTrainConfig:
    """The demo's segmenter (``--segment``): a U-Net over TinyNet-E, fold 0, into
    ``segmenter`` (``configs/demo-segment.yaml`` is the same recipe)."""
    out = Path(out)
    return SegmentTrainConfig(
        index=str(out / "index.parquet"),
        cache=str(out / "cache"),
        out=str(out / "segmenter"),
        fold=0,
        epochs=cfg.segment_epochs,
        model=cfg.segment_model,
        size=cfg.size,
        batch_size=cfg.batch_size,
        lr=cfg.segment_lr,
        seed=cfg.seed,
        workers=cfg.train_workers,
        device="cpu",
    )


def run_demo(
    out: str | os.PathLike, cfg: DemoConfig = DemoConfig(), log: Callable[[str], None] = print
) -> dict:
    """Run every stage into ``out``; returns the held-out fold's metrics, the test split's
    metrics (under ``test``) and timings."""
    import torch

    out = Path(out)
    timings: dict[str, float] = {}
    torch.set_num_threads(cfg.threads)

    def stage(name: str, start: float) -> None:
        timings[name] = time.perf_counter() - start
        log(f"{name}: done in {timings[name]:.1f}s")

    make_data(out, cfg, stage, log)
    t = time.perf_counter()
    train_cfg = train_config(cfg, out)
    metrics = fit(train_cfg, log=log, force=True)  # the demo owns its folder
    stage("train", t)
    t = time.perf_counter()
    metrics["sequence"] = fit_sequence(sequence_config(cfg, out), log=log, force=True)
    stage("sequence", t)
    segmenter = None
    if cfg.segment:
        t = time.perf_counter()
        metrics["segment"] = fit_segment(segment_config(cfg, out), log=log, force=True)
        segmenter = load_segmenter([out / "segmenter"])
        stage("segment", t)
    t = time.perf_counter()
    runner = load_runner([out / "run"])
    result = predict(runner, out / "data", out / "predict", cfg.workers, segmenter=segmenter)
    if segmenter is not None:
        metrics["segment_test"] = evaluate_masks(out / "predict", out / "index.parquet")[0]
    metrics["test"] = evaluate_files(
        result.files["submission"], out / "data" / "stage_2_test_labels.csv"
    )
    stage("predict", t)
    t = time.perf_counter()
    metrics["validation"] = validate_test_split(out, result.studies, result.slices)
    stage("validate", t)
    metrics["timings"] = timings
    return metrics


def make_data(
    out: Path, cfg: DemoConfig, stage: Callable[[str, float], None], log: Callable[[str], None]
) -> None:
    """synth (with masks) -> index (5 folds, the masks joined for the mask head and the
    segmenter) -> prepare."""
    t = time.perf_counter()
    summary = synthesize(
        out / "data",
        studies=cfg.studies,
        seed=cfg.seed,
        size=cfg.synth_size,
        masks=True,
        workers=cfg.workers,
    )
    stage("synth", t)
    log(
        f"  {summary['images']['train']} train + {summary['images']['test']} test slices, "
        f"any-hemorrhage prevalence {summary['prevalence']['any']:.1%}"
    )
    t = time.perf_counter()
    df, errors, report = build_index(out / "data", folds=5, workers=cfg.workers, seed=cfg.seed)
    if cfg.segment or cfg.mask_loss > 0:  # the phantoms' exact masks, a file per bloody slice
        df, _, report["masks"] = attach_masks(df, out / "data" / "masks", out, DEFAULT_LABELS)
    write_index(df, errors, report, out / "index.parquet")
    stage("index", t)
    t = time.perf_counter()
    prepare(df, out / "cache", CacheSettings(size=cfg.size), workers=cfg.workers)
    stage("prepare", t)


def validate_test_split(out: Path, studies: Any, slices: Any) -> dict:
    """``ichdet validate`` of the test split's studies against its truth (the model's
    thresholds, 500 bootstrap resamples): ``out/validate/`` gets validation.json and
    report.html; returns the figures."""
    from ichdet.evaluation.reference import read_reference
    from ichdet.evaluation.validate import ValidateOptions, run_validation
    from ichdet.reports.validation_report import write_report
    from ichdet.util.jsonio import strict, write_json

    truth = read_reference(out / "data" / "stage_2_test_labels.csv", slices=slices)
    thresholds = read_json(out / "predict" / "manifest.json")["study_thresholds"]
    found = run_validation(studies, truth, thresholds, "model", ValidateOptions(bootstrap=500))
    about = {"model": "the demo run", "reference": "stage_2_test_labels.csv"}
    about |= {"trained_on": "synthetic phantoms", "version": __version__}
    write_json(out / "validate" / "validation.json", strict({"about": about, **found.result}))
    write_report(found, out / "validate" / "report.html", about)
    return found.result


def _fmt(value: float, spec: str) -> str:
    return "n/a" if value is None or math.isnan(value) else format(value, spec)


def print_demo_table(metrics: dict, console: Console) -> None:
    """Both stages (the model ``predict`` uses) on the held-out fold and the test split, then
    the slice CNN and the series stage side by side on the held-out fold."""
    cnn_metrics, test = metrics, metrics["test"]
    metrics = metrics["sequence"]  # the held-out fold through both stages
    table = Table(
        "label",
        "prevalence",
        "AUC",
        "log loss",
        "test AUC",
        "test log loss",
        title=f"CNN + series stage. Held-out fold: {metrics['images']} slices of unseen "
        f"patients; test split: {test['images']} slices",
    )
    for name in LABELS:
        table.add_row(
            name,
            f"{metrics['prevalence'][name]:.2%}",
            _fmt(metrics["auc"][name], ".3f"),
            _fmt(metrics["log_loss"][name], ".4f"),
            _fmt(test["auc"][name], ".3f"),
            _fmt(test["log_loss"][name], ".4f"),
        )
    console.print(table)
    for title, m in (("held-out fold", metrics), ("test split (submission.csv)", test)):
        loss, prior = m["weighted_log_loss"], m["prior_log_loss"]
        console.print(
            f"{title}: weighted log loss {loss:.4f} vs prior-only baseline "
            f"{prior:.4f} (ratio {loss / prior:.2f}); AUC(any) {m['auc']['any']:.3f}"
        )
    print_stage_table(metrics, console)
    if "segment" in cnn_metrics:
        print_segment_line(cnn_metrics["segment"], cnn_metrics["segment_test"], console)
    timings = cnn_metrics["timings"]
    total = sum(timings.values())
    parts = ", ".join(f"{k} {v:.0f}s" for k, v in timings.items())
    console.print(f"total {total:.0f}s ({parts})")


def print_stage_table(seq: dict, console: Console) -> None:
    """The slice CNN and the series stage on the same held-out images (the sequence run's
    report holds both)."""
    cnn = seq["cnn"]
    table = Table(
        "held-out fold",
        "slice CNN",
        "CNN + series stage",
        title=f"the two stages on the same {seq['images']} held-out slices",
    )
    loss, seq_loss = cnn["weighted_log_loss"], seq["weighted_log_loss"]
    table.add_row(
        "slice weighted log loss", f"{loss:.4f}", f"{seq_loss:.4f} ({seq_loss / loss:.2f}x)"
    )
    for name in LABELS:
        table.add_row(
            f"slice AUC {name}", _fmt(cnn["auc"][name], ".3f"), _fmt(seq["auc"][name], ".3f")
        )
    table.add_row(
        "study AUC(any)",
        _fmt(cnn["study_auc"]["any"], ".3f") + " (max over slices)",
        _fmt(seq["study"]["auc"]["any"], ".3f") + " (study head)",
    )
    console.print(table)


def print_segment_line(fold: dict, test: dict, console: Console) -> None:
    """The segmenter's volume agreement: held-out fold (training's report, every slice) and
    test split (``predict``, masks gated by the detector; ``ichdet evaluate --masks``)."""
    v, t = fold["volume"], test["labels"]["any"]
    tv = t["volume"]
    console.print(
        f"segmenter, held-out fold ({fold['series']} series): Dice(any) "
        f"{_fmt(fold['dice']['any'], '.3f')}, mean over subtypes "
        f"{_fmt(fold['dice']['mean'], '.3f')}, volume CCC {_fmt(v['ccc'], '.3f')}, "
        f"bias {v['bias']:+.2f} mL (95% limits "
        f"{v['lower']:+.1f}..{v['upper']:+.1f}); test split through predict ({test['series']} "
        f"series, {t['series_with_blood']} with blood; {t['false_found']} of the others given "
        f"some): Dice(any) {_fmt(t['dice_pooled'], '.3f')} pooled, HD95 "
        f"{_fmt(t['hd95_median_mm'], '.1f')} mm, volume CCC {_fmt(tv['ccc'], '.3f')}, bias "
        f"{tv['bias']:+.2f} mL (95% limits {tv['lower']:+.1f}..{tv['upper']:+.1f})"
    )
