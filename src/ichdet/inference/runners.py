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
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from ichdet.data.cache import CacheSettings
from ichdet.inference.series import (
    OnnxSeries,
    SeriesStage,
    SliceOutputs,
    TorchSeries,
    sequence_checkpoints,
    stage_thresholds,
)
from ichdet.labels import LABELS
from ichdet.selection.choose import DEFAULT_TRAINING_MM
from ichdet.util.digest import file_digest, files_digest

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
    thresholds: dict[str, float]  #: per-label operating thresholds of the slice outputs
    study_thresholds: dict[str, float]  #: ... of the study outputs
    names: list[str]  #: the model files, for the record
    series: SeriesStage | None  #: the series stage, when the run has one
    synthetic_only: bool  #: every model was trained on ``ichdet synth`` phantoms only
    digest: str  #: the model files' identity (a site's thresholds belong to one model)
    slice_spacing: float  #: the slice spacing (mm) of the training data (thin series -> slabs)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """uint8 N x C x H x W -> float32 N x 6 probabilities."""
        ...

    def embed(self, batch: np.ndarray) -> SliceOutputs:
        """The CNN probabilities and, per model, the embeddings the series stage reads."""
        ...

    def heatmap_model(self) -> nn.Module | None:
        """A torch model to take gradients of for heat maps, or None (ONNX has none)."""
        ...


def training_spacing(values: Sequence[Any]) -> float:
    """The models' recorded training spacing (their median); RSNA's 5 mm for models that
    recorded none."""
    known = [float(v) for v in values if isinstance(v, int | float) and v > 0]
    return float(np.median(known)) if known else DEFAULT_TRAINING_MM


def default_thresholds() -> dict[str, float]:
    return dict.fromkeys(LABELS, 0.5)


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
        specs, synthetic, spacings = [], [], []
        for path in checkpoints:
            ckpt = load_checkpoint(path)
            if ckpt["kind"] != "slice_cnn":
                raise ValueError(
                    f"{path}: a {ckpt['kind']} checkpoint; this runner takes slice CNNs"
                )
            model = model_from_checkpoint(ckpt).to(self.device)
            # NHWC: the faster convolutions of oneDNN and cuDNN (1.6x on 2 CPU cores)
            self.models.append(model.to(memory_format=torch.channels_last))
            synthetic.append(bool(ckpt.get("training_data", {}).get("synthetic_only")))
            spacings.append(ckpt.get("training_data", {}).get("slice_spacing_mm"))
            specs.append(
                InputSpec(
                    CacheSettings.from_dict(ckpt["cache_settings"]), int(ckpt.get("context", 0))
                )
            )
        if any(s != specs[0] for s in specs):
            raise ValueError("the models of an ensemble must share size, windows and context")
        self.spec = specs[0]
        paths = [Path(p) for p in checkpoints]
        self.thresholds = stage_thresholds(paths)
        self.names = [short_name(p) for p in paths]
        self.synthetic_only = all(synthetic)
        self.digest = files_digest(checkpoints)
        self.slice_spacing = training_spacing(spacings)
        found = sequence_checkpoints(paths)
        self.series: SeriesStage | None = None
        if found is not None:
            self.series = TorchSeries(found, paths, self.device)
            self.thresholds = self.series.slice_thresholds
            self.names += self.series.names
        self.study_thresholds = self.series.study_thresholds if self.series else self.thresholds

    def heatmap_model(self) -> nn.Module | None:
        return self.models[0]

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        torch = self.torch
        out = []
        with torch.inference_mode():
            for i in range(0, len(batch), self.batch_size):
                x = torch.from_numpy(batch[i : i + self.batch_size]).to(self.device)
                x = x.float().div_(255).contiguous(memory_format=torch.channels_last)
                views = [x, torch.flip(x, dims=[3])] if self.tta else [x]
                probs = [torch.sigmoid(m(v)) for m in self.models for v in views]
                out.append(torch.stack(probs).mean(0).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, len(LABELS)), np.float32)

    def embed(self, batch: np.ndarray) -> SliceOutputs:
        torch = self.torch
        flip = self.series is not None and self.series.embed_tta
        probs, features, logits = [], [], []
        with torch.inference_mode():
            for i in range(0, len(batch), self.batch_size):
                x = torch.from_numpy(batch[i : i + self.batch_size]).to(self.device)
                x = x.float().div_(255).contiguous(memory_format=torch.channels_last)
                outs = [_embed(m, x, flip) for m in self.models]
                features.append(torch.stack([f for f, _ in outs]).half().cpu().numpy())
                logits.append(torch.stack([lg for _, lg in outs]).float().cpu().numpy())
                probs.append(torch.sigmoid(torch.stack([lg for _, lg in outs])).mean(0).numpy())
        return SliceOutputs(
            np.concatenate(probs), np.concatenate(features, 1), np.concatenate(logits, 1)
        )


