"""The segmenter as a training task: one fold of a U-Net on the cache and the index's masks.

Loss: BCE on soft (area-averaged) targets + Dice (segmentation_models_pytorch's multi-label
Dice, which leaves out a subtype absent from the batch). Training reads every slice with blood
and ``negatives`` times as many empty ones (drawn once, seeded); validation reads every slice of
the fold's known series, so whole studies are measured: Dice per subtype (pooled over the fold)
and the study volumes against the truth (CCC, Bland-Altman). The best epoch is the one with the
highest mean Dice over the subtypes the fold has (``valid_loss`` = 1 - that mean): pooled over
pixels, subdural blood would outweigh the rest. Slices of rare subtypes are repeated in
training (``balance``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from ichdet.data.cache import read_settings
from ichdet.data.seg_dataset import SegmentDataset, known_masks
from ichdet.evaluation.seg_volumes import fold_measures
from ichdet.labels import SUBTYPES
from ichdet.models.segmenter import KIND, SegmenterConfig, build_segmenter
from ichdet.training.config import SegmentTrainConfig
from ichdet.training.distributed import Runtime
from ichdet.training.loop import OnStep, train
from ichdet.training.slice_task import SliceTask, resolve_cache, training_data
from ichdet.util.jsonio import write_json
from ichdet.util.tables import write_frame


def balanced(blood: pd.DataFrame, cap: float) -> pd.DataFrame:
    """Slices with blood, each repeated by how rare its rarest subtype is (the most common
    subtype's slice count over that subtype's, at most ``cap`` times; 1: no repeats)."""
    present = blood.reindex(columns=list(SUBTYPES)).fillna(0).to_numpy() > 0
    counts = present.sum(axis=0)
    if cap <= 1 or not counts.any():
        return blood
    ratio = np.where(counts > 0, counts.max() / np.maximum(counts, 1), 1.0)
    repeats = np.ones(len(blood), dtype=np.int64)
    for k in range(len(SUBTYPES)):
        factor = int(min(cap, round(float(ratio[k]))))
        repeats[present[:, k]] = np.maximum(repeats[present[:, k]], factor)
    return blood.loc[blood.index.repeat(repeats)]


def split_known(index: pd.DataFrame, fold: int, cfg: SegmentTrainConfig):
    """(training rows: blood, rare subtypes repeated, + sampled empty slices; validation rows:
    the fold's known slices)."""
    if "fold" not in index:
        raise ValueError("the index has no folds; build it with `ichdet index --folds K`")
    known = known_masks(index[index["split"] == "train"])
    folds = sorted(f for f in known["fold"].unique() if f >= 0)
    if fold not in folds:
        raise ValueError(f"fold {fold} has no known masks (folds with masks: {folds})")
    train, valid = known[known["fold"] != fold], known[known["fold"] == fold]
    blood = train[train["mask"].fillna("") != ""]
    empty = train[train["mask"].fillna("") == ""]
    take = min(len(empty), int(round(cfg.negatives * len(blood))))
    sampled = empty.sample(n=take, random_state=cfg.seed) if take else empty.iloc[:0]
    return pd.concat([balanced(blood, cfg.balance), sampled]).sort_index(), valid


def per_slice_counts(pred: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    """Boolean N x 5 x H x W masks -> N x 18 pixel counts (``seg_volumes.COUNTS``: predicted,
    true, overlapping; each for the 5 subtypes and their union)."""
    p = torch.cat([pred, pred.any(1, keepdim=True)], 1)
    t = torch.cat([true, true.any(1, keepdim=True)], 1)
    sums = [m.flatten(2).sum(-1) for m in (p, t, p & t)]
    return torch.cat(sums, 1).float()


class SegmentTask(SliceTask):
    """One fold of the segmenter (see ``ichdet.training.loop.Task``)."""

    kind = KIND
    resume_keys = (*SliceTask.resume_keys, "decoder", "negatives", "balance")
    cfg: SegmentTrainConfig

    def __init__(self, cfg: SegmentTrainConfig):
        cfg.require("index", "cache", "out")
        if cfg.all_folds:
            raise ValueError("one fold at a time here; `fit_all` trains every fold")
        if cfg.weights:
            raise ValueError("the segmenter starts from --pretrained (timm's weights) or none")
        self.cfg = cfg
        self.fold = int(cfg.fold)
        self.label = f"segmenter fold {self.fold}"
        directory = resolve_cache(str(cfg.cache), cfg.size, cfg.windows)
        self.settings = read_settings(directory)
        train_df, valid_df = split_known(pd.read_parquet(str(cfg.index)), self.fold, cfg)
        self.train_set = SegmentDataset(train_df, directory, context=cfg.context)
        self.valid_set = SegmentDataset(valid_df, directory, context=cfg.context)
        if len(self.train_set) == 0 or len(self.valid_set) == 0:
            raise ValueError(f"fold {self.fold}: no cached training or validation images")
        self.missing = self.train_set.missing + self.valid_set.missing
        self.seg_config = SegmenterConfig(
            name=cfg.model, in_chans=self.train_set.channels, arch=cfg.decoder
        )
        self._augment = None
        self._dice: nn.Module | None = None
        self.truth: pd.DataFrame | None = None

    def build_model(self) -> nn.Module:
        return build_segmenter(self.seg_config, pretrained=self.cfg.pretrained)

    def loss(self, model: nn.Module, batch: Any, rt: Runtime) -> tuple[torch.Tensor, int]:
        x, y = batch
        x = self._inputs(x, rt, augment=False)
        y = y.to(rt.device, non_blocking=True).float().div_(255)
        if self.cfg.augment:
            x, y = self._augmenter(rt).pair(x, y)
        with rt.autocast():
            logits = model(x)
        logits = logits.float()
        if self._dice is None:
            import segmentation_models_pytorch as smp

            self._dice = smp.losses.DiceLoss("multilabel", from_logits=True)
        bce = F.binary_cross_entropy_with_logits(logits, y)
        return bce + self.cfg.dice_weight * self._dice(logits, y), len(x)

    def _augmenter(self, rt: Runtime) -> Any:
        from ichdet.data.augment import RandomTrainAugment

        if self._augment is None:
            self._augment = RandomTrainAugment(self.settings.channels).to(rt.device)
        return self._augment

    def predict(self, model: nn.Module, batch: Any, rt: Runtime) -> torch.Tensor:
        x, y = batch
        x = self._inputs(x, rt, augment=False)
        with rt.autocast():
            probs = torch.sigmoid(model(x).float())
        return per_slice_counts(probs >= 0.5, y.to(rt.device) >= 128)

    def _truth(self) -> pd.DataFrame:
        if self.truth is None:
            from ichdet.evaluation.seg_volumes import true_volumes

            self.truth = true_volumes(self.valid_set.index)
        return self.truth

    def score(self, probs: np.ndarray) -> dict[str, float]:
        measures = fold_measures(self.valid_set.index, probs, self.settings.size, self._truth())
        dice = measures["dice"]["mean"]
        return {
            "valid_loss": 1.0 - (dice if dice == dice else 0.0),
            **{f"dice_{k}": v for k, v in measures["dice"].items()},
            "volume_ccc": measures["volume"]["ccc"],
        }

    def report(self, probs: np.ndarray) -> dict[str, Any]:
        measures = fold_measures(self.valid_set.index, probs, self.settings.size, self._truth())
        return {**measures, "fold": self.fold, "missing_cache_entries": len(self.missing)}

    def checkpoint_meta(self) -> dict[str, Any]:
        return {
            "model_config": self.seg_config.to_dict(),
            "cache_settings": self.settings.to_dict(),
            "context": self.cfg.context,
            "training_data": training_data(self.train_set.index),
        }

    def write_outputs(self, out: Path, probs: np.ndarray) -> None:
        from ichdet.evaluation.seg_volumes import study_volume_table

        table = study_volume_table(self.valid_set.index, probs, self.settings.size, self._truth())
        write_frame(out / "valid_volumes.csv", table)
        write_json(out / "subtypes.json", {"subtypes": list(SUBTYPES)})


def fit_segment(
    cfg: SegmentTrainConfig,
    resume: bool = False,
    on_step: OnStep | None = None,
    log: Callable[[str], None] = print,
    force: bool = False,
) -> dict[str, Any]:
    """Train one fold of the segmenter into ``cfg.out``; returns its metrics (metrics.json)."""
    task = SegmentTask(cfg)
    if task.missing:
        log(f"warning: {len(task.missing)} image(s) have no cache entry and are left out")
    return train(task, cfg, resume=resume, on_step=on_step, log=log, force=force)
