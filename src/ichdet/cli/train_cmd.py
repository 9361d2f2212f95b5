"""``ichdet train``: its options are generated from the fields of the task configs
(``TrainConfig`` for the slice CNN, ``SequenceTrainConfig`` for the series stage).

Settings come from three places, later ones winning: the dataclass defaults, a recipe
(``--config recipe.yaml``, keys = field names), and the flags given on the command line. Every
option therefore defaults to None here ("not given"); the help shows the real default.
"""

from __future__ import annotations

import inspect
import types
import typing
from dataclasses import Field, fields
from pathlib import Path
from typing import Any

import typer

from ichdet.cli.common import console, fail
from ichdet.training.config import (
    TASKS,
    FoldConfig,
    SegmentTrainConfig,
    SequenceTrainConfig,
    TrainConfig,
)

#: Fields whose command-line form differs from ``--name VALUE`` of the field's type.
_CLI_TYPE: dict[str, type] = {"fold": str}  # a number or "all"
_SHORT = {"out": "-o"}
_POSITIONAL = "index"


def _base_type(hint: Any) -> type:
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    return next(t for t in options if t is not type(None))


def _parameter(f: Field, hint: Any) -> inspect.Parameter:
    kind = _CLI_TYPE.get(f.name, _base_type(hint))
    help_text = f.metadata.get("help", "")
    if f.name == _POSITIONAL:
        info: Any = typer.Argument(None, metavar="INDEX", help=f"{help_text} (or in the recipe)")
    else:
        flag = "--" + f.name.replace("_", "-")
        decls = [f"{flag}/--no-{flag[2:]}" if kind is bool else flag]
        decls += [_SHORT[f.name]] if f.name in _SHORT else []
        shown = str(f.default) if f.default is not None else False
        info = typer.Option(None, *decls, help=help_text, show_default=shown)
    return inspect.Parameter(
        f.name, inspect.Parameter.KEYWORD_ONLY, default=info, annotation=kind | None
    )


def _config_parameter() -> inspect.Parameter:
    config = typer.Option(
        None, "--config", help="a recipe (YAML; keys are the option names with underscores)"
    )
    return inspect.Parameter(
        "config", inspect.Parameter.KEYWORD_ONLY, default=config, annotation=Path | None
    )


def _flag_parameter(name: str, help_text: str) -> inspect.Parameter:
    option = typer.Option(False, f"--{name}", help=help_text)
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=bool)


def settings_from(values: dict[str, Any]) -> FoldConfig:
    """defaults <- recipe (``values["config"]``) <- the flags that were given; the task's
    config class checks them (a setting of the other task is an error naming it)."""
    from ichdet.training.config import config_for, read_recipe

    config = values.pop("config", None)
    settings = read_recipe(config) if config else {}
    settings.update({k: v for k, v in values.items() if v is not None})
    cfg = config_for(settings, source=str(config or "options"))
    if isinstance(cfg, SequenceTrainConfig):
        cfg.require("cnn")
        if not cfg.out:
            cfg.out = str(Path(cfg.cnn or "") / "sequence")
    cfg.require("index", "cache", "out")
    return cfg


def train(**values: Any) -> None:
    """Train the slice CNN (EfficientNet or any timm model), with --task sequence the series
    stage over a trained CNN, with --task segment the segmenter (U-Net, masks from `ichdet
    index --masks`); one fold or all folds (CV); validate every epoch."""
    resume, force = values.pop("resume"), values.pop("force")
    try:
        cfg = settings_from(values)
        fit_fold = _fit_function(cfg)
        if isinstance(cfg, SegmentTrainConfig):
            if cfg.all_folds:
                raise ValueError("the segmenter trains one fold at a time (--fold K)")
            _print_segment(fit_fold(cfg, resume=resume, log=console.print, force=force), cfg)
            return
        if cfg.all_folds:
            from ichdet.training.cv import fit_all

            cv = fit_all(cfg, resume=resume, log=console.print, fit_fold=fit_fold, force=force)
            if cv:
                study = cv.get("study", {}).get("auc", {}).get("any")
                console.print(
                    f"CV weighted log loss {cv['cv_weighted_log_loss']:.4f} "
                    f"(prior baseline {cv['prior_log_loss']:.4f})"
                    + (f", study AUC(any) {study:.3f}" if study is not None else "")
                    + f" -> {cfg.out}"
                )
            return
        report = fit_fold(cfg, resume=resume, log=console.print, force=force)
    except (FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    study = report.get("study", {}).get("auc", {}).get("any")
    console.print(
        f"fold {cfg.fold}: weighted log loss {report['weighted_log_loss']:.4f} "
        f"(prior baseline {report['prior_log_loss']:.4f}), "
        f"AUC(any) {report['auc']['any']:.3f}"
        + (f", study AUC(any) {study:.3f}" if study is not None else "")
        + f" -> {cfg.out}"
    )


def _print_segment(report: dict[str, Any], cfg: FoldConfig) -> None:
    dice, volume = report["dice"], report["volume"]
    console.print(
        f"segmenter fold {cfg.fold}: Dice(any) {dice['any']:.3f}, mean over subtypes "
        f"{dice['mean']:.3f}; volume CCC {volume['ccc']:.3f}, bias {volume['bias']:+.2f} mL "
        f"(limits {volume['lower']:+.2f}..{volume['upper']:+.2f}) over {report['series']} "
        f"series -> {cfg.out}"
    )


def _fit_function(cfg: FoldConfig) -> Any:
    if isinstance(cfg, SegmentTrainConfig):
        from ichdet.training.segment_task import fit_segment

        return fit_segment
    if isinstance(cfg, SequenceTrainConfig):
        from ichdet.training.sequence_task import fit_sequence

        return fit_sequence
    from ichdet.training.slice_task import fit

    return fit


def _install_signature() -> None:
    """Options: the slice CNN's fields, then the ones only the sequence task has."""
    hints = {
        name: hint for cls in TASKS.values() for name, hint in typing.get_type_hints(cls).items()
    }
    rank = {name: i for i, name in enumerate(TrainConfig.FIRST)}
    slice_fields = sorted(fields(TrainConfig), key=lambda f: rank.get(f.name, len(rank)))
    known = {f.name for f in slice_fields}
    extra = [f for f in fields(SequenceTrainConfig) if f.name not in known]
    known |= {f.name for f in extra}
    extra += [f for f in fields(SegmentTrainConfig) if f.name not in known]
    params = [_parameter(f, hints[f.name]) for f in [*slice_fields, *extra]]
    params = [
        params[0],
        _config_parameter(),
        *params[1:],
        _flag_parameter("resume", "continue from RUN/last.pt"),
        _flag_parameter("force", "replace an earlier run in RUN (default: refuse)"),
    ]
    train.__signature__ = inspect.Signature(params, return_annotation=None)  # type: ignore[attr-defined]
    train.__annotations__ = {p.name: p.annotation for p in params}


_install_signature()
