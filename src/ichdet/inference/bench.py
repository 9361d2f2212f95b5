"""Inference benchmarks: torch eager vs ONNX Runtime on the same model and inputs."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np


def _rate(fn: Callable[[], object], images: int, seconds: float) -> float:
    fn()  # warm-up
    runs, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or runs < 3:
        fn()
        runs += 1
    return runs * images / (time.perf_counter() - start)


def bench_inference(
    model_name: str,
    size: int,
    batch_size: int,
    seconds: float,
    channels: int = 3,
    log: Callable[[str], None] = print,
) -> dict:
    """img/s of torch eager fp32 and ONNX Runtime for one randomly initialised model."""
    import onnxruntime as ort
    import torch

    from ichdet.inference.export import Probabilities
    from ichdet.models.slice_cnn import ModelConfig, build_model

    torch.manual_seed(0)
    model = Probabilities([build_model(ModelConfig(name=model_name, in_chans=channels))]).eval()
    x = torch.rand(batch_size, channels, size, size)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.onnx"
        import contextlib
        import io

        with contextlib.redirect_stdout(io.StringIO()):
            torch.onnx.export(
                model,
                (x,),
                str(path),
                dynamo=True,
                opset_version=20,
                dynamic_shapes={"x": {0: torch.export.Dim("batch")}},
            )
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        xn = x.numpy()
        log(
            f"{model_name} at {size} px, batch {batch_size}, torch threads "
            f"{torch.get_num_threads()}"
        )
        with torch.inference_mode():
            torch_rate = _rate(lambda: model(x), batch_size, seconds)
            reference = model(x).numpy()
        onnx_rate = _rate(lambda: session.run(None, {name: xn}), batch_size, seconds)
        diff = float(np.abs(session.run(None, {name: xn})[0] - reference).max())
    return {"torch": torch_rate, "onnx": onnx_rate, "max_abs_diff": diff}
