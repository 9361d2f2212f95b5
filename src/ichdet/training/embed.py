"""Slice embeddings: a trained slice CNN's pooled features (and, with a mask head, each
subtype's largest cell logit: ``ICHNet.embed``) and logits for indexed images.

The series stage trains on these. They are read from the prepared cache (the CNN's own inputs),
optionally averaged with the mirror image (flip TTA), and stored in one ``.npz`` (no pickles):
``ids`` (unicode), ``features`` (float16, N x D), ``logits`` (float32, N x 6) and ``meta`` (JSON:
the CNN checkpoint's digest and the TTA setting, so a stale file is never reused).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from ichdet.data.cache import CacheSettings
from ichdet.data.dataset import SliceDataset
from ichdet.labels import LABELS
from ichdet.models.checkpoint import load_checkpoint
from ichdet.models.registry import model_from_checkpoint
from ichdet.util.atomic import atomic_path
from ichdet.util.digest import file_digest
from ichdet.util.progress import progress_bar

#: what a row of ``features`` holds: 1, the pooled features; 2, then each subtype's largest
#: mask-head logit when the CNN has a mask head (a file of another format is made again)
EMBED_FORMAT = 2


@dataclass
class Embeddings:
    ids: np.ndarray  # (N,) str
    features: np.ndarray  # (N, D) float16
    logits: np.ndarray  # (N, 6) float32
    meta: dict[str, Any]

    def bytes_per_image(self) -> float:
        n = max(len(self.ids), 1)
        return (self.features.nbytes + self.logits.nbytes) / n

    def save(self, path: Path) -> None:
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.savez(
                fh,
                ids=self.ids.astype(str),
                features=self.features,
                logits=self.logits,
                meta=np.array(json.dumps(self.meta)),
            )

    @classmethod
    def load(cls, path: Path) -> Embeddings:
        with np.load(path, allow_pickle=False) as data:
            return cls(data["ids"], data["features"], data["logits"], json.loads(str(data["meta"])))


def embed_frame(
    checkpoint: Path,
    frame: pd.DataFrame,
    cache_dir: Path,
    tta: bool = False,
    batch_size: int = 64,
    device: str = "cpu",
    workers: int = 0,
    log: Callable[[str], None] = print,
) -> Embeddings:
    """Embed the rows of ``frame`` that have a cache entry in ``cache_dir`` with the CNN of
    ``checkpoint``; ``meta`` records the checkpoint digest, TTA and the time taken."""
    ckpt = load_checkpoint(checkpoint)
    if ckpt["kind"] != "slice_cnn":
        raise ValueError(f"{checkpoint}: a {ckpt['kind']} checkpoint, not a slice CNN")
    settings = CacheSettings.from_dict(ckpt["cache_settings"])
    dataset = SliceDataset(frame, cache_dir, context=int(ckpt.get("context", 0)))
    if dataset.settings.size != settings.size or dataset.channels != int(
        ckpt["model_config"]["in_chans"]
    ):
        raise ValueError(f"{cache_dir}: not the cache this CNN was trained on ({checkpoint})")
    model: Any = model_from_checkpoint(ckpt).to(device).to(memory_format=torch.channels_last)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers)
    features, logits = [], []
    started = time.perf_counter()
    with torch.inference_mode(), progress_bar(len(loader), "embed") as advance:
        for x, _ in loader:
            x = x.to(device).float().div_(255).contiguous(memory_format=torch.channels_last)
            f, lg = model.embed(x)
            if tta:
                f2, lg2 = model.embed(torch.flip(x, dims=[3]))
                f, lg = (f + f2) / 2, (lg + lg2) / 2
            features.append(f.half().cpu().numpy())
            logits.append(lg.float().cpu().numpy())
            advance(1)
    seconds = time.perf_counter() - started
    n = len(dataset)
    if dataset.missing:
        log(f"embed: {len(dataset.missing)} image(s) without a cache entry left out")
    return Embeddings(
        ids=dataset.index["image_id"].astype(str).to_numpy(),
        features=np.concatenate(features) if features else np.zeros((0, model.num_features)),
        logits=np.concatenate(logits) if logits else np.zeros((0, len(LABELS)), np.float32),
        meta={
            "cnn": file_digest(checkpoint),
            "format": EMBED_FORMAT,
            "tta": tta,
            "images": n,
            "seconds": seconds,
            "images_per_s": n / seconds if seconds else 0.0,
            "missing": [str(i) for i in dataset.missing],  # no cache entry: not embedded
        },
    )
