"""The series stage's model, data and loss, on tiny tensors (no files)."""

import math

import numpy as np
import pytest
import torch

from ichdet.evaluation.metrics import per_label_auc, weighted_log_loss
from ichdet.models.registry import build, kinds
from ichdet.models.sequence import ENCODERS, SequenceConfig, SeriesModel
from ichdet.training.sequence_task import reverse_padded
from ichdet.training.series_data import Series, SeriesSet, collate_series
from ichdet.training.slice_task import weighted_bce

D = 16


def _model(arch: str) -> SeriesModel:
    torch.manual_seed(0)
    model = SeriesModel(SequenceConfig(arch=arch, in_features=D, hidden=32, layers=2, dropout=0))
    for head in (model.slice_head, model.study_head):  # zero at init: give them weights
        torch.nn.init.normal_(head.weight, std=0.5)
    return model.eval()


def _series(n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(1, n, D, generator=g),
        torch.randn(1, n, 6, generator=g),
        torch.arange(n)[None] * 5.0,
    )


def test_every_encoder_is_registered_and_the_kind_builds():
    assert set(ENCODERS) == {"gru", "lstm", "transformer", "conv"}
    assert "sequence" in kinds()
    model = build("sequence", {"arch": "conv", "in_features": D})
    assert isinstance(model, SeriesModel)
    with pytest.raises(ValueError, match="unknown sequence arch 'rnn'"):
        SeriesModel(SequenceConfig(arch="rnn"))


@pytest.mark.parametrize("arch", sorted(ENCODERS))
def test_shapes_finite_and_gradients_reach_every_parameter(arch):
    model = _model(arch).train()
    emb, logits, z = _series(9, 1)
    mask = torch.ones(1, 9, dtype=torch.bool)
    slices, study = model(emb, logits, z, mask)
    assert slices.shape == (1, 9, 6) and study.shape == (1, 6)
    assert torch.isfinite(slices).all() and torch.isfinite(study).all()
    (slices.sum() + study.sum()).backward()
    silent = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert not silent


