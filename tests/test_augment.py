"""The batch augmentation's geometry: exact flips, identities, its ranges, and masks that move
with their images."""

import torch

from ichdet.data.augment import RandomTrainAugment, random_affine_matrices, warp


def test_a_flip_alone_is_exact_and_no_move_is_lossless():
    torch.manual_seed(0)
    x = torch.rand(6, 3, 16, 16)
    flipped = warp(x, random_affine_matrices(6, flip=1.0, affine=0.0))
    assert torch.allclose(flipped, torch.flip(x, dims=[-1]), atol=1e-6)
    same = warp(x, random_affine_matrices(6, flip=0.0, affine=0.0))
    assert torch.allclose(same, x, atol=1e-6)


def test_the_matrices_stay_in_the_ranges_and_cover_them():
    torch.manual_seed(1)
    m = random_affine_matrices(4000)
    linear, shift = m[:, :, :2], m[:, :, 2]
    det = torch.linalg.det(linear)
    flipped = det < 0
    assert abs(flipped.float().mean() - 0.5) < 0.03
    zoom = det.abs().rsqrt()
    moved = ~torch.isclose(zoom, torch.ones(())) | (shift.abs().sum(1) > 0)
    assert abs(moved.float().mean() - 0.7) < 0.03
    assert zoom.min() >= 0.9 - 1e-4 and zoom.max() <= 1.1 + 1e-4
    assert zoom.min() < 0.91 and zoom.max() > 1.09
    # undo the flip, then the rotation angle of what is left
    unflipped = linear.clone()
    unflipped[flipped, 0] *= -1
    angle = torch.rad2deg(torch.atan2(unflipped[:, 0, 1], unflipped[:, 0, 0]))
    assert angle.abs().max() <= 10 + 1e-3 and angle.abs().max() > 9.5
    # the shift in the output frame: p_out = linear^-1 p_in - linear^-1 offset, at most 5 %
    out_shift = -(torch.linalg.inv(linear) @ shift[:, :, None])[..., 0]
    assert out_shift.abs().max() <= 0.1 + 1e-4 and out_shift.abs().max() > 0.09


def _blob(n: int, size: int = 32) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    blob = torch.exp(-((yy - 10.0) ** 2 + (xx - 22.0) ** 2) / 8.0)  # off centre, right side
    return blob.expand(n, 1, size, size)


def test_masks_move_with_their_images():
    torch.manual_seed(2)
    blob = _blob(16)
    images = (0.6 * blob).repeat(1, 3, 1, 1)  # zeros outside the frame in both
    moved, masks = RandomTrainAugment(windows=3).pair(images, blob)
    assert masks.shape == (16, 1, 32, 32)
    centre = moved.shape[-1] // 2
    right = [bool(moved[i, 0, :, centre:].sum() > moved[i, 0, :, :centre].sum()) for i in range(16)]
    assert any(right) and not all(right)  # some were flipped: unmoved masks would not match
    for i in range(16):
        a, b = moved[i, 0].flatten(), masks[i, 0].flatten()
        corr = torch.corrcoef(torch.stack([a, b]))[0, 1]
        assert corr > 0.98, (i, float(corr))
    # the images' blob still holds (nearly) all of its mass: a small move, not a crop
    assert torch.allclose(masks.sum((1, 2, 3)), blob.sum((1, 2, 3)), rtol=0.25)