def _embed(model: Any, x: Any, flip: bool) -> tuple[Any, Any]:
    """(features, logits) of a batch, averaged with the mirror image when ``flip``."""
    f, lg = model.embed(x)
    if flip:
        f2, lg2 = model.embed(x.flip(3))
        f, lg = (f + f2) / 2, (lg + lg2) / 2
    return f.float().cpu(), lg.float().cpu()


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
        self.session = _session(ort, path, threads)
        raw = self.session.get_modelmeta().custom_metadata_map.get(ONNX_META_KEY)
        if raw is None:
            raise ValueError(f"{path}: not an ichdet model (no '{ONNX_META_KEY}' metadata)")
        meta = json.loads(raw)
        if meta.get("kind", "slice_cnn") != "slice_cnn":
            raise ValueError(f"{path}: an exported {meta['kind']}, not a slice model")
        self.spec = InputSpec(CacheSettings.from_dict(meta["cache_settings"]), int(meta["context"]))
        self.thresholds = meta.get("thresholds") or default_thresholds()
        self.input_name = self.session.get_inputs()[0].name
        self.tta, self.batch_size = tta, batch_size
        self.names = [Path(path).name]
        self.synthetic_only = bool(meta.get("synthetic_only"))
        self.digest = str(meta.get("model_digest") or file_digest(path))
        self.slice_spacing = training_spacing([meta.get("slice_spacing_mm")])
        self.series: SeriesStage | None = None
        if meta.get("sequence"):
            self.series = _onnx_series(ort, Path(path), meta["sequence"], threads)
            self.thresholds = self.series.slice_thresholds
            self.names += self.series.names
        self.study_thresholds = self.series.study_thresholds if self.series else self.thresholds

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

    def embed(self, batch: np.ndarray) -> SliceOutputs:
        """The exported graph's three outputs (an export with a series stage has them)."""
        parts = []
        for i in range(0, len(batch), self.batch_size):
            x = batch[i : i + self.batch_size].astype(np.float32) / np.float32(255)
            parts.append(self.session.run(None, {self.input_name: x}))
        if not parts or len(parts[0]) < 3:
            raise ValueError(f"{self.names[0]}: exported without its series stage's outputs")
        probs, features, logits = (
            np.concatenate([p[k] for p in parts], axis=-2 if k else 0) for k in range(3)
        )
        return SliceOutputs(probs, features.astype(np.float16), logits)


def _session(ort: Any, path: str | os.PathLike, threads: int | None) -> Any:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(os.fspath(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own types
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise ValueError(f"{path}: not a loadable ONNX model ({reason})") from None


def _onnx_series(ort: Any, path: Path, meta: dict[str, Any], threads: int | None) -> OnnxSeries:
    """The series stage exported beside ``path`` (its file name and digest in ``meta``)."""
    from ichdet.util.digest import file_digest

    file = path.with_name(Path(meta["file"]).name)  # a name beside the model, never a path
    if not file.is_file():
        raise FileNotFoundError(f"{file}: the series stage of {path.name} is missing")
    if file_digest(file) != meta["digest"]:
        raise ValueError(f"{file}: not the series stage exported with {path.name}")
    return OnnxSeries(_session(ort, file, threads), meta, file.name)


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
