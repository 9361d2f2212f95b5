"""Model runners for inference: torch checkpoints (one or an ensemble) and ONNX Runtime.

A runner maps a uint8 batch (N x C x H x W numpy) to probabilities (N x 6 float32 numpy) and
carries the preprocessing settings the model was trained with. The ONNX runner imports no
torch, so predicting with an ``.onnx`` model starts fast.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from ichdet.data.cache import CacheSettings
from ichdet.labels import LABELS

if TYPE_CHECKING:
    from torch import nn

ONNX_META_KEY = "ichdet"


@dataclass
class InputSpec:
    """What a model expects: the cache settings it trained on and its neighbour context."""

    settings: CacheSettings
    context: int

    @property
    def channels(self) -> int:
        return self.settings.channels * (2 * self.context + 1)


class Runner(Protocol):
    """What ``predict`` and the reports need of a model, whatever runs it."""

    spec: InputSpec  #: the inputs the model expects
    thresholds: dict[str, float]  #: per-label operating thresholds
    names: list[str]  #: the model files, for the record

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """uint8 N x C x H x W -> float32 N x 6 probabilities."""
        ...

    def heatmap_model(self) -> nn.Module | None:
        """A torch model to take gradients of for heat maps, or None (ONNX has none)."""
        ...


def default_thresholds() -> dict[str, float]:
    return dict.fromkeys(LABELS, 0.5)


def _read_thresholds(folder: Path) -> dict[str, float] | None:
    path = folder / "thresholds.json"
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    return {k: float(v["threshold"]) for k, v in data["labels"].items()}


def run_thresholds(checkpoints: list[Path]) -> dict[str, float] | None:
    """The operating thresholds that belong to these checkpoints.

    An ensemble of the folds of one CV run uses the run's out-of-fold thresholds (RUN/), not
    one fold's; a single checkpoint uses its own run's, else the run above its fold.
    """
    if len(checkpoints) > 1:
        runs = {p.parent.parent for p in checkpoints}
        if len(runs) == 1 and (found := _read_thresholds(runs.pop())) is not None:
            return found
    first = checkpoints[0]
    return _read_thresholds(first.parent) or _read_thresholds(first.parent.parent)


def short_name(checkpoint: Path) -> str:
    """``fold_0/best.pt``: enough to tell the models apart, no local absolute path."""
    return f"{checkpoint.parent.name}/{checkpoint.name}"


class TorchRunner:
    """Average of the sigmoid outputs of one or more ichdet checkpoints (a fold ensemble)."""

    def __init__(
        self, checkpoints: list[Path], device: str = "auto", tta: bool = False, batch_size: int = 32
    ):
        import torch

        from ichdet.models.checkpoint import load_checkpoint
        from ichdet.models.registry import model_from_checkpoint

        self.torch = torch
        use_cuda = torch.cuda.is_available() and device in ("auto", "cuda")
        self.device = torch.device("cuda" if use_cuda else "cpu")
        self.tta, self.batch_size = tta, batch_size
        self.models: list[nn.Module] = []
        specs = []
        for path in checkpoints:
            ckpt = load_checkpoint(path)
            if ckpt["kind"] != "slice_cnn":
                raise ValueError(
                    f"{path}: a {ckpt['kind']} checkpoint; this runner takes slice CNNs"
                )
            self.models.append(model_from_checkpoint(ckpt).to(self.device))
            specs.append(
                InputSpec(
                    CacheSettings.from_dict(ckpt["cache_settings"]), int(ckpt.get("context", 0))
                )
            )
        if any(s != specs[0] for s in specs):
            raise ValueError("the models of an ensemble must share size, windows and context")
        self.spec = specs[0]
        paths = [Path(p) for p in checkpoints]
        self.thresholds = run_thresholds(paths) or default_thresholds()
        self.names = [short_name(p) for p in paths]

    def heatmap_model(self) -> nn.Module | None:
        return self.models[0]

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        torch = self.torch
        out = []
        with torch.inference_mode():
            for i in range(0, len(batch), self.batch_size):
                x = torch.from_numpy(batch[i : i + self.batch_size]).to(self.device)
                x = x.float().div_(255)
                views = [x, torch.flip(x, dims=[3])] if self.tta else [x]
                probs = [torch.sigmoid(m(v)) for m in self.models for v in views]
                out.append(torch.stack(probs).mean(0).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, len(LABELS)), np.float32)


class OnnxRunner:
    """An exported ichdet model (probabilities out) under ONNX Runtime, without torch."""

    def __init__(
        self,
        path: str | os.PathLike,
        tta: bool = False,
        batch_size: int = 32,
        threads: int | None = None,
    ):
        try:
            import onnxruntime as ort
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise ImportError(
                "ONNX inference needs the 'onnx' extra: pip install 'ichdet[onnx]'"
            ) from exc
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(
                os.fspath(path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own types
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise ValueError(f"{path}: not a loadable ONNX model ({reason})") from None
        raw = self.session.get_modelmeta().custom_metadata_map.get(ONNX_META_KEY)
        if raw is None:
            raise ValueError(f"{path}: not an ichdet model (no '{ONNX_META_KEY}' metadata)")
        meta = json.loads(raw)
        self.spec = InputSpec(CacheSettings.from_dict(meta["cache_settings"]), int(meta["context"]))
        self.thresholds = meta.get("thresholds") or default_thresholds()
        self.input_name = self.session.get_inputs()[0].name
        self.tta, self.batch_size = tta, batch_size
        self.names = [Path(path).name]

    def heatmap_model(self) -> nn.Module | None:
        return None  # no gradients in an ONNX Runtime session

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        out = []
        for i in range(0, len(batch), self.batch_size):
            x = batch[i : i + self.batch_size].astype(np.float32) / np.float32(255)
            views = [x, np.ascontiguousarray(x[..., ::-1])] if self.tta else [x]
            probs = [self.session.run(None, {self.input_name: v})[0] for v in views]
            out.append(np.mean(probs, axis=0).astype(np.float32))
        return np.concatenate(out) if out else np.zeros((0, len(LABELS)), np.float32)


def load_runner(
    models: Sequence[str | os.PathLike],
    device: str = "auto",
    tta: bool = False,
    batch_size: int = 32,
) -> Runner:
    """``.onnx`` -> OnnxRunner; run dirs / checkpoints -> TorchRunner (ensembled)."""
    paths = [Path(m) for m in models]
    onnx = [p for p in paths if p.suffix == ".onnx"]
    if onnx:
        if len(paths) > 1:
            raise ValueError("give one .onnx model (export an ensemble as one file)")
        if not onnx[0].is_file():
            raise FileNotFoundError(f"{onnx[0]}: no such ONNX model")
        return OnnxRunner(onnx[0], tta=tta, batch_size=batch_size)
    from ichdet.models.checkpoint import find_checkpoints

    return TorchRunner(find_checkpoints(paths), device=device, tta=tta, batch_size=batch_size)
