"""Tests of cpc_tf.data.augment_ops: each operation against PIL or a
hand computation."""

import helpers
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageEnhance, ImageOps

from cpc_tf.data import augment_ops


def _pil(images, fn):
    """Applies a PIL function to each float image; back to float."""
    out = [
        np.asarray(fn(Image.fromarray(np.round(im * 255).astype(np.uint8))))
        for im in images
    ]
    return np.stack(out).astype(np.float32) / 255


@pytest.mark.parametrize(
    "name, pil_fn",
    [
        ("equalize", ImageOps.equalize),
        ("auto_contrast", ImageOps.autocontrast),
        ("invert", ImageOps.invert),
        ("posterize", lambda im: ImageOps.posterize(im, 6)),
        ("solarize", lambda im: ImageOps.solarize(im, 128)),
    ],
)
def test_pixel_ops_match_pil(name, pil_fn):
    """Posterize to 6 bits and solarize at 128 are magnitude 0.5."""
    x = helpers.textured_patches(4)
    u = tf.zeros([4, 3])
    got = augment_ops.op_branch(name, 0.5)(tf.constant(x), u).numpy()
    np.testing.assert_allclose(got, _pil(x, pil_fn), atol=1 / 255 + 1e-6)


@pytest.mark.parametrize(
    "name, enhancer",
    [
        ("contrast", ImageEnhance.Contrast),
        ("color", ImageEnhance.Color),
        ("brightness", ImageEnhance.Brightness),
        ("sharpness", ImageEnhance.Sharpness),
    ],
)
def test_enhance_ops_match_pil_with_random_sign(name, enhancer):
    x = helpers.textured_patches(2)
    # Sign from u[:, 0]: < 0.5 -> factor 1 - 0.9 m, else 1 + 0.9 m.
    u = tf.constant([[0.2, 0, 0], [0.8, 0, 0]], tf.float32)
    got = augment_ops.op_branch(name, 0.5)(tf.constant(x), u).numpy()
    for i, factor in enumerate((0.55, 1.45)):
        image = Image.fromarray(np.round(x[i] * 255).astype(np.uint8))
        expected = np.asarray(enhancer(image).enhance(factor)) / 255
        np.testing.assert_allclose(got[i], expected, atol=2 / 255)


def test_geometric_ops_move_pixels_and_fill_grey():
    x = helpers.textured_patches(2, size=10)
    u = tf.constant([[0.8, 0, 0], [0.2, 0, 0]], tf.float32)
    # Translate by 0.45 * m * 10 = 2 pixels (m = 4 / 9): right, then left.
    got = augment_ops.op_branch("translate_x", 4 / 9)(tf.constant(x), u).numpy()
    np.testing.assert_allclose(got[0, :, :-2], x[0, :, 2:], atol=1e-5)
    np.testing.assert_allclose(got[0, :, -2:], 0.5)
    np.testing.assert_allclose(got[1, :, 2:], x[1, :, :-2], atol=1e-5)
    for name in ("shear_x", "shear_y", "rotate"):
        out = augment_ops.op_branch(name, 1.0)(tf.constant(x), u).numpy()
        assert helpers.in_unit_range(out) and not np.allclose(out, x)
        # The centre pixel stays where it is (transforms about the centre).
        odd = tf.constant(x[:, :9, :9])
        centre = augment_ops.op_branch(name, 1.0)(odd, u).numpy()[:, 4, 4]
        np.testing.assert_allclose(centre, x[:, 4, 4], atol=1e-5)


def test_cutout_paints_a_grey_square():
    x = helpers.textured_patches(1, size=20)
    u = tf.constant([[0.0, 0.5, 0.5]], tf.float32)  # centre (10, 10)
    got = augment_ops.op_branch("cutout", 1.0)(tf.constant(x), u).numpy()[0]
    # Half side round(0.18 * 20) = 4: rows and columns 6..13.
    np.testing.assert_array_equal(got[6:14, 6:14], 0.5)
    np.testing.assert_array_equal(got[:6], x[0, :6])
    np.testing.assert_array_equal(got[:, 14:], x[0, :, 14:])


def test_chroma_maps_saturation_and_hue():
    """Saturation 0 gives TF's greyscale (whose luma weights are rounded
    differently, hence 1e-3); a hue turn keeps luma."""
    x = tf.constant(helpers.textured_patches(2))
    to_grey = augment_ops.chroma_maps(tf.zeros([2]), tf.zeros([2]))
    grey = tf.einsum("nij,nhwj->nhwi", to_grey, x)
    expected = tf.image.rgb_to_grayscale(x)
    np.testing.assert_allclose(grey, tf.tile(expected, [1, 1, 1, 3]), atol=1e-3)
    rotate = augment_ops.chroma_maps(tf.ones([2]), tf.constant([0.2, -0.2]))
    turned = tf.einsum("nij,nhwj->nhwi", rotate, x)
    np.testing.assert_allclose(
        tf.image.rgb_to_grayscale(turned), expected, atol=1e-3
    )
    assert not np.allclose(turned, x, atol=1e-2)
    identity = augment_ops.chroma_maps(tf.ones([1]), tf.zeros([1]))
    np.testing.assert_allclose(identity[0], np.eye(3), atol=1e-5)
