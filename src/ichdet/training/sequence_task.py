"""The series stage as a training task: a sequence model over one fold CNN's slice embeddings.

Fold k's sequence model reads the embeddings of fold k's CNN only: both stages trained on the
other folds, so no validation image was seen by either, and every input comes from one feature
space (five independently trained CNNs do not share one). Loss: the metric's weighted log loss per
slice (unknown labels masked; a study with only study labels gets none: multiple-instance
learning) plus ``study_weight`` x the same loss on the study outputs.

Outputs: ``valid_predictions.csv`` (slices, Kaggle long form), ``valid_studies.csv`` (study_id
+ six probabilities) and ``thresholds.json`` (slice and study operating thresholds).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from ichdet.data.study_labels import study_truth
from ichdet.evaluation.metrics import (
    evaluate_arrays,
    operating_thresholds,
    per_label_auc,
    to_long,
    weighted_log_loss,
)
from ichdet.labels import LABELS
from ichdet.models.checkpoint import find_checkpoints, load_checkpoint
from ichdet.models.sequence import KIND, SequenceConfig, SeriesModel
from ichdet.training.config import SequenceTrainConfig
from ichdet.training.distributed import Runtime, setup_distributed
from ichdet.training.embed import EMBED_FORMAT, Embeddings, embed_frame
from ichdet.training.loop import OnStep, train
from ichdet.training.series_data import SeriesSet, build_series, collate_series
from ichdet.training.slice_task import resolve_cache, training_data, weighted_bce
from ichdet.util.digest import file_digest
from ichdet.util.jsonio import write_json
from ichdet.util.tables import write_frame

EMBEDDINGS = "embeddings.npz"


def cnn_checkpoint(cnn: Path, fold: int) -> Path:
    """The slice CNN checkpoint for ``fold``: ``CNN/fold_<k>`` of a CV run, else the run itself,
    which must have been trained with that fold held out."""
    folder = cnn / f"fold_{fold}" if (cnn / f"fold_{fold}").is_dir() else cnn
    path = find_checkpoints([folder])[0]
    trained = load_checkpoint(path).get("train_config", {}).get("fold")
    if trained != fold:
        raise ValueError(
            f"{path}: this CNN held out fold {trained}, not {fold}; the sequence model of fold "
            f"{fold} needs the CNN of fold {fold} (no validation image may be seen by either stage)"
        )
    return path


def labelled_series(index: pd.DataFrame, truth: pd.DataFrame) -> pd.DataFrame:
    """Rows of the training split whose series has any known slice label or study label."""
    train = index[(index["split"] == "train") & (index["fold"] >= 0)]
    slice_known = train[list(LABELS)].notna().any(axis=1)
    study_known = train["study_id"].map(truth.notna().any(axis=1)).fillna(False).astype(bool)
    keep = (
        (slice_known | study_known)
        .groupby([train["study_id"], train["series_id"]])
        .transform("any")
    )
    return train[keep]


def load_embeddings(
    cfg: SequenceTrainConfig, checkpoint: Path, frame: pd.DataFrame, log: Callable[[str], None]
) -> Embeddings:
    """Embeddings of ``frame`` by ``checkpoint``: reused from ``<fold dir>/embeddings.npz`` when
    made by the same checkpoint with the same TTA and covering every row, else computed (by
    rank 0 under torchrun; the other ranks wait and read the file)."""
    d, device = setup_distributed(cfg.device)
    path = checkpoint.parent / (EMBEDDINGS if not cfg.embed_tta else "embeddings_tta.npz")
    wanted = set(frame["image_id"].astype(str))
    found = _reusable(path, checkpoint, wanted) if d.main else None
    if d.main and found is None:
        ckpt = load_checkpoint(checkpoint)
        size, windows = ckpt["cache_settings"]["size"], ckpt["cache_settings"]["windows"]
        names = ",".join(w["name"] for w in windows)
        cache = resolve_cache(str(cfg.cache), int(size), names)
        found = embed_frame(checkpoint, frame, cache, cfg.embed_tta, device=str(device), log=log)
        found.save(path)
        log(
            f"embeddings: {len(found.ids)} images at {found.meta['images_per_s']:.0f} img/s, "
            f"{found.bytes_per_image():.0f} bytes each -> {path}"
        )
    d.barrier()
    if found is None:  # another rank: read what rank 0 wrote
        found = _reusable(path, checkpoint, wanted)
        if found is None:
            raise ValueError(f"{path}: the embeddings do not cover this fold's images")
    log(f"embeddings: {len(found.ids)} images from {path}")
    return found


def _reusable(path: Path, checkpoint: Path, wanted: set[str]) -> Embeddings | None:
    """The embeddings at ``path`` when ``checkpoint`` made them and they cover ``wanted``."""
    if not path.is_file():
        return None
    found = Embeddings.load(path)
    same = found.meta.get("cnn") == file_digest(checkpoint)
    same = same and found.meta.get("format", 1) == EMBED_FORMAT
    covered = set(found.ids.tolist()) | set(found.meta.get("missing", []))
    return found if same and wanted <= covered else None


def reverse_padded(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Each row's real slices in reverse order (padding stays at the end)."""
    n = x.shape[1]
    lengths = mask.sum(1, keepdim=True)
    pos = torch.arange(n, device=x.device)[None, :].expand(len(x), n)
    idx = torch.where(pos < lengths, lengths - 1 - pos, pos)
    return torch.gather(x, 1, idx.view(*idx.shape, *([1] * (x.dim() - 2))).expand_as(x))


