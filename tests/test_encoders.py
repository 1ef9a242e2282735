"""ResNet-v2 family: sizes, geometry, normalization, patch encoder."""

import keras
import numpy as np
import pytest
from helpers import TINY_BACKBONE
from keras import ops

from cpc_tf.models import encoders

# Two stacks (a stride between them), from the shared tiny backbone.
TINY = dict(
    TINY_BACKBONE,
    blocks=(1, 2),
    widths=(4, 8),
    output_widths=(8, 16),
    stem_width=8,
    stem_stride=1,
)


def test_resnet161_size_without_allocating():
    spec = encoders.RESNET_V2_SPECS[161]
    assert spec.blocks == (3, 4, 46)
    assert spec.widths == (64, 128, 512)
    assert spec.output_widths == (256, 512, 4096)
    assert spec.output_dim == 4096
    count = encoders.resnet_v2_param_count(spec, norm="layer")
    assert 300e6 <= count <= 310e6, count


@pytest.mark.parametrize("norm", encoders.NORMALIZATIONS)
def test_param_count_matches_keras(norm):
    model = encoders.resnet_v2(norm=norm, **TINY)
    spec = encoders.resnet_spec(**TINY)
    assert model.count_params() == encoders.resnet_v2_param_count(spec, norm)


def test_param_count_matches_keras_resnet50():
    model = encoders.resnet_v2(50, input_shape=(32, 32, 3))
    spec = encoders.RESNET_V2_SPECS[50]
    assert model.count_params() == encoders.resnet_v2_param_count(spec)
    assert 23e6 < model.count_params() < 26e6
    assert model.output_shape == (None, 1, 1, 2048)


def test_resnet161_geometry():
    # ResNet-161's stem and strides with tiny widths: same feature grid.
    thin = encoders.resnet_v2(
        161, blocks=(1, 1, 1), widths=(2, 2, 2), output_widths=(4, 4, 8)
    )
    assert thin.compute_output_shape((1, 80, 80, 3)) == (1, 5, 5, 8)
    assert thin.compute_output_shape((1, 224, 224, 3)) == (1, 14, 14, 8)
    out = thin(np.zeros((1, 224, 224, 3), "float32"))
    assert tuple(out.shape) == (1, 14, 14, 8)


def test_layer_norm_uses_no_batch_statistics():
    model = encoders.resnet_v2(norm="layer", **TINY)
    assert not any(
        isinstance(layer, keras.layers.BatchNormalization)
        for layer in model.layers
    )
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 8, 8, 3)).astype("float32")
    alone = ops.convert_to_numpy(model(x[:1], training=True))
    batched = ops.convert_to_numpy(model(x, training=True))[:1]
    np.testing.assert_allclose(alone, batched, rtol=1e-4, atol=1e-5)


def test_bad_arguments():
    with pytest.raises(ValueError, match="depth 34"):
        encoders.resnet_v2(34)
    with pytest.raises(ValueError, match="normalization"):
        encoders.resnet_v2(norm="instance", **TINY)
    with pytest.raises(ValueError, match="one entry per stack"):
        encoders.resnet_spec(blocks=(1, 1), widths=(4,), output_widths=(8, 8))


def test_patch_encoder_pools_each_patch():
    backbone = encoders.resnet_v2(**TINY)
    encoder = encoders.PatchEncoder(backbone)
    rng = np.random.default_rng(1)
    patches = rng.normal(size=(2, 3, 4, 8, 8, 3)).astype("float32")
    out = ops.convert_to_numpy(encoder(patches))
    assert out.shape == (2, 3, 4, 16)
    one = ops.convert_to_numpy(backbone(patches[1, 2, 3][None]))
    np.testing.assert_allclose(
        out[1, 2, 3], one.mean(axis=(1, 2))[0], rtol=1e-4, atol=1e-5
    )


def test_patch_encoder_keras_round_trip(tmp_path):
    encoder = encoders.PatchEncoder(encoders.resnet_v2(**TINY))
    inputs = keras.Input((2, 2, 8, 8, 3))
    model = keras.Model(inputs, encoder(inputs))
    x = np.random.default_rng(2).normal(size=(1, 2, 2, 8, 8, 3))
    x = x.astype("float32")
    model.save(tmp_path / "enc.keras")
    loaded = keras.models.load_model(tmp_path / "enc.keras")
    np.testing.assert_allclose(loaded(x), model(x), rtol=1e-6)


def layer_norm_reference(x, gamma, beta, epsilon=1e-5):
    # Appendix A's layer norm: statistics of each example's whole [H, W, C].
    mean = x.mean(axis=(1, 2, 3), keepdims=True)
    variance = x.var(axis=(1, 2, 3), keepdims=True)
    return (x - mean) / np.sqrt(variance + epsilon) * gamma + beta


def test_layer_norm_matches_numpy_and_group_norm():
    rng = np.random.default_rng(2)
    x = rng.normal(2.0, 3.0, size=(3, 5, 4, 6)).astype("float32")
    gamma = rng.normal(size=6).astype("float32")
    beta = rng.normal(size=6).astype("float32")
    expected = layer_norm_reference(x, gamma, beta)
    for relu in (False, True):
        layer = encoders.LayerNorm(relu=relu)
        layer.build(x.shape)
        layer.set_weights([gamma, beta])
        want = np.maximum(expected, 0) if relu else expected
        np.testing.assert_allclose(
            ops.convert_to_numpy(layer(x)), want, rtol=1e-4, atol=1e-5
        )
    group = keras.layers.GroupNormalization(groups=1, epsilon=1e-5)
    group.build(x.shape)
    group.set_weights([gamma, beta])
    np.testing.assert_allclose(
        ops.convert_to_numpy(group(x)), expected, rtol=1e-4, atol=1e-5
    )


def test_layer_norm_in_mixed_precision_and_saving(tmp_path):
    x = np.random.default_rng(3).normal(size=(2, 4, 4, 8)).astype("float32")
    layer = encoders.LayerNorm(relu=True, dtype="mixed_bfloat16")
    out = layer(x)
    assert keras.backend.standardize_dtype(out.dtype) == "bfloat16"
    assert layer.gamma.dtype == "float32"
    np.testing.assert_allclose(
        ops.convert_to_numpy(ops.cast(out, "float32")),
        np.maximum(layer_norm_reference(x, 1.0, 0.0), 0),
        rtol=2e-2,
        atol=2e-2,
    )
    model = encoders.resnet_v2(norm="layer", **TINY)
    path = str(tmp_path / "backbone.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    images = np.random.default_rng(4).normal(size=(2, 8, 8, 3))
    np.testing.assert_allclose(
        ops.convert_to_numpy(loaded(images)),
        ops.convert_to_numpy(model(images)),
        rtol=1e-6,
    )


def test_the_config_knows_every_resnet_depth():
    from cpc_tf.config.model import RESNET_V2_DEPTHS

    assert sorted(encoders.RESNET_V2_SPECS) == sorted(RESNET_V2_DEPTHS)
