"""The slice CNN: any timm backbone with a 6-logit head, input normalisation built in.

:class:`ICHNet` takes float images in [0, 1] (N x C x H x W, C = windows x context slices) and
returns logits in LABELS order. Normalisation (the backbone's pretrained mean/std, tiled over the
window channels) lives inside the model, so exported models and checkpoints need no separate
preprocessing code.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from ichdet.labels import LABELS
from ichdet.models.checkpoint import read_weights_file
from ichdet.models.registry import register

#: The registry key of this model and of its checkpoints.
KIND = "slice_cnn"


@dataclass(frozen=True)
class ModelConfig:
    name: str = "tf_efficientnet_b0"
    in_chans: int = 3
    drop_path_rate: float = 0.0
    drop_rate: float = 0.0
    #: Outputs of the mask head (0: none): where each subtype lies, from a feature map.
    mask_outputs: int = 0
    mask_stride: int = 32  # 32: the last feature map; 16 (or 8): an earlier stage's, finer

    def to_dict(self) -> dict:
        return asdict(self)


IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def tiled_stats(
    in_chans: int, mean: tuple = IMAGENET_MEAN, std: tuple = IMAGENET_STD
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std (1 x C x 1 x 1) for ``in_chans`` window channels: the
    backbone's 3-channel statistics repeated over the windows and neighbour slices."""
    m, s = torch.tensor(mean, dtype=torch.float32), torch.tensor(std, dtype=torch.float32)
    reps = -(-in_chans // len(m))
    return (
        m.repeat(reps)[:in_chans].view(1, -1, 1, 1),
        s.repeat(reps)[:in_chans].view(1, -1, 1, 1),
    )


class ICHNet(nn.Module):
    """Backbone + head over normalised window stacks; ``forward`` returns (N, 6) logits.

    With ``mask_outputs`` > 0 the model also has a mask head: a 1x1 convolution over the
    feature map of ``mask_stride`` (the last one at 32, or the last stage of that stride, from
    timm's ``forward_intermediates``) giving one logit per subtype and cell, trained against the
    coarse masks of the blood (``forward(x, masks=True)``). Only training reads it; inference
    and export call ``forward(x)``, which never touches it.
    """

    def __init__(
        self, backbone: nn.Module, in_chans: int, mask_outputs: int = 0, mask_stride: int = 32
    ):
        super().__init__()
        self.backbone = backbone
        self.mask_stage: int | None = None  # feature_info index; None: the last feature map
        channels = int(getattr(backbone, "num_features"))  # noqa: B009 - timm's attribute
        if mask_outputs and mask_stride != 32:
            self.mask_stage, channels = _stage_of_stride(backbone, mask_stride)
        self.mask_head = nn.Conv2d(channels, mask_outputs, 1) if mask_outputs else None
        cfg = getattr(backbone, "pretrained_cfg", {}) or {}
        mean, std = tiled_stats(
            in_chans, cfg.get("mean", IMAGENET_MEAN), cfg.get("std", IMAGENET_STD)
        )
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    mean: torch.Tensor
    std: torch.Tensor

    def forward(self, x: torch.Tensor, masks: bool = False) -> Any:
        """(N, 6) logits; with ``masks`` (a model with a mask head), (logits, mask logits
        N x mask_outputs x H/32 x W/32) from one pass."""
        x = (x - self.mean) / self.std
        if not masks:
            return self.backbone(x)
        if self.mask_head is None:
            raise ValueError("this model has no mask head (mask_outputs = 0)")
        features, mask_logits = self._with_masks(x)
        return self.backbone.forward_head(features), mask_logits  # type: ignore[operator]

    def _with_masks(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(the last feature map, the mask head's logits) of normalised images."""
        b: Any = self.backbone
        assert self.mask_head is not None
        if self.mask_stage is None:
            features = b.forward_features(x)
            return features, self.mask_head(features)
        features, stages = b.forward_intermediates(x, indices=[self.mask_stage])
        return features, self.mask_head(stages[0])

    @property
    def num_features(self) -> int:
        """The size of the embedding the series stage reads: the pooled features, and with a
        mask head its largest logit per subtype."""
        pooled = int(getattr(self.backbone, "num_features"))  # noqa: B009 - timm's attribute
        return pooled + (self.mask_head.out_channels if self.mask_head is not None else 0)

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(embedding N x num_features, logits N x 6): the logits are the head applied to the
        pooled features, the same as ``forward`` gives in eval mode. With a mask head the
        embedding ends with each subtype's largest cell logit: where a small bleed shows,
        which average pooling dilutes."""
        b: Any = self.backbone
        x = (x - self.mean) / self.std
        if self.mask_head is None:
            pooled = b.forward_head(b.forward_features(x), pre_logits=True)
            return pooled, b.get_classifier()(pooled)
        features, mask_logits = self._with_masks(x)
        pooled = b.forward_head(features, pre_logits=True)
        peaks = mask_logits.amax(dim=(2, 3))
        return torch.cat([pooled, peaks], 1), b.get_classifier()(pooled)


def _stage_of_stride(backbone: nn.Module, stride: int) -> tuple[int, int]:
    """(feature_info index, channels) of the backbone's last stage at ``stride``."""
    info = list(getattr(backbone, "feature_info", []) or [])
    found = [(i, int(f["num_chs"])) for i, f in enumerate(info) if f.get("reduction") == stride]
    if not found or not hasattr(backbone, "forward_intermediates"):
        have = sorted({int(f.get("reduction", 0)) for f in info})
        raise ValueError(f"the backbone has no stage at stride {stride} (strides: {have})")
    return found[-1]


def build_model(
    config: ModelConfig, pretrained: bool = False, weights: str | os.PathLike | None = None
) -> ICHNet:
    """Create the model. ``pretrained`` uses timm's hub weights; ``weights`` a local file.

    A local file may be a plain timm state dict, a timm checkpoint (``state_dict``/``model``
    inside), or an ichdet checkpoint. timm adapts the first convolution to ``in_chans`` and
    re-initialises the classifier when its shape differs; an ichdet checkpoint whose head or
    input shape differs loads every tensor that fits and leaves the rest initialised.
    """
    kwargs: dict[str, Any] = dict(
        num_classes=len(LABELS),
        in_chans=config.in_chans,
        drop_path_rate=config.drop_path_rate,
        drop_rate=config.drop_rate,
    )
    ichdet_state = None
    if weights is not None:
        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(f"{weights}: weights file not found")
        loaded = read_weights_file(path)
        if "ichdet" in loaded:
            ichdet_state = loaded["model"]
        else:  # timm adapts the first convolution and the head of a state dict we loaded safely
            state = {k.removeprefix("module."): v for k, v in loaded.items()}
            kwargs["pretrained_cfg_overlay"] = {"state_dict": state, "num_classes": 1000}
            pretrained = True
    backbone = timm.create_model(config.name, pretrained=pretrained, **kwargs)
    model = ICHNet(backbone, config.in_chans, config.mask_outputs, config.mask_stride)
    if ichdet_state is not None:
        load_matching(model, ichdet_state)
    return model


def load_matching(model: nn.Module, state: dict[str, torch.Tensor]) -> list[str]:
    """Load the tensors whose names and shapes match; returns the names that did not."""
    own = model.state_dict()
    clean = {k.removeprefix("module."): v for k, v in state.items()}
    fitting = {k: v for k, v in clean.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(fitting, strict=False)
    return sorted(set(own) - set(fitting))


@register(KIND)
def from_config(config: dict[str, Any]) -> ICHNet:
    """The registry's builder: a model from a checkpoint's ``model_config``."""
    return build_model(ModelConfig(**config))
