"""PixelCNN: NumPy reference of the appendix, causality, rotations."""

import keras
import numpy as np
import pytest
from keras import ops

from cpc_tf.models.context import DIRECTIONS, PixelCNN, rotate_to_down


def conv2d_valid(x, kernel, bias):
    """NumPy VALID conv: x [B, H, W, C], kernel [kh, kw, C, O]."""
    kh, kw = kernel.shape[:2]
    batch, height, width, _ = x.shape
    out = np.zeros((batch, height - kh + 1, width - kw + 1, kernel.shape[-1]))
    for r in range(out.shape[1]):
        for c in range(out.shape[2]):
            patch = x[:, r : r + kh, c : c + kw, :]
            out[:, r, c] = np.einsum("bhwc,hwco->bo", patch, kernel)
    return out + bias


def pixel_cnn_reference(latents, weights, num_blocks):
    """The appendix pseudocode in NumPy, with the layer's weights."""
    relu = lambda v: np.maximum(v, 0.0)  # noqa: E731
    cres = latents.astype(np.float64)
    for block in range(num_blocks):
        (k_in, b_in, k_row, b_row, k_col, b_col, k_out, b_out) = weights[
            8 * block : 8 * block + 8
        ]
        c = relu(conv2d_valid(cres, k_in, b_in))
        same = np.pad(c, [(0, 0), (0, 0), (1, 1), (0, 0)])
        c = conv2d_valid(same, k_row, b_row)
        c = np.pad(c, [(0, 0), (1, 0), (0, 0), (0, 0)])
        c = relu(conv2d_valid(c, k_col, b_col))
        cres = cres + conv2d_valid(c, k_out, b_out)
    return relu(cres)


def random_weights(layer, seed):
    rng = np.random.default_rng(seed)
    layer.set_weights(
        [0.3 * rng.normal(size=w.shape) for w in layer.get_weights()]
    )


def test_matches_pseudocode():
    layer = PixelCNN(num_blocks=2, hidden_dim=6)
    latents = np.random.default_rng(0).normal(size=(2, 5, 4, 3))
    layer.build(latents.shape)
    random_weights(layer, 1)
    expected = pixel_cnn_reference(latents, layer.get_weights(), 2)
    out = ops.convert_to_numpy(layer(latents.astype("float32")))
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_causal_after_rotation(direction):
    layer = PixelCNN(num_blocks=5, hidden_dim=8)
    rng = np.random.default_rng(2)
    latents = rng.normal(size=(1, 6, 5, 4)).astype("float32")
    grid = ops.convert_to_numpy(rotate_to_down(latents, direction))
    layer.build(grid.shape)
    random_weights(layer, 3)
    base = ops.convert_to_numpy(layer(grid))
    height = grid.shape[1]
    for row in range(height):
        below = grid.copy()
        below[:, row + 1 :] += rng.normal(size=below[:, row + 1 :].shape)
        out = ops.convert_to_numpy(layer(below))
        np.testing.assert_allclose(out[:, : row + 1], base[:, : row + 1])
        same_row = grid.copy()
        same_row[:, row] += 5.0
        out = ops.convert_to_numpy(layer(same_row))
        assert np.abs(out[:, row] - base[:, row]).max() > 1e-3


@pytest.mark.parametrize("direction,k", [("down", 0), ("up", 2)])
def test_rotation_vertical(direction, k):
    grid = np.arange(2 * 3 * 4 * 2).reshape(2, 3, 4, 2)
    out = ops.convert_to_numpy(rotate_to_down(grid, direction))
    np.testing.assert_array_equal(out, np.rot90(grid, k=k, axes=(1, 2)))


def test_rotation_points_direction_down():
    # A grid whose value is the column index: "right" must turn columns
    # into rows, increasing downwards; "left" decreasing downwards.
    grid = np.tile(np.arange(5)[None, None, :, None], (1, 3, 1, 1))
    right = ops.convert_to_numpy(rotate_to_down(grid, "right"))[0, :, 0, 0]
    left = ops.convert_to_numpy(rotate_to_down(grid, "left"))[0, :, 0, 0]
    np.testing.assert_array_equal(right, np.arange(5))
    np.testing.assert_array_equal(left, np.arange(5)[::-1])
    rows = np.tile(np.arange(3)[None, :, None, None], (1, 1, 5, 1))
    up = ops.convert_to_numpy(rotate_to_down(rows, "up"))[0, :, 0, 0]
    np.testing.assert_array_equal(up, np.arange(3)[::-1])


def test_unknown_direction():
    with pytest.raises(ValueError, match="diagonal"):
        rotate_to_down(np.zeros((1, 2, 2, 1)), "diagonal")


def test_config_and_keras_round_trip(tmp_path):
    layer = PixelCNN(num_blocks=2, hidden_dim=4, name="ctx")
    inputs = keras.Input((4, 4, 3))
    model = keras.Model(inputs, layer(inputs))
    clone = PixelCNN.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
    x = np.random.default_rng(4).normal(size=(2, 4, 4, 3)).astype("float32")
    model.save(tmp_path / "ctx.keras")
    loaded = keras.models.load_model(tmp_path / "ctx.keras")
    np.testing.assert_allclose(loaded(x), model(x), rtol=1e-6)
