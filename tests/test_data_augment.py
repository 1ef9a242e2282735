"""Tests of cpc_tf.data.augment: every step, per-patch draws, determinism."""

import dataclasses

import helpers
import numpy as np
import pytest
import tensorflow as tf

from cpc_tf.data import augment, augment_ops

OFF = augment.AugmentConfig(
    randaugment=False,
    elastic_shear_prob=0.0,
    color_histogram_prob=0.0,
    color_jitter_prob=0.0,
    grayscale_prob=0.0,
)


def _only(**kwargs):
    return dataclasses.replace(OFF, **kwargs)


@pytest.mark.parametrize(
    "field, value",
    [
        ("elastic_shear_prob", 1.5),
        ("color_histogram_prob", -0.1),
        ("color_jitter_prob", 2.0),
        ("grayscale_prob", -1.0),
        ("randaugment_num_ops", -1),
        ("randaugment_num_ops", 1.5),
        ("randaugment_magnitude", 11.0),
    ],
)
def test_config_validation_names_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        augment.AugmentConfig(**{field: value})


def test_full_augmentation_shape_range_determinism_and_tf_data():
    x = helpers.textured_patches(16)
    config = augment.AugmentConfig()
    out = augment.augment_patches(x, config, 3).numpy()
    assert out.shape == x.shape and out.dtype == np.float32
    assert helpers.in_unit_range(out)
    np.testing.assert_array_equal(
        out, augment.augment_patches(x, config, 3).numpy()
    )
    assert not np.allclose(out, augment.augment_patches(x, config, 4))
    seed = tf.constant([3, 0], tf.int64)
    ds = tf.data.Dataset.from_tensors(x).map(
        lambda p: augment.augment_patches(p, config, seed)
    )
    np.testing.assert_allclose(ds.get_single_element(), out, atol=1e-6)
    images = augment.augment_images(x, config, 3).numpy()
    np.testing.assert_array_equal(images, out)


def test_chunked_augmentation_equals_one_pass(monkeypatch):
    x = helpers.textured_patches(10, size=8)
    config = augment.AugmentConfig()
    whole = augment.augment_patches(x, config, 9).numpy()
    # Chunks of 3 patches: four of them, the last one padded.
    monkeypatch.setattr(augment, "CHUNK_PIXELS", 3 * 8 * 8)
    np.testing.assert_allclose(
        augment.augment_patches(x, config, 9), whole, atol=1e-6
    )
    # Unknown batch size inside tf.data takes the chunked path too.
    ds = tf.data.Dataset.from_tensor_slices(x).batch(10)
    ds = ds.map(lambda p: augment.augment_patches(p, config, 9))
    assert ds.element_spec.shape[0] is None
    np.testing.assert_allclose(ds.get_single_element(), whole, atol=1e-6)


def test_all_steps_off_is_identity():
    x = helpers.textured_patches()
    np.testing.assert_array_equal(augment.augment_patches(x, OFF, 0), x)


def test_patches_of_one_image_get_different_operations():
    # 36 identical patches, as if cut from one flat image region.
    x = np.repeat(helpers.textured_patches(1), 36, axis=0)
    config = _only(randaugment=True)
    ops = augment.sample_randaugment_ops(36, config, 5).numpy()
    assert ops.shape == (36, 2)
    assert ops.min() >= 0 and ops.max() < len(augment.RANDAUGMENT_OPS)
    assert len({tuple(o) for o in ops}) > 20
    out = augment.augment_patches(x, config, 5).numpy()
    distinct = {o.tobytes() for o in out}
    assert len(distinct) > 20


def test_randaugment_routes_each_patch_to_its_own_ops():
    """At magnitude 0 only AutoContrast, Equalize and Invert change a
    patch, so each patch's expected output follows from its own two ops."""
    x = helpers.textured_patches(60)
    config = _only(randaugment=True, randaugment_magnitude=0.0)
    ops = augment.sample_randaugment_ops(60, config, 11).numpy()
    out = augment.augment_patches(x, config, 11).numpy()
    names = augment.RANDAUGMENT_OPS
    # The three single-patch ops, checked against PIL below.
    reference = {
        "auto_contrast": augment_ops.auto_contrast,
        "equalize": augment_ops.equalize,
        "invert": lambda im: 1.0 - im,
    }
    for i, pair in enumerate(ops):
        expected = tf.constant(x[i : i + 1])
        for op in pair:
            if names[op] in reference:
                expected = reference[names[op]](expected)
        np.testing.assert_allclose(out[i], expected[0], atol=1e-6)
    assert {names[o] for o in ops.ravel()} >= set(reference)


