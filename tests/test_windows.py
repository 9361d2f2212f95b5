import numpy as np
import pytest

from ichdet.data.windows import (
    PRESETS,
    Window,
    apply_window,
    apply_window_blackout_minmax,
    apply_window_sigmoid,
    parse_windows,
    resize_image,
    resize_stack,
    to_uint8,
    window_stack,
)

HU = np.array([[-1000.0, 0.0, 20.0, 40.0], [60.0, 80.0, 1000.0, 3000.0]], dtype=np.float32)


def test_presets():
    assert (PRESETS["brain"].center, PRESETS["brain"].width) == (40, 80)
    assert (PRESETS["subdural"].center, PRESETS["subdural"].width) == (80, 200)
    assert (PRESETS["bone"].center, PRESETS["bone"].width) == (600, 2000)
    assert (PRESETS["soft_tissue"].center, PRESETS["soft_tissue"].width) == (40, 380)


def test_apply_window_closed_form():
    out = apply_window(HU, 40, 80)  # [0, 80] -> [0, 1]
    expected = np.array([[0, 0, 0.25, 0.5], [0.75, 1, 1, 1]], dtype=np.float32)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, expected, atol=1e-7)
    bone = apply_window(HU, 600, 2000)  # [-400, 1600]
    np.testing.assert_allclose(bone[1, 2], (1000 + 400) / 2000, rtol=1e-6)


def test_blackout_minmax_differs_from_clip():
    out = apply_window_blackout_minmax(HU, 40, 80)
    # above the window (1000, 3000) -> bottom (0); then min-max over the image [0, 80].
    expected = np.array([[0, 0, 0.25, 0.5], [0.75, 1, 0, 0]], dtype=np.float32)
    np.testing.assert_allclose(out, expected, atol=1e-7)
    # per-image scaling: the same pixel values scale differently when the image max changes.
    narrow = apply_window_blackout_minmax(np.array([[0.0, 40.0]], np.float32), 40, 80)
    np.testing.assert_allclose(narrow, [[0.0, 1.0]])
    assert not apply_window_blackout_minmax(np.full((2, 2), 500.0, np.float32), 40, 80).any()


def test_sigmoid_window_closed_form():
    eps = 1 / 255
    out = apply_window_sigmoid(np.array([0.0, 40.0, 80.0], np.float32), 40, 80, eps=eps)
    np.testing.assert_allclose(out, [eps, 0.5, 1 - eps], rtol=1e-5)
    assert out.dtype == np.float32


def test_window_stack_shapes_and_order():
    stack = window_stack(HU, ["brain", "subdural", "bone"])
    assert stack.shape == (3, 2, 4) and stack.dtype == np.float32
    np.testing.assert_array_equal(stack[1], apply_window(HU, 80, 200))
    assert stack.min() >= 0 and stack.max() <= 1
    with pytest.raises(ValueError):
        window_stack(HU, ["brain"], kind="fancy")


def test_parse_windows():
    ws = parse_windows("brain, 60/120")
    assert ws[0] == PRESETS["brain"] and ws[1] == Window("60/120", 60.0, 120.0)
    for bad in ("nope", "", "40/0"):
        with pytest.raises(ValueError):
            parse_windows(bad)


def test_resize_helpers():
    img = np.arange(16, dtype=np.float32).reshape(4, 4)
    small = resize_image(img, 2)  # area average of 2x2 blocks
    np.testing.assert_allclose(small, [[2.5, 4.5], [10.5, 12.5]])
    stack = np.stack([img, img * 2])
    out = resize_stack(stack, (2, 2))
    assert out.shape == (2, 2, 2)
    np.testing.assert_allclose(out[1], small * 2)
    assert resize_stack(stack[:1], 8).shape == (1, 8, 8)
    np.testing.assert_array_equal(to_uint8(np.array([0.0, 0.5, 1.0, 2.0])), [0, 128, 255, 255])
