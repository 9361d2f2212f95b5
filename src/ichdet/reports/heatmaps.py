"""Heat maps of where a slice CNN looked for a label: LayerCAM (pytorch-grad-cam) on the last
convolution that still sees the image at 1/8 of its size, occlusion sensitivity (any runner,
ONNX included), and their overlay on a window image.

Occlusion sensitivity (Zeiler & Fergus 2014): the model's probability for the label drops most
where covering the image hides the finding. It needs only forward passes: one batch of ``GRID``
x ``GRID`` occluded copies of the slice's model input.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from ichdet.inference.decode import Row, series_inputs

GRID = 8


def cam_layer(model, channels: int, size: int, stride: int = 8):
    """The last convolution whose output keeps at least ``size / stride`` pixels per side.

    The network's final convolution sees the image at 1/32 (4 x 4 cells at 128 px): too coarse
    to point at a thin subdural crescent. One stage earlier (1/8) the maps still carry where.
    """
    import torch

    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    if not convs:
        raise ValueError("heat maps need a convolutional backbone")
    sizes: dict[int, int] = {}
    hooks = [
        m.register_forward_hook(lambda mod, i, o: sizes.__setitem__(id(mod), o.shape[-1]))
        for m in convs
    ]
    try:
        device = next(model.parameters()).device
        with torch.no_grad():
            model(torch.zeros(1, channels, size, size, device=device))
    finally:
        for hook in hooks:
            hook.remove()
    fine = [m for m in convs if sizes.get(id(m), 0) >= size / stride]
    return fine[-1] if fine else convs[-1]


class HeatMapper:
    """LayerCAM heat maps (H x W in [0, 1], input size) for one torch model.

    LayerCAM (pytorch-grad-cam; Jiang et al. 2021) weighs each activation by its own positive
    gradient, which keeps the localisation of a finer layer that plain Grad-CAM's averaged
    weights blur. On the demo model, peaks fell inside the synthetic lesion for 44 % of positive
    slices (Grad-CAM on the last convolution: 0 %; chance: 3 %); see benchmarks/RESULTS.md.
    """

    def __init__(self, model, channels: int, size: int):
        from pytorch_grad_cam import LayerCAM

        self.model = model.eval()
        self.cam = LayerCAM(model=self.model, target_layers=[cam_layer(model, channels, size)])

    def __call__(self, x: np.ndarray, label: int) -> np.ndarray:
        """``x``: one uint8 model input (C x H x W)."""
        import torch
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        device = next(self.model.parameters()).device
        tensor = torch.from_numpy(x[None]).to(device).float().div_(255)
        with torch.enable_grad():
            cams = self.cam(input_tensor=tensor, targets=[ClassifierOutputTarget(label)])
        return np.nan_to_num(cams[0].astype(np.float32))


def heatmap_peak(cam: np.ndarray, shape: tuple[int, int]) -> tuple[int, int]:
    """Row, column of the heat map's maximum, in an image of ``shape``."""
    r, c = np.unravel_index(int(np.argmax(cam)), cam.shape)
    return (
        min(shape[0] - 1, int((r + 0.5) * shape[0] / cam.shape[0])),
        min(shape[1] - 1, int((c + 0.5) * shape[1] / cam.shape[1])),
    )


def overlay(gray: np.ndarray, cam: np.ndarray, alpha: float = 0.4) -> np.ndarray:
    """A [0, 1] grayscale panel with a jet-coloured heat map on top (uint8 RGB)."""
    cam = cv2.resize(cam, gray.shape[::-1], interpolation=cv2.INTER_LINEAR)
    heat = (255 * np.clip(cam, 0, 1)).astype(np.uint8)
    colour = cv2.applyColorMap(heat, cv2.COLORMAP_JET)
    colour = cv2.cvtColor(colour, cv2.COLOR_BGR2RGB).astype(np.float32) / 255
    base = np.repeat(gray[..., None], 3, axis=-1)
    return (255 * np.clip((1 - alpha) * base + alpha * colour, 0, 1)).astype(np.uint8)


def model_input(runner: Any, rows: list[Row], n: int) -> np.ndarray:
    """The model input (uint8 C x H x W) of slice ``n`` of a series (``rows`` in z order)."""
    context = runner.spec.context
    low, high = max(0, n - context), min(len(rows), n + context + 1)
    ids, volume, _ = series_inputs(rows[low:high], runner.spec.settings, context)
    if volume is None or rows[n][0] not in ids:
        raise ValueError("the slice could not be decoded")
    return volume[ids.index(rows[n][0])]


def occlusion_map(runner: Any, x: np.ndarray, label: int, grid: int = GRID) -> np.ndarray:
    """(grid x grid) drop of the label's probability when each cell of ``x`` (uint8 C x H x W)
    is blanked, scaled to [0, 1] (zeros when nothing lowers it)."""
    _, h, w = x.shape
    copies = np.repeat(x[None], grid * grid + 1, axis=0)
    ys, xs = np.linspace(0, h, grid + 1).astype(int), np.linspace(0, w, grid + 1).astype(int)
    for k in range(grid * grid):
        i, j = divmod(k, grid)
        copies[k + 1, :, ys[i] : ys[i + 1], xs[j] : xs[j + 1]] = 0
    probs = runner(copies)[:, label]
    drop = np.clip(probs[0] - probs[1:], 0, None).reshape(grid, grid)
    return (drop / drop.max() if drop.max() > 0 else drop).astype(np.float32)