def test_elastic_shear_moves_pixels_not_colours():
    n = 64
    x = helpers.textured_patches(n, size=16)
    config = _only(elastic_shear_prob=1.0)
    out = augment.augment_patches(x, config, 1).numpy()
    assert helpers.in_unit_range(out)
    assert all(not np.allclose(o, p) for o, p in zip(out, x))
    # Pure resampling with edge replication: a flat patch stays flat, and
    # values stay within each patch's own range.
    flat = np.full((2, 16, 16, 3), 0.3, np.float32)
    np.testing.assert_allclose(
        augment.augment_patches(flat, config, 1), flat, atol=1e-6
    )
    assert np.all(out.min(axis=(1, 2)) >= x.min(axis=(1, 2)) - 1e-6)
    assert np.all(out.max(axis=(1, 2)) <= x.max(axis=(1, 2)) + 1e-6)
    # At p=0.2 about a fifth of the patches change.
    changed = np.mean(
        [
            not np.allclose(o, p)
            for o, p in zip(
                augment.augment_patches(x, _only(elastic_shear_prob=0.2), 2),
                x,
            )
        ]
    )
    assert 0.05 < changed < 0.4


def test_color_histogram_is_a_monotone_curve_per_channel():
    x = helpers.textured_patches(32)
    out = augment.augment_patches(x, _only(color_histogram_prob=1.0), 2)
    out = out.numpy()
    assert helpers.in_unit_range(out) and not np.allclose(out, x)
    for o, p in zip(out, x):
        for c in range(3):
            order = np.argsort(p[..., c], axis=None, kind="stable")
            assert np.all(np.diff(o[..., c].ravel()[order]) >= -1e-6)
    ends = np.array([0.0, 1.0], np.float32).reshape(1, 1, 2, 1)
    ends = np.tile(ends, [4, 2, 1, 3])
    np.testing.assert_allclose(
        augment.augment_patches(ends, _only(color_histogram_prob=1.0), 0),
        ends,
        atol=1e-6,
    )


def test_color_jitter_keeps_grey_grey_and_changes_colour():
    x = helpers.textured_patches(32)
    config = _only(color_jitter_prob=1.0)
    out = augment.augment_patches(x, config, 4).numpy()
    assert helpers.in_unit_range(out)
    assert all(not np.allclose(o, p, atol=1e-3) for o, p in zip(out, x))
    grey = np.repeat(x[..., :1], 3, axis=-1)
    out = augment.augment_patches(grey, config, 4).numpy()
    np.testing.assert_allclose(out[..., 0], out[..., 2], atol=1e-5)


def test_grayscale_step():
    x = helpers.textured_patches(400, size=4)
    out = augment.augment_patches(x, _only(grayscale_prob=1.0), 0).numpy()
    expected = tf.image.rgb_to_grayscale(x).numpy()
    np.testing.assert_allclose(out, np.repeat(expected, 3, -1), atol=1e-6)
    out = augment.augment_patches(x, _only(grayscale_prob=0.25), 0).numpy()
    grey = np.all(np.isclose(out[..., 0], out[..., 1]), axis=(1, 2))
    assert 0.18 < grey.mean() < 0.32


def test_inception_crop():
    image = np.random.default_rng(0).integers(0, 256, (40, 30, 3), np.uint8)
    crop = augment.inception_crop(image, 16, 1).numpy()
    assert crop.shape == (16, 16, 3) and crop.dtype == np.float32
    assert helpers.in_unit_range(crop)
    np.testing.assert_array_equal(crop, augment.inception_crop(image, 16, 1))
    assert not np.allclose(crop, augment.inception_crop(image, 16, 2))
    full = augment.inception_crop(
        image, 16, 1, area_range=(1.0, 1.0), aspect_range=(0.75, 0.75)
    )
    resized = tf.image.resize(image[None] / 255, [16, 16])[0]
    np.testing.assert_allclose(full, resized, atol=1e-5)
    ds = tf.data.Dataset.from_tensors(image).map(
        lambda im: augment.inception_crop(im, 16, tf.constant([1, 0]))
    )
    np.testing.assert_allclose(ds.get_single_element(), crop, atol=1e-6)


def test_randaugment_ops_subset():
    from cpc_tf.data.augment import AugmentConfig, sample_randaugment_ops

    config = AugmentConfig(randaugment_ops=("color", "contrast"))
    ops = sample_randaugment_ops(200, config, 3).numpy()
    assert set(ops.ravel()) == {0, 1}  # indices into the two chosen ops
    with pytest.raises(ValueError, match="randaugment_ops"):
        AugmentConfig(randaugment_ops=("warp",))
