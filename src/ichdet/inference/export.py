"""``ichdet export``: a run (one fold, or every fold as an averaged ensemble) -> one ONNX file.

The exported graph takes float32 N x C x H x W in [0, 1] (dynamic N) and returns probabilities
(sigmoid outputs, averaged over the ensemble). The preprocessing settings, neighbour context and
operating thresholds travel in the model's metadata under the key ``ichdet``, so
``ichdet predict model.onnx ...`` needs nothing else (and no torch).

A run with a series stage exports two files: ``X.onnx`` (the CNNs, with two more outputs: each
model's embeddings K x N x D and logits K x N x 6) and ``X.sequence.onnx`` (the sequence models:
features K x L x D, logits K x L x 6, z L -> slice probabilities L x 6 and study probabilities 6,
with a dynamic series length L). ``X.onnx``'s metadata names the second file and its digest.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ichdet.inference.runners import ONNX_META_KEY, TorchRunner
from ichdet.inference.series import TorchSeries
from ichdet.models.checkpoint import find_checkpoints, load_checkpoint
from ichdet.util.atomic import atomic_path
from ichdet.util.digest import file_digest


class Probabilities(nn.Module):
    """Mean of the sigmoid outputs of one or more models."""

    def __init__(self, models: list[nn.Module]):
        super().__init__()
        self.models = nn.ModuleList(models)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([torch.sigmoid(m(x)) for m in self.models]).mean(0)


class Embeddings(nn.Module):
    """The CNNs' mean probabilities, and each one's embeddings and logits (K x N x ...)."""

    def __init__(self, models: list[nn.Module], flip: bool):
        super().__init__()
        self.models, self.flip = nn.ModuleList(models), flip

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        features, logits = [], []
        for m in self.models:
            f, lg = m.embed(x)  # type: ignore[operator]
            if self.flip:
                f2, lg2 = m.embed(torch.flip(x, dims=[3]))  # type: ignore[operator]
                f, lg = (f + f2) / 2, (lg + lg2) / 2
            features.append(f)
            logits.append(lg)
        stacked = torch.stack(logits)
        return torch.sigmoid(stacked).mean(0), torch.stack(features), stacked


class SeriesEnsemble(nn.Module):
    """One series through every sequence model (and reversed, when they were trained so)."""

    def __init__(self, models: list[nn.Module], reverse: bool):
        super().__init__()
        self.models, self.reverse = nn.ModuleList(models), reverse

    def forward(
        self, features: torch.Tensor, logits: torch.Tensor, z: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        slices, studies = [], []
        for k, m in enumerate(self.models):
            f, lg, zz = features[k : k + 1], logits[k : k + 1], z[None]
            s, st = m(f, lg, zz)
            slices.append(torch.sigmoid(s[0]))
            studies.append(torch.sigmoid(st[0]))
            if self.reverse:
                s, st = m(f.flip(1), lg.flip(1), zz.flip(1))
                slices.append(torch.sigmoid(s[0]).flip(0))
                studies.append(torch.sigmoid(st[0]))
        return torch.stack(slices).mean(0), torch.stack(studies).mean(0)


def _export(
    module: nn.Module,
    example: tuple,
    names: tuple[list[str], list[str]],
    dynamic: dict,
    opset: int,
    dynamo: bool = True,
) -> Any:
    """The ONNX proto of ``module``, quietly. ``dynamic``: dynamic_shapes (dynamo) or
    dynamic_axes (the TorchScript exporter, which keeps GRU/LSTM as ONNX's own GRU/LSTM ops
    with a dynamic length; dynamo unrolls them over the example's length)."""
    import onnx

    shapes: dict[str, Any] = {"dynamic_shapes": dynamic} if dynamo else {"dynamic_axes": dynamic}
    with tempfile.TemporaryDirectory() as tmpdir:
        raw = os.path.join(tmpdir, "raw.onnx")
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the narration, and the TorchScript deprecation
            torch.onnx.export(
                module,
                example,
                raw,
                dynamo=dynamo,
                input_names=names[0],
                output_names=names[1],
                opset_version=opset,
                verbose=False,
                **shapes,
            )
        return onnx.load(raw)


def _save(proto: Any, meta: dict[str, Any], out: Path) -> Path:
    import onnx

    entry = proto.metadata_props.add()
    entry.key, entry.value = ONNX_META_KEY, json.dumps(meta)
    with atomic_path(out) as tmp:
        onnx.save(proto, os.fspath(tmp))
    return out


def export_onnx(
    models: Sequence[str | os.PathLike], out: str | os.PathLike, opset: int = 20
) -> Path:
    """Export run dirs / checkpoints to ``out`` (and the series stage beside it, when the run
    has one: ``<out stem>.sequence.onnx``); returns the path of ``out``."""
    out = Path(out)
    checkpoints = find_checkpoints([Path(m) for m in models])
    if load_checkpoint(checkpoints[0])["kind"] == "segmenter":
        return _export_segmenter(checkpoints, out, opset)
    runner = TorchRunner(checkpoints, device="cpu")
    size = runner.spec.settings.size
    example = (torch.rand(2, runner.spec.channels, size, size),)
    batch = {"x": {0: torch.export.Dim("batch")}}
    meta = {
        "cache_settings": runner.spec.settings.to_dict(),
        "context": runner.spec.context,
        "thresholds": runner.thresholds,
        "models": runner.names,
        "opset": opset,
        "synthetic_only": runner.synthetic_only,
        "slice_spacing_mm": runner.slice_spacing,
        "model_digest": runner.digest,  # the checkpoints': a site file fits both forms
    }
    series = runner.series
    if not isinstance(series, TorchSeries):
        proto = _export(
            Probabilities(runner.models).eval(),
            example,
            (["image"], ["probabilities"]),
            batch,
            opset,
        )
        return _save(proto, meta, out)
    seq_file = _export_series(series, out, opset)
    meta["sequence"] = {
        "file": seq_file.name,
        "digest": file_digest(seq_file),
        "embed_tta": series.embed_tta,
        "slice_thresholds": series.slice_thresholds,
        "study_thresholds": series.study_thresholds,
    }
    module = Embeddings(runner.models, series.embed_tta).eval()
    names = (["image"], ["probabilities", "features", "logits"])
    return _save(_export(module, example, names, batch, opset), meta, out)


def _export_series(series: TorchSeries, out: Path, opset: int) -> Path:
    """``<out stem>.sequence.onnx``: the sequence models with a dynamic series length."""
    module = SeriesEnsemble(series.models, series.reverse).eval()
    first: Any = series.models[0]
    k, width = len(series.models), first.inputs[0].in_features
    d = (width - 2) // 3 - 6
    example = (torch.randn(k, 7, d), torch.randn(k, 7, 6), torch.arange(7.0) * 5)
    dynamic = {"features": {1: "slices"}, "logits": {1: "slices"}, "z": {0: "slices"}}
    names = (["features", "logits", "z"], ["slice_probabilities", "study_probabilities"])
    proto = _export(module, example, names, dynamic, opset, dynamo=False)
    path = out.with_name(out.stem + ".sequence.onnx")
    return _save(proto, {"sequence_models": series.names, "opset": opset}, path)


def _export_segmenter(checkpoints: list[Path], out: Path, opset: int) -> Path:
    """A segmenter (or an ensemble): float32 N x C x H x W -> probabilities N x 5 x H x W."""
    from ichdet.inference.seg_runner import KIND, TorchSegmenter

    seg = TorchSegmenter(checkpoints, device="cpu")
    size = seg.spec.settings.size
    example = (torch.rand(2, seg.spec.channels, size, size),)
    proto = _export(
        Probabilities(seg.models).eval(),
        example,
        (["image"], ["probabilities"]),
        {"x": {0: torch.export.Dim("batch")}},
        opset,
    )
    meta = {
        "kind": KIND,
        "cache_settings": seg.spec.settings.to_dict(),
        "context": seg.spec.context,
        "models": seg.names,
        "opset": opset,
        "synthetic_only": seg.synthetic_only,
    }
    return _save(proto, meta, out)
