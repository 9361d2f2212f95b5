"""Training settings as dataclasses, and recipes: YAML files whose keys are the field names.

``LoopConfig`` holds what the shared loop needs (every trainer's config extends it);
``TrainConfig`` adds the slice CNN's data and model settings. A recipe file is read into the same
fields; command-line flags override it (see ``ichdet.cli.train_cmds``). Each field carries its
help text in ``metadata["help"]``, so the command line is generated from the dataclass.
"""

from __future__ import annotations

import os
import types
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import yaml

C = TypeVar("C", bound="LoopConfig")


def _opt(default: Any, help: str) -> Any:  # noqa: A002 - the word the CLI uses
    return field(default=default, metadata={"help": help})


@dataclass
class LoopConfig:
    """Settings of the shared training loop (``ichdet.training.loop``)."""

    #: Fields shown first (in recipes and --help): what to train on and where.
    FIRST: ClassVar[tuple[str, ...]] = ("out",)

    out: str | None = _opt(None, "run directory")
    epochs: int = _opt(5, "epochs")
    batch_size: int = _opt(32, "samples per step and process")
    lr: float = _opt(1e-3, "peak learning rate (AdamW)")
    weight_decay: float = _opt(1e-2, "AdamW weight decay")
    warmup_epochs: float = _opt(0.5, "linear warm-up before the cosine decay")
    accumulate: int = _opt(1, "gradient accumulation steps")
    amp: bool | None = _opt(None, "mixed precision (default: on for CUDA)")
    channels_last: bool | None = _opt(None, "channels_last memory format (default: on for CUDA)")
    ema: float = _opt(0.0, "EMA decay of the weights, e.g. 0.999 (0: off)")
    seed: int = _opt(0, "random seed")
    workers: int = _opt(2, "data loader processes")
    device: str = _opt("auto", "auto | cuda | cpu")

    def to_dict(self) -> dict[str, Any]:
        """Every setting, the FIRST ones first, then the others in field order."""
        values = asdict(self)
        first = [k for k in self.FIRST if k in values]
        return {k: values[k] for k in [*first, *(k for k in values if k not in first)]}

    @classmethod
    def from_dict(cls: type[C], values: dict[str, Any], source: str = "config") -> C:
        """Build from a mapping of field names; values are checked and coerced to the field
        types (YAML reads ``1e-3`` as a string); unknown keys are an error naming them."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            names = ", ".join(sorted(known))
            raise ValueError(f"{source}: unknown setting(s) {', '.join(unknown)}; known: {names}")
        hints = typing.get_type_hints(cls)
        return cls(**{k: _coerce(v, hints[k], f"{source}: {k}") for k, v in values.items()})


@dataclass
class FoldConfig(LoopConfig):
    """A loop config that trains one fold (or every fold) of an indexed, prepared dataset."""

    FIRST: ClassVar[tuple[str, ...]] = ("task", "index", "cache", "out", "fold")
    #: The value of ``task`` that selects this config (``ichdet train --task``).
    TASK: ClassVar[str] = ""

    task: str = _opt(
        "slice", "what to train: slice (the CNN) | sequence (the series stage) | segment"
    )
    index: str | None = _opt(None, "index parquet with folds")
    cache: str | None = _opt(None, "cache root (from `ichdet prepare`) or its folder")
    fold: int | str = _opt(0, "fold number, or 'all' for every fold (CV)")
    target_sensitivity: float = _opt(0.95, "for the per-label operating thresholds")

    def __post_init__(self) -> None:
        if self.TASK and self.task != self.TASK:
            raise ValueError(f"task must be {self.TASK!r} here, not {self.task!r}")
        if isinstance(self.fold, str) and self.fold != "all":
            if not self.fold.isdigit():
                raise ValueError(f"fold must be a number or 'all', not {self.fold!r}")
            self.fold = int(self.fold)

    @property
    def all_folds(self) -> bool:
        return self.fold == "all"

    def require(self, *names: str) -> None:
        """Raise naming the settings that are still unset (paths a recipe may leave out)."""
        missing = [n for n in names if getattr(self, n) in (None, "")]
        if missing:
            raise ValueError(f"missing setting(s): {', '.join(missing)} (a flag or the recipe)")


@dataclass
class TrainConfig(FoldConfig):
    """Everything ``ichdet train`` needs for the slice CNN; a recipe holds any subset."""

    FIRST: ClassVar[tuple[str, ...]] = (
        "task",
        "index",
        "cache",
        "out",
        "fold",
        "model",
        "size",
        "windows",
        "context",
    )
    TASK: ClassVar[str] = "slice"

    model: str = _opt("tf_efficientnet_b0", "any timm model name")
    size: int = _opt(256, "input size (a cache of this size must exist)")
    windows: str = _opt("brain,subdural,bone", "the cache's windows")
    context: int = _opt(0, "neighbour slices on each side as extra channels")
    augment: bool = _opt(True, "random flips, affine and window jitter")
    pretrained: bool = _opt(False, "timm hub weights (downloads)")
    weights: str | None = _opt(
        None, "local weights: timm state dict/checkpoint or ichdet checkpoint"
    )
    drop_path: float = _opt(0.0, "stochastic depth rate")
    mask_loss: float = _opt(
        0.0,
        "weight of a loss on where each subtype lies (a mask head over a feature map, see "
        "--mask-stride; needs the index's masks, `ichdet index --masks`; 0: off)",
    )
    mask_stride: int = _opt(32, "the mask head's feature map: 32 (the last), 16 or 8 (finer)")


@dataclass
class SequenceTrainConfig(FoldConfig):
    """``ichdet train --task sequence``: the series stage over a trained slice CNN's embeddings.

    ``cnn`` is the CNN's run (one fold, or the CV run: fold k's sequence model reads fold k's
    CNN, so no image of fold k was seen by either stage); ``out`` defaults to ``CNN/sequence``.
    """

    FIRST: ClassVar[tuple[str, ...]] = ("task", "cnn", "index", "cache", "out", "fold", "arch")
    TASK: ClassVar[str] = "sequence"

    task: str = _opt("sequence", "what to train: slice (the CNN) | sequence (the series stage)")
    cnn: str | None = _opt(None, "sequence task: the slice CNN's run folder")
    epochs: int = _opt(20, "epochs")
    batch_size: int = _opt(16, "samples per step and process (series for the sequence task)")
    workers: int = _opt(0, "data loader processes")
    arch: str = _opt("gru", "sequence task: gru | lstm | transformer | conv")
    hidden: int = _opt(128, "sequence task: hidden size")
    layers: int = _opt(2, "sequence task: encoder layers")
    dropout: float = _opt(0.2, "sequence task: dropout")
    heads: int = _opt(4, "sequence task: attention heads (transformer)")
    embed_tta: bool = _opt(False, "sequence task: embed each slice and its mirror image, averaged")
    subsample: float = _opt(0.5, "sequence task: share of training series with slices dropped")
    reverse: bool = _opt(True, "sequence task: reverse half the training series (and TTA)")
    study_weight: float = _opt(1.0, "sequence task: weight of the study-level loss")


@dataclass
class SegmentTrainConfig(TrainConfig):
    """``ichdet train --task segment``: the segmenter (a U-Net over a timm encoder) on the
    index's masks (``ichdet index --masks``); the slice CNN's data and model settings."""

    TASK: ClassVar[str] = "segment"

    task: str = _opt("segment", "what to train: slice | sequence | segment")
    size: int = _opt(256, "input size (a cache of this size must exist; a multiple of 32)")
    decoder: str = _opt("unet", "segment task: unet | fpn (segmentation_models_pytorch)")
    negatives: float = _opt(1.0, "segment task: empty slices per slice with blood in training")
    dice_weight: float = _opt(1.0, "segment task: weight of the Dice loss beside BCE")
    balance: float = _opt(
        4.0, "segment task: repeat slices of rare subtypes up to this many times (1: off)"
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.size % 32:
            raise ValueError(f"the segmenter's size must be a multiple of 32, not {self.size}")


#: ``task`` -> its config class.
TASKS: dict[str, type[FoldConfig]] = {
    "slice": TrainConfig,
    "sequence": SequenceTrainConfig,
    "segment": SegmentTrainConfig,
}


def config_for(settings: dict[str, Any], source: str = "config") -> FoldConfig:
    """The config of the task ``settings`` names (default: the slice CNN)."""
    task = settings.get("task") or "slice"
    if task not in TASKS:
        raise ValueError(f"{source}: task {task!r} is not one of {', '.join(TASKS)}")
    return TASKS[task].from_dict(settings, source)


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """``value`` as the type ``hint`` (bool, int, float, str, their unions with None)."""
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if value is None:
        if type(None) in options:
            return None
        raise ValueError(f"{where}: a value is required")
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    for kind in (t for t in options if t is not type(None)):
        converted = _convert(value, kind)
        if converted is not None:
            return converted
    names = " or ".join(t.__name__ for t in options)
    raise ValueError(f"{where}: {value!r} is not {names}")


def _convert(value: Any, kind: type) -> Any:
    if kind is bool:
        return value if isinstance(value, bool) else None
    if isinstance(value, bool):
        return None  # True is an int to Python, never to a recipe
    try:
        if kind is int:
            return (
                value if isinstance(value, int) else (int(value) if str(value).isdigit() else None)
            )
        if kind is float:
            return float(value)
    except (TypeError, ValueError):
        return None
    return str(value) if kind is str and isinstance(value, str | int | float) else None


def read_recipe(path: str | os.PathLike) -> dict[str, Any]:
    """A recipe file -> its mapping of settings (not yet checked; see ``from_dict``)."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise FileNotFoundError(f"{path}: cannot read the recipe ({exc.strerror})") from exc
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML ({exc})") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a recipe is a mapping of setting: value")
    return data


def recipe_text(cfg: LoopConfig, comment: str = "") -> str:
    """YAML of every setting, in field order: ``ichdet train --config`` reads it back as is."""
    head = "".join(f"# {line}\n" for line in comment.splitlines())
    return head + yaml.safe_dump(cfg.to_dict(), sort_keys=False)
