"""ResNet-v2 family: sizes, geometry, normalization, patch encoder."""

import keras
import numpy as np
import pytest
from keras import ops

from cpc_tf import encoders

TINY = dict(
    blocks=(1, 2),
    widths=(4, 8),
    output_widths=(8, 16),
    stem_width=8,
    stem_kernel=3,
    stem_stride=1,
    stem_pool=False,
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