@pytest.mark.parametrize("arch", sorted(ENCODERS))
def test_padding_never_changes_a_series_outputs(arch):
    """A short series padded into a batch with a long one gives what it gives alone."""
    model = _model(arch)
    long, short = _series(11, 2), _series(6, 3)
    emb = torch.zeros(2, 11, D)
    logits, z = torch.zeros(2, 11, 6), torch.zeros(2, 11)
    emb[0], logits[0], z[0] = long[0][0], long[1][0], long[2][0]
    emb[1, :6], logits[1, :6], z[1, :6] = short[0][0], short[1][0], short[2][0]
    emb[1, 6:] = 99.0  # garbage in the padding must not leak
    mask = torch.arange(11)[None] < torch.tensor([[11], [6]])
    with torch.no_grad():
        batch_slices, batch_study = model(emb, logits, z, mask)
        alone_slices, alone_study = model(*short)
    torch.testing.assert_close(batch_slices[1, :6], alone_slices[0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(batch_study[1], alone_study[0], atol=1e-5, rtol=1e-4)


def test_a_new_model_starts_as_the_cnn():
    """Zero-initialised heads: slice logits are the CNN's, the study logit is their maximum."""
    model = SeriesModel(SequenceConfig(in_features=D)).eval()
    emb, logits, z = _series(5, 4)
    with torch.no_grad():
        slices, study = model(emb, logits, z)
    torch.testing.assert_close(slices, logits)
    torch.testing.assert_close(study, logits.amax(1))


def test_neighbour_differences_and_spacing_are_inputs():
    model = SeriesModel(SequenceConfig(in_features=2, hidden=8))
    emb = torch.tensor([[[0.0, 0.0], [1.0, 2.0], [3.0, 3.0]]])
    logits = torch.zeros(1, 3, 6)
    z = torch.tensor([[0.0, 5.0, 15.0]])
    x = model.features(emb, logits, z, None)[0]
    width = 2 + 6
    prev, nxt = x[:, width : 2 * width], x[:, 2 * width : 3 * width]
    torch.testing.assert_close(prev[:, :2], torch.tensor([[0.0, 0.0], [1.0, 2.0], [2.0, 1.0]]))
    torch.testing.assert_close(nxt[:, :2], torch.tensor([[1.0, 2.0], [2.0, 1.0], [0.0, 0.0]]))
    torch.testing.assert_close(x[:, -2:], torch.tensor([[0.0, 1.0], [1.0, 2.0], [2.0, 0.0]]))


def test_reverse_padded_reverses_only_the_real_slices():
    x = torch.tensor([[1.0, 2.0, 3.0, 0.0], [5.0, 6.0, 7.0, 8.0]])
    mask = torch.tensor([[True, True, True, False], [True, True, True, True]])
    torch.testing.assert_close(
        reverse_padded(x, mask), torch.tensor([[3.0, 2.0, 1.0, 0.0], [8.0, 7.0, 6.0, 5.0]])
    )
    three = x[..., None].repeat(1, 1, 2)
    assert torch.equal(reverse_padded(reverse_padded(three, mask), mask), three)


def _dataset(train: bool, subsample: float = 0.0, reverse: bool = False) -> SeriesSet:
    series = [
        Series(
            "s1",
            "a",
            [f"i{k}" for k in range(4)],
            np.arange(4),
            np.arange(4, dtype=np.float32) * 5,
            np.zeros((4, 6), np.float32),
            np.ones(6, np.float32),
        ),
        Series(
            "s2",
            "b",
            ["j0", "j1"],
            np.array([4, 5]),
            np.array([0, 5], np.float32),
            np.full((2, 6), np.nan, np.float32),
            np.zeros(6, np.float32),
        ),
    ]
    features = np.arange(6 * D, dtype=np.float16).reshape(6, D)
    return SeriesSet(series, features, np.zeros((6, 6), np.float32), train, subsample, reverse)


def test_collate_pads_labels_with_nan_and_marks_the_slices():
    data = _dataset(train=False)
    batch = collate_series([data[0], data[1]])
    assert batch["features"].shape == (2, 4, D)
    assert batch["mask"].tolist() == [[True] * 4, [True, True, False, False]]
    assert torch.isnan(batch["labels"][1]).all()
    assert batch["study_labels"].tolist() == [[1.0] * 6, [0.0] * 6]


def test_training_augmentations_subsample_and_reverse():
    torch.manual_seed(0)
    data = _dataset(train=True, subsample=1.0, reverse=True)
    seen = {tuple(data[0]["z"].tolist()) for _ in range(40)}
    assert any(len(z) < 4 for z in seen)  # slices were dropped
    assert any(z[0] > z[-1] for z in seen)  # and series reversed
    assert all(len(z) >= 2 for z in seen)
    assert tuple(_dataset(train=False)[0]["z"].tolist()) == (0.0, 5.0, 10.0, 15.0)


def test_weighted_bce_masks_unknown_labels_and_equals_the_metric():
    torch.manual_seed(0)
    logits = torch.randn(8, 6)
    target = (torch.rand(8, 6) < 0.3).float()
    target[torch.rand(8, 6) < 0.4] = float("nan")
    loss = weighted_bce(logits, target)
    metric = weighted_log_loss(target.numpy(), torch.sigmoid(logits).numpy())
    assert math.isclose(float(loss), metric, rel_tol=1e-5)
    leaf = logits.clone().requires_grad_()
    unknown = weighted_bce(leaf, torch.full((8, 6), float("nan")))
    unknown.backward()
    assert float(unknown.detach()) == 0.0 and torch.isfinite(leaf.grad).all()


def test_metrics_skip_unknown_labels():
    rng = np.random.default_rng(0)
    y = (rng.random((50, 6)) < 0.3).astype(float)
    p = rng.random((50, 6))
    partial = y.copy()
    partial[25:, :5] = np.nan  # the second half knows only "any"
    auc = per_label_auc(partial, p)
    assert math.isclose(auc["epidural"], per_label_auc(y[:25], p[:25])["epidural"])
    assert math.isclose(auc["any"], per_label_auc(y, p)["any"])
    known_any = weighted_log_loss(partial[:, 5:], p[:, 5:], weights=[2.0])
    assert known_any == pytest.approx(weighted_log_loss(y[:, 5:], p[:, 5:], weights=[2.0]))
    assert math.isnan(weighted_log_loss(np.full((3, 6), np.nan), p[:3]))
