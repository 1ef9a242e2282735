"""`CPCTask`: exact micro-batching (K slices give the whole batch's
gradient and update, with the same negatives), on one device and two."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import FAST, ROOT, make_tiny_cpc, parse, run_steps

from cpc_tf.config import FlagError
from cpc_tf.training.tasks import CPCTask


def patch_data(count=8):
    rng = np.random.default_rng(3)
    patches = rng.uniform(-1, 1, size=(count, 4, 4, 8, 8, 3))
    return tf.data.Dataset.from_tensor_slices(patches.astype("float32"))


def gradients(task, patches):
    grads, loss, _ = task.gradients(task.optimizer_groups(), patches)
    return [g.numpy() for g in grads], float(loss)


@pytest.mark.parametrize("negatives", ["local", "global"])
def test_microbatched_gradient_is_the_whole_batch_gradient(negatives):
    keras.utils.set_random_seed(0)
    model = make_tiny_cpc()
    patches = next(iter(patch_data().batch(8)))
    optimizer = keras.optimizers.SGD(0.1)
    expected, loss = gradients(CPCTask(model, optimizer, negatives), patches)
    for microbatches in (2, 4):
        task = CPCTask(model, optimizer, negatives, microbatches)
        got, got_loss = gradients(task, patches)
        np.testing.assert_allclose(got_loss, loss, rtol=1e-6)
        for a, b in zip(got, expected):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def train(strategy, negatives, microbatches, model_dir, **cpc_args):
    """Two steps of the tiny CPC (`make_tiny_cpc(**cpc_args)`), Adam, the
    clip and the Polyak average: `run_steps`'s results."""
    return run_steps(
        strategy,
        lambda: CPCTask(
            make_tiny_cpc(**cpc_args),
            keras.optimizers.Adam(1e-3),
            negatives,
            microbatches=microbatches,
        ),
        patch_data(),
        model_dir,
        steps=2,
        clip_global_norm=0.01,
        ema_decay=0.9,
    )


@pytest.mark.parametrize(
    "replicas,negatives", [(1, "local"), (2, "local"), (2, "global")]
)
def test_microbatched_updates_equal_whole_batch_updates(
    tmp_path, two_replicas, replicas, negatives
):
    # Graph mode (the trainer's compiled loop), one all-reduce, the clip
    # of the summed gradient, Adam and the Polyak average: all as today.
    strategy = two_replicas if replicas == 2 else tf.distribute.get_strategy()
    whole = train(strategy, negatives, 1, tmp_path / "whole")
    for microbatches in sorted({2, 4 // replicas}):
        sliced = train(
            strategy, negatives, microbatches, tmp_path / f"k{microbatches}"
        )
        np.testing.assert_allclose(
            sliced[2]["first_loss"], whole[2]["first_loss"], rtol=1e-6
        )
        for a, b in zip(sliced[1], whole[1]):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        for a, b in zip(sliced[3].ema.averages, whole[3].ema.averages):
            np.testing.assert_allclose(
                a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6
            )


def test_a_batch_normalised_encoder_is_refused():
    with pytest.raises(FlagError, match="--microbatches"):
        parse(
            f"--flagfile={ROOT}/flags/demo.cfg",
            *FAST,
            "--norm=batch",
            "--microbatches=2",
        )
    with pytest.raises(ValueError, match="batch statistics"):
        from cpc_tf.models import encoders
        from cpc_tf.models.cpc import build_cpc

        model = build_cpc(
            encoders.resnet_v2(
                blocks=(1,), widths=(4,), output_widths=(8,), norm="batch"
            ),
            (8, 8, 3),
            (4, 4),
            directions=("down",),
            steps_to_ignore=1,
            steps_to_predict=2,
        )
        CPCTask(model, keras.optimizers.SGD(0.1), microbatches=2)


def test_loss_scaling_scales_the_latent_gradient_alike(tmp_path):
    # The float16 path: the loss scale multiplies the share whose gradient
    # reaches the latents, and the optimizer unscales the summed result.
    runs = [
        run_steps(
            tf.distribute.get_strategy(),
            lambda k=k: CPCTask(
                make_tiny_cpc(),
                keras.optimizers.LossScaleOptimizer(
                    keras.optimizers.Adam(1e-3)
                ),
                microbatches=k,
            ),
            patch_data(),
            tmp_path / f"k{k}",
            steps=2,
            loss_scaling=True,
        )
        for k in (1, 2)
    ]
    (initial, whole, _, _), (_, sliced, _, _) = runs
    assert any(not np.array_equal(a, b) for a, b in zip(initial, whole))
    for a, b in zip(sliced, whole):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
