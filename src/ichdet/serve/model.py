"""The model a server loads once: an ``.onnx`` file as it is; a run folder through PyTorch on a
GPU, else exported to ONNX once (cached in the store by the checkpoints' digests) and run by ONNX
Runtime, the fast CPU path."""

from __future__ import annotations

import logging
from pathlib import Path

from ichdet.inference.runners import Runner, load_runner
from ichdet.util.digest import file_digest
from ichdet.util.names import short_hash

log = logging.getLogger("ichdet.serve")


def load_model(model: Path, store: Path, device: str = "auto") -> Runner:
    if model.suffix == ".onnx":
        return load_runner([model])
    import torch

    if device in ("auto", "cuda") and torch.cuda.is_available():
        return load_runner([model], device="cuda")
    from ichdet.inference.export import export_onnx
    from ichdet.inference.series import sequence_checkpoints
    from ichdet.models.checkpoint import find_checkpoints

    checkpoints = find_checkpoints([model])
    paired = sequence_checkpoints(checkpoints) or []
    key = short_hash(",".join(file_digest(p) for p in [*checkpoints, *paired]))
    onnx = store / "model" / f"{key}.onnx"
    if not onnx.is_file():
        log.info("exporting the run to ONNX once: %s", onnx.name)
        onnx.parent.mkdir(parents=True, exist_ok=True)
        export_onnx([model], onnx)
    return load_runner([onnx])
