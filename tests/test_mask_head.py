"""The slice CNN's mask head: a loss on where each subtype lies, from the phantoms' masks."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader

from ichdet.data.cache import CacheSettings
from ichdet.data.index import build_index, write_index
from ichdet.data.mask_join import attach_masks, parse_label_map
from ichdet.data.prepare import prepare
from ichdet.inference.export import export_onnx
from ichdet.inference.predict import predict
from ichdet.inference.runners import load_runner
from ichdet.labels import LABELS
from ichdet.models.checkpoint import load_checkpoint
from ichdet.models.slice_cnn import ModelConfig, build_model
from ichdet.synth.studies import synthesize
from ichdet.training.config import SequenceTrainConfig, TrainConfig
from ichdet.training.distributed import make_runtime, seed_everything
from ichdet.training.sequence_task import fit_sequence
from ichdet.training.slice_task import SliceTask, fit, mask_bce, weighted_bce

TINY = dict(model="test_efficientnet", size=64, batch_size=8, workers=0, lr=3e-3, epochs=1)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("maskhead")
    synthesize(root / "data", studies=8, seed=3, size=64, masks=True)
    plain, errors, report = build_index(root / "data", folds=2)
    labels = parse_label_map(None)
    df, problems, _ = attach_masks(plain, root / "data" / "masks", root / "m", labels)
    assert problems == [] and df["mask_known"].all()
    write_index(plain, errors, report, root / "plain.parquet")
    write_index(df, errors, report, root / "index.parquet")
    prepare(df, root / "cache", CacheSettings(size=64))
    return root


def _config(root, **kw) -> TrainConfig:
    return TrainConfig(
        index=str(root / "index.parquet"), cache=str(root / "cache"), out=str(root / "run"), **kw
    )


def test_mask_head_shares_one_pass_and_leaves_forward_alone():
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="test_efficientnet", mask_outputs=5)).eval()
    x = torch.rand(2, 3, 64, 64)
    logits, masks = model(x, masks=True)
    assert masks.shape == (2, 5, 2, 2)  # stride 32
    assert torch.allclose(model(x), logits)
    plain = build_model(ModelConfig(name="test_efficientnet")).eval()
    assert plain.mask_head is None
    with pytest.raises(ValueError, match="no mask head"):
        plain(x, masks=True)


@pytest.mark.parametrize("stride", [32, 16])
def test_the_embedding_ends_with_each_subtypes_peak_cell(stride):
    """The series stage reads the pooled features and, with a mask head, the largest cell
    logit per subtype (a small bleed that average pooling dilutes)."""
    torch.manual_seed(0)
    config = ModelConfig(name="test_efficientnet", mask_outputs=5, mask_stride=stride)
    model = build_model(config).eval()
    plain = build_model(ModelConfig(name="test_efficientnet")).eval()
    x = torch.rand(3, 3, 64, 64)
    with torch.no_grad():
        features, logits = model.embed(x)
        expected_logits, masks = model(x, masks=True)
    assert features.shape == (3, model.num_features) == (3, plain.num_features + 5)
    assert torch.allclose(logits, expected_logits, atol=1e-6)
    assert torch.allclose(features[:, -5:], masks.amax(dim=(2, 3)), atol=1e-6)
    assert plain.embed(x)[0].shape == (3, plain.num_features)


@pytest.mark.parametrize("stride", [16, 8])
def test_a_finer_mask_head_reads_an_earlier_stage(stride):
    torch.manual_seed(0)
    config = ModelConfig(name="test_efficientnet", mask_outputs=5, mask_stride=stride)
    model = build_model(config).eval()
    x = torch.rand(2, 3, 64, 64)
    logits, masks = model(x, masks=True)
    assert masks.shape == (2, 5, 64 // stride, 64 // stride)
    assert torch.allclose(model(x), logits, atol=1e-6)
    with pytest.raises(ValueError, match="no stage at stride 64"):
        build_model(ModelConfig(name="test_efficientnet", mask_outputs=5, mask_stride=64))


def test_mask_bce_follows_the_coarse_masks_of_known_slices():
    masks = torch.zeros(2, 5, 64, 64)
    masks[0, 4, 5:9, 40:50] = 1.0  # a subdural in the top-right cell of slice 0
    target = torch.nn.functional.adaptive_max_pool2d(masks, (2, 2))
    assert target[0, 4, 0, 1] == 1 and target.sum() == 1
    right, wrong = target * 40 - 20, 20 - target * 40
    known = torch.ones(2)
    assert float(mask_bce(right, masks, known)) < 1e-6 < 1.0 < float(mask_bce(wrong, masks, known))
    # an unknown mask (slice 1) adds nothing, whatever the head says there
    only_first = torch.tensor([1.0, 0.0])
    base = mask_bce(right, masks, only_first)
    noisy = right.clone()
    noisy[1] = 20.0
    assert float(mask_bce(noisy, masks, only_first)) == pytest.approx(float(base))
    assert float(mask_bce(noisy, masks, known)) > 1.0


def test_the_loss_adds_the_weighted_mask_term(prepared):
    cfg = _config(prepared, mask_loss=0.5, augment=False, **TINY)
    task = SliceTask(cfg)
    x, (y, masks, known) = next(iter(DataLoader(task.train_set, batch_size=8)))
    assert masks.shape == (8, 5, 64, 64) and masks.dtype == torch.uint8 and known.all()
    rt = make_runtime("cpu", False, False)
    torch.manual_seed(0)
    model = task.build_model()
    assert model.mask_head is not None
    loss, n = task.loss(model, (x, (y, masks, known)), rt)
    logits, mask_logits = model(x.float() / 255, masks=True)
    expected = weighted_bce(logits, y) + 0.5 * mask_bce(mask_logits, masks.float() / 255, known)
    assert n == 8 and loss.item() == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.slow
def test_training_with_masks_trains_the_head_and_predicts_as_usual(prepared, tmp_path):
    cfg = _config(prepared, mask_loss=1.0, **TINY)
    cfg.out = str(tmp_path / "run")
    seed_everything(cfg.seed)  # what the loop does before building the model
    initial = SliceTask(cfg).build_model().mask_head.weight.detach().clone()
    fit(cfg, log=lambda _: None)
    ckpt = load_checkpoint(tmp_path / "run" / "best.pt")
    assert ckpt["model_config"]["mask_outputs"] == 5
    trained = ckpt["model"]["mask_head.weight"]
    assert trained.shape == initial.shape and not torch.allclose(trained, initial)
    # a series stage over its embeddings (pooled features + each subtype's peak cell logit)
    seq = SequenceTrainConfig(
        index=cfg.index,
        cache=cfg.cache,
        cnn=cfg.out,
        out=str(tmp_path / "run" / "sequence"),
        epochs=1,
        batch_size=2,
        hidden=16,
        embed_tta=True,
    )
    fit_sequence(seq, log=lambda _: None)
    width = load_checkpoint(tmp_path / "run" / "sequence" / "best.pt")["model_config"]
    assert width["in_features"] == build_model(ModelConfig(**ckpt["model_config"])).num_features
    # the checkpoint predicts through the usual runner, both stages
    test = prepared / "data" / "stage_2_test"
    torch_runner = load_runner([tmp_path / "run"])
    assert torch_runner.series is not None
    torch_result = predict(torch_runner, test, tmp_path / "torch")
    assert len(torch_result.slices) > 0
    # ... and exports to ONNX (the CNN, the embeddings, the series stage): the same results
    onnx = export_onnx([tmp_path / "run"], tmp_path / "model.onnx")
    onnx_result = predict(load_runner([onnx]), test, tmp_path / "onnx")
    columns = ["image_id", *LABELS, *(f"cnn_{n}" for n in LABELS)]
    a = torch_result.slices[columns].sort_values("image_id").reset_index(drop=True)
    b = onnx_result.slices[columns].sort_values("image_id").reset_index(drop=True)
    assert a["image_id"].tolist() == b["image_id"].tolist()
    assert np.allclose(a[columns[1:]], b[columns[1:]], atol=1e-4)


def test_a_mask_loss_without_masks_is_refused(prepared):
    cfg = _config(prepared, mask_loss=1.0, **TINY)
    cfg.index = str(prepared / "plain.parquet")
    with pytest.raises(ValueError, match="index --masks"):
        SliceTask(cfg)
    frame = pd.read_parquet(prepared / "plain.parquet")
    assert "mask_known" not in frame  # the fixture's plain index really has none
