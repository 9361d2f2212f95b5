import timm
import torch

from ichdet.data.augment import RandomTrainAugment, random_window_jitter
from ichdet.models.checkpoint import save_checkpoint
from ichdet.models.slice_cnn import ModelConfig, build_model
from ichdet.training.slice_task import weighted_bce

TINY = "test_efficientnet"


def test_shapes_finiteness_and_gradients_reach_every_parameter():
    torch.manual_seed(0)
    model = build_model(ModelConfig(name=TINY, in_chans=9))
    x = torch.rand(2, 9, 64, 64)
    logits = model(x)
    assert logits.shape == (2, 6) and torch.isfinite(logits).all()
    weighted_bce(logits, torch.ones(2, 6)).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert not missing


def test_a_few_steps_lower_the_loss_on_a_fixed_batch():
    torch.manual_seed(0)
    model = build_model(ModelConfig(name=TINY, in_chans=3))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    x = torch.rand(8, 3, 64, 64)
    y = (torch.rand(8, 6) < 0.3).float()
    losses = []
    for _ in range(15):
        loss = weighted_bce(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0]


def test_weighted_bce_matches_the_metric():
    from ichdet.evaluation.metrics import weighted_log_loss

    logits = torch.randn(5, 6)
    y = (torch.rand(5, 6) < 0.5).float()
    expected = weighted_log_loss(y.numpy(), torch.sigmoid(logits).numpy())
    assert abs(float(weighted_bce(logits, y)) - expected) < 1e-5


def test_local_weights_timm_state_dict_checkpoint_and_ichdet(tmp_path):
    torch.manual_seed(1)
    source = timm.create_model(TINY, num_classes=1000, in_chans=3)
    state = source.state_dict()
    torch.save(state, tmp_path / "plain.pth")
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "ckpt.pth")
    inner = [k for k in state if "blocks" in k and k.endswith("weight")][0]
    for name in ("plain.pth", "ckpt.pth"):
        model = build_model(ModelConfig(name=TINY, in_chans=9), weights=tmp_path / name)
        own = model.backbone.state_dict()
        assert torch.equal(own[inner], state[inner])  # body loaded
        assert own["classifier.weight"].shape[0] == 6  # head re-initialised at 6 logits
        assert own["conv_stem.weight"].shape[1] == 9  # stem adapted to 9 channels
    trained = build_model(ModelConfig(name=TINY, in_chans=3))
    save_checkpoint(tmp_path / "run.pt", {"kind": "slice_cnn", "model": trained.state_dict()})
    reloaded = build_model(ModelConfig(name=TINY, in_chans=3), weights=tmp_path / "run.pt")
    for k, v in trained.state_dict().items():
        assert torch.equal(reloaded.state_dict()[k], v)
    other_chans = build_model(ModelConfig(name=TINY, in_chans=6), weights=tmp_path / "run.pt")
    assert torch.equal(
        other_chans.backbone.state_dict()[inner], trained.backbone.state_dict()[inner]
    )


def test_window_jitter_is_an_affine_window_change():
    torch.manual_seed(0)
    x = torch.rand(4, 6, 8, 8) * 0.5 + 0.25  # inside the window: no clipping
    out = random_window_jitter(x, windows=3)
    # per sample and window: one scale and shift shared by both slices of the window
    for n in range(4):
        for w in range(3):
            a, b = x[n, w].flatten(), out[n, w].flatten()
            slope = (b[1] - b[0]) / (a[1] - a[0])
            assert torch.allclose(b, (a - 0.5) * slope + b[0] - (a[0] - 0.5) * slope, atol=1e-5)
            a2, b2 = x[n, w + 3].flatten(), out[n, w + 3].flatten()
            assert torch.allclose(b2, (a2 - 0.5) * slope + b[0] - (a[0] - 0.5) * slope, atol=1e-5)
    assert not torch.allclose(out, x)
    aug = RandomTrainAugment(windows=3)
    y = aug(torch.rand(2, 9, 32, 32))
    assert y.shape == (2, 9, 32, 32) and y.min() >= 0 and y.max() <= 1


def _v01_checkpoint(model, size: int = 32) -> dict:
    """The dict that ichdet 0.1 (flat modules, before checkpoints had a kind) saved as best.pt."""
    from ichdet.data.cache import CacheSettings

    return {
        "ichdet": 1,
        "train_config": {"model": TINY, "size": size, "fold": 0, "context": 0, "seed": 0},
        "model_config": ModelConfig(name=TINY, in_chans=3).to_dict(),
        "cache_settings": CacheSettings(size=size).to_dict(),
        "context": 0,
        "model": model.state_dict(),
        "ema": None,
        "epoch": 1,
        "valid_loss": 0.5,
    }


def test_a_checkpoint_from_before_the_layout_still_predicts(tmp_path):
    import numpy as np

    from ichdet.inference.runners import load_runner
    from ichdet.models.checkpoint import load_checkpoint

    torch.manual_seed(0)
    model = build_model(ModelConfig(name=TINY, in_chans=3)).eval()
    (tmp_path / "run").mkdir()
    torch.save(_v01_checkpoint(model), tmp_path / "run" / "best.pt")
    assert load_checkpoint(tmp_path / "run" / "best.pt")["kind"] == "slice_cnn"
    runner = load_runner([tmp_path / "run"], device="cpu")
    x = np.random.default_rng(0).integers(0, 256, (2, 3, 32, 32), dtype=np.uint8)
    with torch.no_grad():
        expected = torch.sigmoid(model(torch.from_numpy(x).float() / 255)).numpy()
    np.testing.assert_allclose(runner(x), expected, atol=1e-6)
    assert runner.heatmap_model() is runner.models[0]


def test_the_registry_dispatches_on_kind(tmp_path):
    import pytest

    from ichdet.inference.runners import load_runner
    from ichdet.models import registry
    from ichdet.models.slice_cnn import ICHNet

    ckpt = _v01_checkpoint(build_model(ModelConfig(name=TINY, in_chans=3)))
    assert isinstance(registry.model_from_checkpoint({**ckpt, "kind": "slice_cnn"}), ICHNet)
    assert "slice_cnn" in registry.kinds()
    with pytest.raises(ValueError, match="unknown model kind 'nonsense'"):
        registry.build("nonsense", {})
    with pytest.raises(ValueError, match="must say its model kind"):
        save_checkpoint(tmp_path / "x.pt", {"model": {}})
    save_checkpoint(tmp_path / "seq.pt", {**ckpt, "kind": "sequence"})
    with pytest.raises(ValueError, match="a sequence checkpoint; this runner takes slice CNNs"):
        load_runner([tmp_path / "seq.pt"], device="cpu")
