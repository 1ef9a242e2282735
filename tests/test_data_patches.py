"""Tests of cpc_tf.data.patches: grid size and patch geometry."""

import numpy as np
import pytest
import tensorflow as tf

from cpc_tf.data import patches


def _reference(image, p, s):
    """NumPy patch grid of one [H, W, C] image: [gh, gw, p, p, C]."""
    gh = (image.shape[0] - p) // s + 1
    gw = (image.shape[1] - p) // s + 1
    return np.stack(
        [
            np.stack(
                [image[i * s : i * s + p, j * s : j * s + p] for j in range(gw)]
            )
            for i in range(gh)
        ]
    )


@pytest.mark.parametrize(
    "crop, patch, stride, grid",
    [(260, 80, 36, 6), (28, 8, 4, 6), (64, 64, 1, 1), (9, 3, 3, 3)],
)
def test_grid_size(crop, patch, stride, grid):
    assert patches.grid_size(crop, patch, stride) == grid


@pytest.mark.parametrize(
    "crop, patch, stride", [(260, 80, 35), (8, 9, 1), (28, 8, 0), (0, 8, 4)]
)
def test_grid_size_errors_name_all_numbers(crop, patch, stride):
    with pytest.raises(ValueError) as info:
        patches.grid_size(crop, patch, stride)
    for text in (f"crop_size={crop}", f"patch_size={patch}", f"={stride}"):
        assert text in str(info.value)


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_patches_match_numpy_batched_and_unbatched(dtype):
    rng = np.random.default_rng(0)
    images = (rng.random((2, 16, 20, 3)) * 255).astype(dtype)
    got = patches.extract_patches(images, 8, 4).numpy()
    assert got.shape == (2, 3, 4, 8, 8, 3) and got.dtype == dtype
    for b in range(2):
        np.testing.assert_array_equal(got[b], _reference(images[b], 8, 4))
    single = patches.extract_patches(images[1], 8, 4).numpy()
    np.testing.assert_array_equal(single, got[1])


def test_patches_inside_dataset_map_and_unknown_shapes():
    images = np.arange(2 * 12 * 12 * 3, dtype=np.float32).reshape(2, 12, 12, 3)
    ds = tf.data.Dataset.from_tensor_slices(images).map(
        lambda x: patches.extract_patches(x, 6, 3)
    )
    assert ds.element_spec.shape == [3, 3, 6, 6, 3]
    for got, image in zip(ds.as_numpy_iterator(), images):
        np.testing.assert_array_equal(got, _reference(image, 6, 3))

    fn = tf.function(
        lambda x: patches.extract_patches(x, 6, 3),
        input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)],
    )
    np.testing.assert_array_equal(fn(images), ds.batch(2).get_single_element())


def test_patches_reject_bad_tiling_and_rank():
    with pytest.raises(ValueError, match="crop_size=13"):
        patches.extract_patches(tf.zeros([1, 13, 12, 3]), 6, 3)
    with pytest.raises(ValueError, match="rank|shape"):
        patches.extract_patches(tf.zeros([12, 12]), 6, 3)
