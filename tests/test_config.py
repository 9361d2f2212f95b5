"""Training settings and recipes: types, precedence, round trips, and the shipped configs."""

from __future__ import annotations

from dataclasses import fields, replace
from pathlib import Path

import pytest
import timm

from ichdet.cli.train_cmd import settings_from
from ichdet.demo import DemoConfig, sequence_config, train_config
from ichdet.models.sequence import ENCODERS
from ichdet.training.config import (
    SequenceTrainConfig,
    TrainConfig,
    config_for,
    read_recipe,
    recipe_text,
)

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_values_are_coerced_to_the_field_types():
    cfg = TrainConfig.from_dict({"lr": "1e-3", "epochs": "3", "fold": "2", "amp": None})
    assert cfg.lr == 0.001 and cfg.epochs == 3 and cfg.fold == 2 and cfg.amp is None
    assert TrainConfig.from_dict({"fold": "all"}).all_folds
    assert TrainConfig.from_dict({"weight_decay": 0}).weight_decay == 0.0


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"epoch": 3}, "unknown setting\\(s\\) epoch"),
        ({"epochs": "five"}, "epochs: 'five' is not int"),
        ({"epochs": True}, "epochs: True is not int"),
        ({"augment": "yes"}, "augment: 'yes' is not bool"),
        ({"model": None}, "model: a value is required"),
        ({"fold": "last"}, "fold must be a number or 'all'"),
    ],
)
def test_bad_values_name_the_setting(values, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig.from_dict(values, source="recipe.yaml")


def test_recipe_text_reads_back_to_the_same_config(tmp_path):
    cfg = TrainConfig(index="i.parquet", cache="c", out="o", fold="all", lr=3e-4, amp=True)
    (tmp_path / "r.yaml").write_text(recipe_text(cfg, "a comment\nover two lines"))
    assert (tmp_path / "r.yaml").read_text().startswith("# a comment\n# over two lines\n")
    assert TrainConfig.from_dict(read_recipe(tmp_path / "r.yaml")) == cfg


def test_flags_override_the_recipe_which_overrides_the_defaults(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("index: i.parquet\ncache: c\nout: o\nepochs: 7\nlr: 2e-4\nmodel: resnet18\n")
    given = {f.name: None for f in fields(TrainConfig)}  # the CLI passes None for "not given"
    cfg = settings_from({**given, "config": recipe, "epochs": 2, "augment": False})
    assert (cfg.epochs, cfg.augment) == (2, False)  # flags
    assert (cfg.lr, cfg.model) == (2e-4, "resnet18")  # recipe
    assert cfg.batch_size == TrainConfig.batch_size  # default


def test_paths_are_required_from_somewhere(tmp_path):
    given = {f.name: None for f in fields(TrainConfig)}
    with pytest.raises(ValueError, match="missing setting\\(s\\): index, cache"):
        settings_from({**given, "out": "o"})


@pytest.mark.parametrize("recipe", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_recipes_load_and_name_real_models(recipe):
    text = recipe.read_text()
    assert text.startswith("# ") and "Cost" in text  # says what it is for and what it costs
    cfg = config_for(read_recipe(recipe), source=recipe.name)
    if isinstance(cfg, TrainConfig):
        assert timm.is_model(cfg.model), cfg.model
    else:
        assert isinstance(cfg, SequenceTrainConfig) and cfg.arch in ENCODERS


def test_the_shipped_recipes_are_the_ones_the_readme_promises():
    names = {p.name for p in CONFIGS.glob("*.yaml")}
    assert {
        "demo.yaml",
        "rsna-b0-256.yaml",
        "rsna-b7-512.yaml",
        "rsna-resnext101-480.yaml",
        "demo-sequence.yaml",
        "rsna-sequence-gru.yaml",
        "demo-segment.yaml",
        "nifti-segment-b0-256.yaml",
    } <= names


def test_the_demo_recipe_is_the_demos_training_step():
    recipe = TrainConfig.from_dict(read_recipe(CONFIGS / "demo.yaml"))
    assert recipe == replace(train_config(DemoConfig(), "demo-run"), out="runs/demo")


def test_the_demo_sequence_recipe_is_the_demos_series_stage():
    recipe = config_for(read_recipe(CONFIGS / "demo-sequence.yaml"))
    expected = replace(
        sequence_config(DemoConfig(), "demo-run"), cnn="runs/demo", out="runs/demo/sequence"
    )
    assert recipe == expected


def test_recipes_list_what_to_train_on_first():
    assert list(TrainConfig().to_dict())[: len(TrainConfig.FIRST)] == list(TrainConfig.FIRST)
    assert set(TrainConfig().to_dict()) == {f.name for f in fields(TrainConfig)}


def test_the_demo_segment_recipe_is_the_demos_segmenter():
    from ichdet.demo import segment_config

    recipe = config_for(read_recipe(CONFIGS / "demo-segment.yaml"))
    expected = replace(segment_config(DemoConfig(), "demo-run"), out="runs/demo-segmenter")
    assert recipe == expected
