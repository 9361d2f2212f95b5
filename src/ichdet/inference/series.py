"""The series stage at inference: sequence models over each series' slice embeddings.

A run with a series stage holds its sequence models beside the CNN: ``RUN/sequence/`` for a
one-fold run (``RUN/best.pt`` <-> ``RUN/sequence/best.pt``) and ``RUN/sequence/fold_k/`` for
the folds of a CV run (``RUN/fold_k/best.pt`` <-> ``RUN/sequence/fold_k/best.pt``). Each pair
runs together (fold k's sequence model reads fold k's CNN's embeddings) and the pairs' outputs
are averaged. A sequence checkpoint records the digest of the CNN checkpoint it was trained on;
a retrained CNN makes it stale, which is an error, not a silent mismatch.

This module imports no torch at load time (the ONNX path runs without it).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ichdet.labels import LABELS
from ichdet.util.digest import file_digest, files_digest


@dataclass
class SliceOutputs:
    """A batch through the CNN(s): probabilities, and per model what the series stage reads."""

    probs: np.ndarray  # (N, 6), averaged over the models
    features: np.ndarray  # (K, N, D) float16
    logits: np.ndarray  # (K, N, 6) float32


class SeriesStage(Protocol):
    slice_thresholds: dict[str, float]  #: per-label thresholds of the stage's slice outputs
    study_thresholds: dict[str, float]  #: per-label thresholds of its study outputs
    embed_tta: bool  #: the CNN embeddings are averaged with the mirror image
    names: list[str]

    def __call__(
        self, features: np.ndarray, logits: np.ndarray, z: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """One series (K x L x D, K x L x 6, L) -> (slice probabilities L x 6, study 6)."""
        ...


def sequence_folder(cnn_checkpoint: Path) -> Path:
    """Where the series stage of a CNN checkpoint lives (see the module docstring)."""
    folder = cnn_checkpoint.parent
    if folder.name.startswith("fold_"):
        return folder.parent / "sequence" / folder.name
    return folder / "sequence"


def sequence_checkpoints(cnn_checkpoints: list[Path]) -> list[Path] | None:
    """The sequence checkpoint paired with each CNN checkpoint, or None when the run has no
    series stage; a stage that covers only some of the models is an error."""
    found = []
    for cnn in cnn_checkpoints:
        folder = sequence_folder(cnn)
        best, last = folder / "best.pt", folder / "last.pt"
        found.append(best if best.is_file() else last if last.is_file() else None)
    if all(f is None for f in found):
        return None
    missing = [str(c) for c, f in zip(cnn_checkpoints, found, strict=True) if f is None]
    if missing:
        raise ValueError(f"no sequence model for {', '.join(missing)}; train it or leave it out")
    return [f for f in found if f is not None]


def read_thresholds(folder: Path, key: str = "labels") -> dict[str, float] | None:
    path = folder / "thresholds.json"
    if not path.is_file():
        return None
    data = json.loads(path.read_text()).get(key)
    return {k: float(v["threshold"]) for k, v in data.items()} if data else None


def stage_thresholds(checkpoints: list[Path], key: str = "labels") -> dict[str, float]:
    """The operating thresholds (``key`` of thresholds.json) that belong to these checkpoints.

    An ensemble of the folds of one CV run uses the run's out-of-fold thresholds (RUN/), not
    one fold's; else a checkpoint's own run's, else the run above its fold; 0.5 where none
    were written.
    """
    folders = [checkpoints[0].parent, checkpoints[0].parent.parent]
    if len(checkpoints) > 1 and len({p.parent.parent for p in checkpoints}) == 1:
        folders.insert(0, checkpoints[0].parent.parent)
    for folder in folders:
        found = read_thresholds(folder, key)
        if found is not None:
            return found
    return dict.fromkeys(LABELS, 0.5)


class TorchSeries:
    """Sequence checkpoints (one per CNN of the ensemble), checked against their CNNs."""

    def __init__(self, checkpoints: list[Path], cnn_checkpoints: list[Path], device: Any):
        import torch

        from ichdet.models.checkpoint import load_checkpoint
        from ichdet.models.registry import model_from_checkpoint

        self.torch, self.device = torch, device
        self.models, settings = [], set()
        for path, cnn in zip(checkpoints, cnn_checkpoints, strict=True):
            ckpt = load_checkpoint(path)
            if ckpt["kind"] != "sequence":
                raise ValueError(f"{path}: a {ckpt['kind']} checkpoint, not a sequence model")
            if ckpt["cnn"]["digest"] != file_digest(cnn):
                raise ValueError(
                    f"{path}: trained on another version of {cnn}; retrain the series stage "
                    "(ichdet train --task sequence) or remove it"
                )
            self.models.append(model_from_checkpoint(ckpt).to(device))
            settings.add((bool(ckpt["cnn"]["tta"]), bool(ckpt.get("reverse_tta", False))))
        if len(settings) > 1:
            raise ValueError("the sequence models of an ensemble must share their TTA settings")
        self.embed_tta, self.reverse = settings.pop()
        self.slice_thresholds = stage_thresholds(checkpoints, "labels")
        self.study_thresholds = stage_thresholds(checkpoints, "study_labels")
        self.names = [f"sequence/{p.parent.name}/{p.name}" for p in checkpoints]
        self.digest = files_digest(checkpoints)  #: the stage's identity (Ray parts record it)

    def __call__(
        self, features: np.ndarray, logits: np.ndarray, z: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        torch = self.torch
        f = torch.from_numpy(np.asarray(features)).to(self.device).float()
        lg = torch.from_numpy(np.asarray(logits)).to(self.device).float()
        zz = torch.from_numpy(np.asarray(z, dtype=np.float32)).to(self.device)[None]
        slices, studies = [], []
        with torch.inference_mode():
            for k, model in enumerate(self.models):
                views = [(f[k : k + 1], lg[k : k + 1], zz, False)]
                if self.reverse:
                    views.append((f[k : k + 1].flip(1), lg[k : k + 1].flip(1), zz.flip(1), True))
                for ff, ll, z_view, flipped in views:
                    s, st = model(ff, ll, z_view)
                    s = torch.sigmoid(s[0])
                    slices.append(s.flip(0) if flipped else s)
                    studies.append(torch.sigmoid(st[0]))
        return (
            torch.stack(slices).mean(0).cpu().numpy(),
            torch.stack(studies).mean(0).cpu().numpy(),
        )


class OnnxSeries:
    """The exported series stage (``<model>.sequence.onnx``) under ONNX Runtime."""

    def __init__(self, session: Any, meta: dict[str, Any], name: str):
        self.session = session
        self.embed_tta = bool(meta["embed_tta"])
        self.slice_thresholds = meta["slice_thresholds"]
        self.study_thresholds = meta["study_thresholds"]
        self.names = [name]
        self.digest = str(meta.get("digest", ""))  #: the exported stage file's digest

    def __call__(
        self, features: np.ndarray, logits: np.ndarray, z: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        slices, study = self.session.run(
            None,
            {
                "features": np.asarray(features, dtype=np.float32),
                "logits": np.asarray(logits, dtype=np.float32),
                "z": np.asarray(z, dtype=np.float32),
            },
        )
        return slices, study
