"""The CPC model: training with fit, serialization, mixed precision."""

import keras
import numpy as np
import pytest
from helpers import SMALL_BACKBONE
from keras import ops

from cpc_tf.models import encoders
from cpc_tf.models.context import DIRECTIONS
from cpc_tf.models.cpc import CPC, build_cpc


def tiny_cpc(**kwargs):
    kwargs.setdefault("context_hidden", 16)
    kwargs.setdefault("context_blocks", 2)
    kwargs.setdefault("target_dim", 8)
    return build_cpc(
        encoders.resnet_v2(**SMALL_BACKBONE), (8, 8, 3), (5, 5), **kwargs
    )


def patches(batch=4, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(-1, 1, size=(batch, 5, 5, 8, 8, 3)).astype("float32")


def test_outputs_and_initial_loss():
    model = tiny_cpc()
    terms = model(patches())
    assert set(terms) == {
        f"{kind}_{d}" for d in DIRECTIONS for kind in ("loss", "accuracy")
    }
    # At initialisation every one of the B*H*W = 100 targets is about
    # equally likely: the loss is close to log(100).
    for direction in DIRECTIONS:
        assert abs(float(terms[f"loss_{direction}"]) - np.log(100)) < 0.5


def test_heads_per_direction_or_shared():
    separate = tiny_cpc()
    shared = tiny_cpc(share_context=True)
    assert len(separate.contexts) == 4 and len(shared.contexts) == 1
    # One predictor per offset and head: steps 2..3 -> offset 3 only.
    assert separate.offsets == (3,)
    assert len(separate.predictors) == 4
    many = tiny_cpc(steps_to_ignore=0, steps_to_predict=3, directions=["up"])
    assert many.offsets == (1, 2, 3) and len(many.predictors) == 3


def test_loss_falls_with_fit():
    keras.utils.set_random_seed(0)
    model = tiny_cpc(directions=("down", "right"))
    model.compile(optimizer=keras.optimizers.Adam(3e-3))
    batch = patches(8)
    first = float(model.total_loss(model(batch)))
    history = model.fit(
        np.tile(batch, (30, 1, 1, 1, 1, 1)),
        batch_size=8,
        epochs=1,
        shuffle=False,
        verbose=0,
    )
    last = float(model.total_loss(model(batch)))
    assert last < first - 0.5, (first, last)
    for name in ("loss", "loss_down", "accuracy_right"):
        assert name in history.history


def test_keras_round_trip(tmp_path):
    model = tiny_cpc(directions=("down", "left"), emb_scale=0.2)
    x = patches(2)
    model.save(tmp_path / "cpc.keras")
    loaded = keras.models.load_model(tmp_path / "cpc.keras")
    assert isinstance(loaded, CPC)
    assert loaded.directions == ("down", "left") and loaded.emb_scale == 0.2
    expected, got = model(x), loaded(x)
    for name in expected:
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-6)
    np.testing.assert_allclose(loaded.encoder(x), model.encoder(x), rtol=1e-6)


def test_mixed_bfloat16():
    keras.mixed_precision.set_dtype_policy("mixed_bfloat16")
    try:
        model = tiny_cpc()
        terms = model(patches())
        latents = model.encoder(patches())
    finally:
        keras.mixed_precision.set_dtype_policy("float32")
    assert latents.dtype == "bfloat16"
    for value in terms.values():
        assert value.dtype == "float32"
        assert np.isfinite(ops.convert_to_numpy(value))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(directions=["diagonal"]), "directions"),
        (dict(steps_to_ignore=3, steps_to_predict=3), "steps_to_ignore"),
        (dict(steps_to_predict=5), "patch grid too small"),
    ],
)
def test_bad_settings_fail_clearly(kwargs, match):
    with pytest.raises(ValueError, match=match):
        tiny_cpc(**kwargs)
