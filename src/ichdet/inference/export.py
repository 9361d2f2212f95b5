"""``ichdet export``: a run (one fold, or every fold as an averaged ensemble) -> one ONNX file.

The exported graph takes float32 N x C x H x W in [0, 1] (dynamic N) and returns probabilities
(sigmoid outputs, averaged over the ensemble). The preprocessing settings, neighbour context and
operating thresholds travel in the model's metadata under the key ``ichdet``, so
``ichdet predict model.onnx ...`` needs nothing else (and no torch).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from ichdet.inference.runners import ONNX_META_KEY, TorchRunner
from ichdet.models.checkpoint import find_checkpoints
from ichdet.util.atomic import atomic_path


class Probabilities(nn.Module):
    """Mean of the sigmoid outputs of one or more models."""

    def __init__(self, models: list[nn.Module]):
        super().__init__()
        self.models = nn.ModuleList(models)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([torch.sigmoid(m(x)) for m in self.models]).mean(0)


def export_onnx(
    models: Sequence[str | os.PathLike], out: str | os.PathLike, opset: int = 20
) -> Path:
    """Export run dirs / checkpoints to ``out``; returns the path."""
    import onnx

    runner = TorchRunner(find_checkpoints([Path(m) for m in models]), device="cpu")
    module = Probabilities(runner.models).eval()
    size = runner.spec.settings.size
    example = torch.rand(2, runner.spec.channels, size, size)
    meta = {
        "cache_settings": runner.spec.settings.to_dict(),
        "context": runner.spec.context,
        "thresholds": runner.thresholds,
        "models": runner.names,
        "opset": opset,
    }
    with tempfile.TemporaryDirectory() as tmpdir:
        raw = os.path.join(tmpdir, "raw.onnx")
        with contextlib.redirect_stdout(io.StringIO()):  # the exporter narrates its steps
            torch.onnx.export(
                module,
                (example,),
                raw,
                dynamo=True,
                input_names=["image"],
                output_names=["probabilities"],
                dynamic_shapes={"x": {0: torch.export.Dim("batch")}},
                opset_version=opset,
                verbose=False,
            )
        proto = onnx.load(raw)
    entry = proto.metadata_props.add()
    entry.key, entry.value = ONNX_META_KEY, json.dumps(meta)
    with atomic_path(out) as tmp:
        onnx.save(proto, os.fspath(tmp))
    return Path(out)
