"""The slice CNN as a training task: one fold of a timm model on the prepared cache.

Weighted BCE (the metric's label weights), batch augmentation on the training device, and at the
end ``valid_predictions.csv`` (Kaggle long form) and ``thresholds.json`` (per-label operating
thresholds for the target sensitivity). Everything else is the shared loop's.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from ichdet.data.augment import RandomTrainAugment
from ichdet.data.cache import CacheSettings, read_settings
from ichdet.data.dataset import SliceDataset
from ichdet.data.seg_dataset import LabelledMaskDataset
from ichdet.data.windows import parse_windows
from ichdet.evaluation.metrics import (
    evaluate_arrays,
    operating_thresholds,
    per_label_auc,
    to_long,
    weighted_log_loss,
)
from ichdet.labels import LABELS, SUBTYPES, WEIGHT_VECTOR
from ichdet.models.slice_cnn import KIND, ModelConfig, build_model
from ichdet.training.config import TrainConfig
from ichdet.training.distributed import Runtime
from ichdet.training.loop import OnStep, train
from ichdet.util.jsonio import write_json
from ichdet.util.tables import write_frame


def weighted_bce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BCE with the metric's label weights: equals the weighted log loss of sigmoid(logits).

    NaN targets (unknown labels) are masked out; the mean runs over the known cells, weighted.
    A batch with no known label gives a zero loss that still reaches every output.
    """
    known = ~torch.isnan(target)
    w = torch.as_tensor(WEIGHT_VECTOR, device=logits.device).expand_as(target) * known
    per = F.binary_cross_entropy_with_logits(
        logits.float(), torch.where(known, target, 0.0), reduction="none"
    )
    return (per * w).sum() / w.sum().clamp_min(1e-6)


