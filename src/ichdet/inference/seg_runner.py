"""Trained segmenters at work: a torch checkpoint (or a fold ensemble) or an exported ONNX file.

A runner takes uint8 window stacks (N x C x H x W, as the cache holds them) and returns the
mean sigmoid probabilities N x 5 x H x W (SUBTYPES order).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ichdet.data.cache import CacheSettings
from ichdet.inference.runners import ONNX_META_KEY, InputSpec, _session, short_name
from ichdet.labels import SUBTYPES

KIND = "segmenter"
#: A slice's masks count where the detector's slice probability of any hemorrhage reaches this
#: (chosen on the demo's held-out fold: README, "Segmentation"); 0 keeps every mask.
DEFAULT_GATE = 0.1


class TorchSegmenter:
    """The mean probabilities of one or more segmenter checkpoints."""

    def __init__(
        self,
        checkpoints: list[Path],
        device: str = "auto",
        batch_size: int = 16,
        gate: float = DEFAULT_GATE,
    ):
        import torch

        from ichdet.models.checkpoint import load_checkpoint
        from ichdet.models.registry import model_from_checkpoint

        self.torch = torch
        use_cuda = torch.cuda.is_available() and device in ("auto", "cuda")
        self.device = torch.device("cuda" if use_cuda else "cpu")
        self.batch_size, self.gate = batch_size, gate
        self.models, specs, synthetic = [], [], []
        for path in checkpoints:
            ckpt = load_checkpoint(path)
            if ckpt["kind"] != KIND:
                raise ValueError(f"{path}: a {ckpt['kind']} checkpoint, not a segmenter")
            self.models.append(model_from_checkpoint(ckpt).to(self.device))
            settings = CacheSettings.from_dict(ckpt["cache_settings"])
            specs.append(InputSpec(settings, int(ckpt.get("context", 0))))
            synthetic.append(bool(ckpt.get("training_data", {}).get("synthetic_only")))
        if any(s != specs[0] for s in specs):
            raise ValueError("the segmenters of an ensemble must share size, windows and context")
        self.spec = specs[0]
        self.names = [short_name(p) for p in checkpoints]
        self.synthetic_only = all(synthetic)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        torch = self.torch
        out = []
        with torch.inference_mode():
            for i in range(0, len(batch), self.batch_size):
                x = torch.from_numpy(batch[i : i + self.batch_size]).to(self.device)
                x = x.float().div_(255)
                probs = torch.stack([torch.sigmoid(m(x)) for m in self.models]).mean(0)
                out.append(probs.float().cpu().numpy())
        return _joined(out, self.spec)


class OnnxSegmenter:
    """A segmenter exported by ``ichdet export`` (probabilities out), under ONNX Runtime."""

    def __init__(
        self,
        path: str | os.PathLike,
        batch_size: int = 16,
        threads: int | None = None,
        gate: float = DEFAULT_GATE,
    ):
        try:
            import onnxruntime as ort
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise ImportError("ONNX needs the 'onnx' extra: pip install 'ichdet[onnx]'") from exc
        self.session = _session(ort, path, threads)
        raw = self.session.get_modelmeta().custom_metadata_map.get(ONNX_META_KEY)
        meta = json.loads(raw) if raw else {}
        if meta.get("kind") != KIND:
            raise ValueError(f"{path}: not an exported ichdet segmenter")
        self.spec = InputSpec(CacheSettings.from_dict(meta["cache_settings"]), int(meta["context"]))
        self.input_name = self.session.get_inputs()[0].name
        self.batch_size, self.gate = batch_size, gate
        self.names = [Path(path).name]
        self.synthetic_only = bool(meta.get("synthetic_only"))

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        out = []
        for i in range(0, len(batch), self.batch_size):
            x = batch[i : i + self.batch_size].astype(np.float32) / np.float32(255)
            out.append(self.session.run(None, {self.input_name: x})[0].astype(np.float32))
        return _joined(out, self.spec)


def _joined(parts: list[np.ndarray], spec: Any) -> np.ndarray:
    if parts:
        return np.concatenate(parts)
    size = spec.settings.size
    return np.zeros((0, len(SUBTYPES), size, size), np.float32)


Segmenter = TorchSegmenter | OnnxSegmenter


def load_segmenter(
    models: Sequence[str | os.PathLike],
    device: str = "auto",
    batch_size: int = 16,
    gate: float = DEFAULT_GATE,
) -> Segmenter:
    """``.onnx`` -> OnnxSegmenter; run dirs / checkpoints -> TorchSegmenter (ensembled);
    ``gate``: the detector's slice probability below which a slice's masks are dropped."""
    if not 0 <= gate <= 1:
        raise ValueError(f"the segmentation gate is a probability in [0, 1], not {gate}")
    paths = [Path(m) for m in models]
    if any(p.suffix == ".onnx" for p in paths):
        if len(paths) > 1:
            raise ValueError("give one .onnx segmenter")
        if not paths[0].is_file():
            raise FileNotFoundError(f"{paths[0]}: no such ONNX model")
        return OnnxSegmenter(paths[0], batch_size=batch_size, gate=gate)
    from ichdet.models.checkpoint import find_checkpoints

    return TorchSegmenter(find_checkpoints(paths), device, batch_size, gate)
