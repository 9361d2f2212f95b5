"""The segmenter: a U-Net (segmentation_models_pytorch) over a timm encoder, one output map per
hemorrhage subtype (multi-label: sigmoid per subtype), input normalisation built in.

:class:`ICHSegmenter` takes float window stacks in [0, 1] (N x C x H x W, C = windows x context
slices) and returns logits N x 5 x H x W in SUBTYPES order. H and W must be multiples of 32.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from ichdet.labels import SUBTYPES
from ichdet.models.registry import register
from ichdet.models.slice_cnn import tiled_stats

#: The registry key of this model and of its checkpoints.
KIND = "segmenter"
ARCHITECTURES = ("unet", "fpn")


@dataclass(frozen=True)
class SegmenterConfig:
    name: str = "tf_efficientnet_b0"  #: any timm encoder with features_only
    in_chans: int = 3
    arch: str = "unet"
    decoder_channels: tuple[int, ...] = (128, 64, 32, 16, 8)

    def __post_init__(self) -> None:
        if self.arch not in ARCHITECTURES:
            raise ValueError(f"segmenter arch {self.arch!r}: one of {', '.join(ARCHITECTURES)}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["decoder_channels"] = list(self.decoder_channels)
        return d


class ICHSegmenter(nn.Module):
    """Normalisation + encoder-decoder; ``forward`` returns N x 5 x H x W logits."""

    def __init__(self, net: nn.Module, in_chans: int):
        super().__init__()
        self.net = net
        mean, std = tiled_stats(in_chans)  # ImageNet's, which smp's timm encoders expect
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    mean: torch.Tensor
    std: torch.Tensor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)


def build_segmenter(config: SegmenterConfig, pretrained: bool = False) -> ICHSegmenter:
    """The segmenter; ``pretrained`` loads the encoder's ImageNet weights through timm (hub
    download), never in tests."""
    import segmentation_models_pytorch as smp

    kwargs: dict[str, Any] = dict(
        encoder_name=f"tu-{config.name}",
        encoder_weights="imagenet" if pretrained else None,
        in_channels=config.in_chans,
        classes=len(SUBTYPES),
    )
    if config.arch == "unet":
        net = smp.Unet(decoder_channels=tuple(config.decoder_channels), **kwargs)
    else:
        net = smp.FPN(**kwargs)
    return ICHSegmenter(net, config.in_chans)


@register(KIND)
def from_config(config: dict[str, Any]) -> ICHSegmenter:
    """The registry's builder: a segmenter from a checkpoint's ``model_config``."""
    values = dict(config)
    values["decoder_channels"] = tuple(values.get("decoder_channels", (128, 64, 32, 16, 8)))
    return build_segmenter(SegmenterConfig(**values))