def mask_bce(logits: torch.Tensor, masks: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """The mask head's loss: BCE of each cell's logit against the largest share of blood in
    that cell of the (N x 5 x H x W, 0..1) masks, averaged over the slices whose mask is known."""
    target = F.adaptive_max_pool2d(masks.float(), logits.shape[-2:])
    per = F.binary_cross_entropy_with_logits(logits.float(), target, reduction="none")
    per_slice = per.flatten(1).mean(1)
    return (per_slice * known).sum() / known.sum().clamp_min(1.0)


def split_fold(index: pd.DataFrame, fold: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(training rows, validation rows) of the training split for ``fold``: the images with at
    least one slice label (unknown labels are masked out of the loss and the metrics)."""
    if "fold" not in index:
        raise ValueError("the index has no folds; build it with `ichdet index --folds K`")
    train = index[index["split"] == "train"]
    labelled = train[train[list(LABELS)].notna().any(axis=1)]
    if labelled.empty and len(train):
        raise ValueError(
            "no image of the training split has a slice label; the slice CNN needs some (a "
            "study-labelled set trains the sequence stage over a CNN trained elsewhere)"
        )
    folds = sorted(f for f in labelled["fold"].unique() if f >= 0)
    if fold not in folds:
        raise ValueError(f"fold {fold} not in the index (folds: {folds})")
    return labelled[labelled["fold"] != fold], labelled[labelled["fold"] == fold]


def resolve_cache(cache: str | os.PathLike, size: int, windows: str) -> Path:
    """The cache folder for these settings: ``cache`` itself, or its one matching subfolder."""
    root = Path(cache)
    wanted = [w.name for w in parse_windows(windows)]
    candidates = (
        [root]
        if (root / "settings.json").is_file()
        else sorted(p.parent for p in root.glob("*/settings.json"))
    )
    matches = [p for p in candidates if _cache_matches(read_settings(p), size, wanted)]
    if len(matches) == 1:
        return matches[0]
    found = ", ".join(p.name for p in candidates) or "none"
    raise FileNotFoundError(
        f"{cache}: {'several caches' if matches else 'no cache'} for size {size} and windows "
        f"{','.join(wanted)} (found: {found}); run `ichdet prepare --size {size}` first"
    )


def _cache_matches(settings: CacheSettings, size: int, windows: list[str]) -> bool:
    return settings.size == size and [w.name for w in settings.windows] == windows


def training_data(frame: pd.DataFrame) -> dict[str, Any]:
    """What a model was trained on: image counts, and whether all were ``ichdet synth``
    phantoms (the index's ``synthetic`` column; an index without it counts as real data)."""
    synthetic = int(frame["synthetic"].sum()) if "synthetic" in frame else 0
    return {
        "images": len(frame),
        "synthetic_images": synthetic,
        "synthetic_only": bool(len(frame)) and synthetic == len(frame),
        "slice_spacing_mm": slice_spacing(frame),
    }


def slice_spacing(frame: pd.DataFrame) -> float | None:
    """The median spacing (mm) between neighbouring slices of the training series, from their
    positions; None when positions are unknown. Thin series are read as slabs of it."""
    if not {"z", "series_id"} <= set(frame.columns):
        return None
    steps = frame.sort_values("z").groupby("series_id")["z"].diff().abs()
    steps = steps[steps > 0.01]
    return round(float(steps.median()), 3) if len(steps) else None


#: Images without a cache entry that a run accepts (and reports): at most this many, or share.
MAX_MISSING = 10
MAX_MISSING_SHARE = 0.001


class SliceTask:
    """One fold of the slice CNN (see ``ichdet.training.loop.Task``)."""

    kind = KIND
    resume_keys: tuple[str, ...] = (
        "model",
        "size",
        "context",
        "fold",
        "seed",
        "batch_size",
        "accumulate",
        "windows",
        "mask_loss",
        "mask_stride",
    )
    collate: Callable[[list], Any] | None = None

    def __init__(self, cfg: TrainConfig):
        cfg.require("index", "cache", "out")
        if cfg.all_folds:
            raise ValueError("one fold at a time here; `fit_all` trains every fold")
        self.cfg = cfg
        self.fold = int(cfg.fold)
        self.label = f"fold {self.fold}"
        directory = resolve_cache(str(cfg.cache), cfg.size, cfg.windows)
        self.settings = read_settings(directory)
        train_df, valid_df = split_fold(pd.read_parquet(str(cfg.index)), self.fold)
        self.train_set = (
            LabelledMaskDataset(train_df, directory, context=cfg.context)
            if cfg.mask_loss > 0
            else SliceDataset(train_df, directory, context=cfg.context)
        )
        self.valid_set = SliceDataset(valid_df, directory, context=cfg.context)
        if len(self.train_set) == 0 or len(self.valid_set) == 0:
            raise ValueError(f"fold {self.fold}: no cached training or validation images")
        self.missing = self.train_set.missing + self.valid_set.missing
        total = len(train_df) + len(valid_df)
        if len(self.missing) > max(MAX_MISSING, MAX_MISSING_SHARE * total):
            raise ValueError(
                f"{len(self.missing)} of {total} images of the index have no entry in "
                f"{directory} (first: {', '.join(self.missing[:3])}); run `ichdet prepare` "
                "on this index first"
            )
        self.y_valid = self.valid_set.labels.numpy()
        self.model_config = ModelConfig(
            name=cfg.model,
            in_chans=self.train_set.channels,
            drop_path_rate=cfg.drop_path,
            mask_outputs=len(SUBTYPES) if cfg.mask_loss > 0 else 0,
            mask_stride=cfg.mask_stride,
        )
        self._augment: RandomTrainAugment | None = None

    def build_model(self) -> nn.Module:
        cfg = self.cfg
        return build_model(self.model_config, pretrained=cfg.pretrained, weights=cfg.weights)

    def _augmenter(self, rt: Runtime) -> RandomTrainAugment:
        if self._augment is None:
            self._augment = RandomTrainAugment(self.settings.channels).to(rt.device)
        return self._augment

    def _inputs(self, x: torch.Tensor, rt: Runtime, augment: bool) -> torch.Tensor:
        """uint8 batch -> float in [0, 1] on the device (augmented when training)."""
        x = x.to(rt.device, non_blocking=True).float().div_(255)
        if augment and self.cfg.augment:
            x = self._augmenter(rt)(x)
        return x.contiguous(memory_format=torch.channels_last) if rt.channels_last else x

    def loss(self, model: nn.Module, batch: Any, rt: Runtime) -> tuple[torch.Tensor, int]:
        x, y = batch
        if self.cfg.mask_loss > 0:
            return self._loss_with_masks(model, x, y, rt), len(x)
        x = self._inputs(x, rt, augment=True)
        with rt.autocast():
            logits = model(x)
        return weighted_bce(logits, y.to(rt.device, non_blocking=True)), len(x)

    def _loss_with_masks(self, model: nn.Module, x: torch.Tensor, targets: Any, rt: Runtime):
        """The labels' loss plus ``mask_loss`` x the mask head's, images and masks moved by
        the same flip and affine."""
        y, masks, known = (t.to(rt.device, non_blocking=True) for t in targets)
        x = x.to(rt.device, non_blocking=True).float().div_(255)
        masks = masks.float().div_(255)
        if self.cfg.augment:
            x, masks = self._augmenter(rt).pair(x, masks)
        if rt.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with rt.autocast():
            logits, mask_logits = model(x, masks=True)
        return weighted_bce(logits, y) + self.cfg.mask_loss * mask_bce(mask_logits, masks, known)

    def predict(self, model: nn.Module, batch: Any, rt: Runtime) -> torch.Tensor:
        x = self._inputs(batch[0], rt, augment=False)
        with rt.autocast():
            return torch.sigmoid(model(x).float())

    def score(self, probs: np.ndarray) -> dict[str, float]:
        aucs = per_label_auc(self.y_valid, probs)
        return {
            "valid_loss": weighted_log_loss(self.y_valid, probs),
            **{f"auc_{k}": v for k, v in aucs.items()},
        }

    def checkpoint_meta(self) -> dict[str, Any]:
        return {
            "model_config": self.model_config.to_dict(),
            "cache_settings": self.settings.to_dict(),
            "context": self.cfg.context,
            "training_data": training_data(self.train_set.index),
        }

    def run_details(self) -> dict[str, Any]:
        return {
            "trained_on": training_data(self.train_set.index),
            "train_images": len(self.train_set),
            "valid_images": len(self.valid_set),
            "missing_cache_entries": len(self.missing),
        }

    def report(self, probs: np.ndarray) -> dict[str, Any]:
        report = evaluate_arrays(
            self.y_valid, probs, target_sensitivity=self.cfg.target_sensitivity
        )
        return {**report, "fold": self.fold, "missing_cache_entries": len(self.missing)}

    def write_outputs(self, out: Path, probs: np.ndarray) -> None:
        frame = to_long(self.valid_set.index["image_id"].tolist(), probs)
        write_frame(out / "valid_predictions.csv", frame)
        target = self.cfg.target_sensitivity
        write_json(
            out / "thresholds.json",
            {
                "target_sensitivity": target,
                "source": "validation",
                "labels": operating_thresholds(self.y_valid, probs, target),
            },
        )


def fit(
    cfg: TrainConfig,
    resume: bool = False,
    on_step: OnStep | None = None,
    log: Callable[[str], None] = print,
    force: bool = False,
) -> dict[str, Any]:
    """Train one fold of the slice CNN into ``cfg.out``; returns its metrics (metrics.json)."""
    task = SliceTask(cfg)
    if task.missing:
        log(
            f"warning: {len(task.missing)} image(s) of fold {task.fold}'s data have no cache "
            f"entry and are left out (first: {', '.join(task.missing[:3])})"
        )
    return train(task, cfg, resume=resume, on_step=on_step, log=log, force=force)
