"""Model kinds by name: each kind registers a builder from its ``model_config`` dict.

Checkpoints record their kind, so loading dispatches here instead of assuming a slice CNN.
Kinds register when their module is imported; the known ones are imported on first use.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from torch import nn

from ichdet.models.checkpoint import inference_state

Builder = Callable[[dict[str, Any]], nn.Module]

_BUILDERS: dict[str, Builder] = {}
#: Kinds shipped with ichdet and the module that registers each.
_MODULES = {
    "slice_cnn": "ichdet.models.slice_cnn",
    "sequence": "ichdet.models.sequence",
    "segmenter": "ichdet.models.segmenter",
}


def register(kind: str) -> Callable[[Builder], Builder]:
    """Decorator: ``@register("slice_cnn") def build(config: dict) -> nn.Module``."""

    def add(builder: Builder) -> Builder:
        _BUILDERS[kind] = builder
        return builder

    return add


def kinds() -> list[str]:
    return sorted(set(_BUILDERS) | set(_MODULES))


def build(kind: str, config: dict[str, Any]) -> nn.Module:
    """A new (randomly initialised) model of ``kind`` from its config dict."""
    if kind not in _BUILDERS and kind in _MODULES:
        importlib.import_module(_MODULES[kind])
    if kind not in _BUILDERS:
        raise ValueError(f"unknown model kind {kind!r}; known: {', '.join(kinds())}")
    return _BUILDERS[kind](config)


def model_from_checkpoint(ckpt: dict[str, Any]) -> nn.Module:
    """The model a loaded checkpoint holds, with its inference weights, in eval mode."""
    model = build(ckpt["kind"], ckpt["model_config"])
    model.load_state_dict(inference_state(ckpt))
    return model.eval()