class SequenceTask:
    """One fold of the series stage (see ``ichdet.training.loop.Task``)."""

    kind = KIND
    resume_keys = ("fold", "seed", "batch_size", "accumulate", "arch", "hidden", "layers")
    collate = staticmethod(collate_series)

    def __init__(self, cfg: SequenceTrainConfig, log: Callable[[str], None] = print):
        cfg.require("cnn", "index", "cache", "out")
        self.cfg, self.fold = cfg, int(cfg.fold)
        self.label = f"sequence fold {self.fold}"
        self.checkpoint = cnn_checkpoint(Path(str(cfg.cnn)), self.fold)
        index = pd.read_parquet(str(cfg.index))
        truth = study_truth(index)
        frame = labelled_series(index, truth)
        if frame.empty:
            raise ValueError("no labelled series in the training split (slice or study labels)")
        emb = load_embeddings(cfg, self.checkpoint, frame, log)
        self.embeddings = emb
        train_df, valid_df = frame[frame["fold"] != self.fold], frame[frame["fold"] == self.fold]
        self.training_data = training_data(train_df)
        series = {
            "train": build_series(train_df, emb.ids, truth),
            "valid": build_series(valid_df, emb.ids, truth),
        }
        if not series["train"] or not series["valid"]:
            raise ValueError(f"fold {self.fold}: no embedded training or validation series")
        self.train_set = SeriesSet(
            series["train"], emb.features, emb.logits, True, cfg.subsample, cfg.reverse
        )
        self.valid_set = SeriesSet(series["valid"], emb.features, emb.logits)
        self.model_config = SequenceConfig(
            arch=cfg.arch,
            in_features=int(emb.features.shape[1]),
            hidden=cfg.hidden,
            layers=cfg.layers,
            dropout=cfg.dropout,
            heads=cfg.heads,
        )
        valid = self.valid_set.series
        self.valid_ids = [i for s in valid for i in s.image_ids]
        self.valid_y = np.concatenate([s.labels for s in valid])
        self.valid_cnn = 1 / (1 + np.exp(-np.concatenate([emb.logits[s.rows] for s in valid])))
        self.studies = pd.Index(dict.fromkeys(s.study_id for s in valid), name="study_id")
        self.study_y = truth.loc[self.studies].to_numpy(dtype=np.float64)

    def build_model(self) -> nn.Module:
        return SeriesModel(self.model_config)

    def _forward(
        self, model: nn.Module, batch: dict, rt: Runtime
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        b = {k: v.to(rt.device, non_blocking=True) for k, v in batch.items()}
        with rt.autocast():
            slices, study = model(b["features"], b["logits"], b["z"], b["mask"])
        return slices.float(), study.float(), b

    def loss(self, model: nn.Module, batch: Any, rt: Runtime) -> tuple[torch.Tensor, int]:
        slices, study, b = self._forward(model, batch, rt)
        mask = b["mask"]
        slice_loss = weighted_bce(slices[mask], b["labels"][mask])
        study_loss = weighted_bce(study, b["study_labels"])
        return slice_loss + self.cfg.study_weight * study_loss, len(study)

    def predict(self, model: nn.Module, batch: Any, rt: Runtime) -> torch.Tensor:
        """Per series: [study 6, slices padded to the set's longest x 6] probabilities,
        averaged with the reversed series when the run reverses (TTA)."""
        slices, study, b = self._forward(model, batch, rt)
        if self.cfg.reverse:
            flipped = {**batch, **{k: reverse_padded(batch[k], batch["mask"]) for k in _SEQ}}
            r_slices, r_study, _ = self._forward(model, flipped, rt)
            slices = (slices + reverse_padded(r_slices, b["mask"])) / 2
            study = (study + r_study) / 2
        out = torch.full((len(study), self.valid_set.max_len, len(LABELS)), float("nan"))
        out[:, : slices.shape[1]] = torch.sigmoid(slices).cpu()
        return torch.cat([torch.sigmoid(study).cpu(), out.flatten(1)], dim=1)

    def unpack(self, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Predict's rows -> (slice probabilities in valid_ids order, study probabilities)."""
        per = probs[:, len(LABELS) :].reshape(len(probs), -1, len(LABELS))
        lengths = [len(s.rows) for s in self.valid_set.series]
        slices = np.concatenate([per[i, :n] for i, n in enumerate(lengths)])
        keys = [s.study_id for s in self.valid_set.series]
        study = pd.DataFrame(probs[:, : len(LABELS)], index=keys).groupby(level=0).max()
        return slices, study.loc[self.studies].to_numpy()

    def score(self, probs: np.ndarray) -> dict[str, float]:
        slices, study = self.unpack(probs)
        slice_loss = weighted_log_loss(self.valid_y, slices)
        study_loss = weighted_log_loss(self.study_y, study)
        return {
            "valid_loss": study_loss if np.isnan(slice_loss) else slice_loss,
            "study_loss": study_loss,
            **{f"auc_{k}": v for k, v in per_label_auc(self.valid_y, slices).items()},
            "study_auc_any": per_label_auc(self.study_y, study)["any"],
        }

    def checkpoint_meta(self) -> dict[str, Any]:
        return {
            "model_config": self.model_config.to_dict(),
            "cnn": {"digest": file_digest(self.checkpoint), "tta": self.cfg.embed_tta},
            "reverse_tta": self.cfg.reverse,
            "training_data": self.training_data,
        }

    def run_details(self) -> dict[str, Any]:
        emb = self.embeddings
        return {
            "trained_on": self.training_data,
            "train_series": len(self.train_set),
            "valid_series": len(self.valid_set),
            "embedding": {
                "features": int(emb.features.shape[1]),
                "bytes_per_image": emb.bytes_per_image(),
            },
        }

    def report(self, probs: np.ndarray) -> dict[str, Any]:
        slices, study = self.unpack(probs)
        target = self.cfg.target_sensitivity
        cnn_study = pd.DataFrame(self.valid_cnn, index=self._study_of_slices()).groupby(level=0)
        cnn_study_p = cnn_study.max().loc[self.studies].to_numpy()
        main = evaluate_arrays(self.valid_y, slices, target_sensitivity=target)
        return {
            **main,
            "study": evaluate_arrays(self.study_y, study, target_sensitivity=target),
            "cnn": {
                "weighted_log_loss": weighted_log_loss(self.valid_y, self.valid_cnn),
                "auc": per_label_auc(self.valid_y, self.valid_cnn),
                "study_auc": per_label_auc(self.study_y, cnn_study_p),
            },
            "fold": self.fold,
        }

    def _study_of_slices(self) -> list[str]:
        return [s.study_id for s in self.valid_set.series for _ in s.rows]

    def write_outputs(self, out: Path, probs: np.ndarray) -> None:
        slices, study = self.unpack(probs)
        write_frame(out / "valid_predictions.csv", to_long(self.valid_ids, slices))
        studies = pd.DataFrame(study, columns=list(LABELS), index=self.studies).reset_index()
        write_frame(out / "valid_studies.csv", studies)
        target = self.cfg.target_sensitivity
        write_json(
            out / "thresholds.json",
            {
                "target_sensitivity": target,
                "source": "validation",
                "labels": operating_thresholds(self.valid_y, slices, target),
                "study_labels": operating_thresholds(self.study_y, study, target),
            },
        )


#: The per-slice inputs of a batch (reversed together for TTA).
_SEQ = ("features", "logits", "z")


def fit_sequence(
    cfg: SequenceTrainConfig,
    resume: bool = False,
    on_step: OnStep | None = None,
    log: Callable[[str], None] = print,
    force: bool = False,
) -> dict[str, Any]:
    """Train one fold of the series stage into ``cfg.out``; returns its metrics."""
    task = SequenceTask(cfg, log=log)
    return train(task, cfg, resume=resume, on_step=on_step, log=log, force=force)
