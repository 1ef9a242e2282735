"""`CPCPretrainer`: Keras `fit` running the trainer's own step."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import make_tiny_cpc

from cpc_tf.training import trainer
from cpc_tf.training.keras_fit import CPCPretrainer
from cpc_tf.training.tasks import CPCTask


def patch_batches(count=24):
    rng = np.random.default_rng(2)
    patches = rng.uniform(-1, 1, size=(count, 4, 4, 8, 8, 3))
    return tf.data.Dataset.from_tensor_slices(patches.astype("float32"))


@pytest.mark.parametrize("replicas,steps_per_execution", [(2, 1), (1, 3)])
def test_fit_equals_the_trainer(
    tmp_path, two_replicas, replicas, steps_per_execution
):
    # Keras's multi-step loop wraps the step in a `cond`, which a merge
    # call (MirroredStrategy on CPUs) cannot sit in: several steps per
    # execution are tested on one device (TPUs and GPUs need no merge).
    strategy = two_replicas if replicas == 2 else tf.distribute.get_strategy()
    negatives = "global" if replicas == 2 else "local"
    options = dict(clip_global_norm=0.01, ema_decay=0.9)
    keras.utils.set_random_seed(0)
    with strategy.scope():
        model = make_tiny_cpc()
        task = CPCTask(model, keras.optimizers.Adam(1e-3), negatives)
    loop = trainer.Trainer(
        strategy,
        task,
        trainer.TrainerOptions(
            str(tmp_path),
            steps=3,
            verbose=False,
            steps_per_loop=steps_per_execution,
            **options,
        ),
    )
    # One input pipeline: per-replica batches go to the replicas in turn,
    # as Keras splits each global batch of 8.
    result = loop.fit(lambda ctx: patch_batches().batch(8 // replicas))
    keras.utils.set_random_seed(0)
    with strategy.scope():
        fitted = CPCPretrainer(make_tiny_cpc())
        fitted.compile(
            keras.optimizers.Adam(1e-3),
            negatives=negatives,
            steps_per_execution=steps_per_execution,
            **options,
        )
    history = fitted.fit(patch_batches().batch(8), epochs=1, verbose=0)
    for a, b in zip(model.trainable_variables, fitted.trainable_variables):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-6)
    for a, b in zip(loop.ema.averages, fitted.polyak.averages):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-6)
    assert "grad_norm" in history.history and "loss_down" in history.history
    assert result["steps"] == 3


def test_fit_clips_the_summed_gradient(two_replicas):
    # SGD with lr 1: one step of fit moves the weights by the clip norm.
    keras.utils.set_random_seed(0)
    with two_replicas.scope():
        model = CPCPretrainer(make_tiny_cpc())
        model.compile(keras.optimizers.SGD(1.0), clip_global_norm=0.01)
    before = [v.numpy() for v in model.trainable_variables]
    model.fit(patch_batches(8).batch(8), epochs=1, verbose=0)
    moved = np.sqrt(
        sum(
            np.sum((v.numpy() - b) ** 2)
            for v, b in zip(model.trainable_variables, before)
        )
    )
    np.testing.assert_allclose(moved, 0.01, rtol=1e-4)


def test_the_pretrainer_round_trips_through_keras(tmp_path):
    pretrainer = CPCPretrainer(make_tiny_cpc())
    path = str(tmp_path / "pretrainer.keras")
    pretrainer.save(path)
    loaded = keras.saving.load_model(path, compile=False)
    assert isinstance(loaded, CPCPretrainer)
    batch = next(iter(patch_batches(2).batch(2)))
    expected = pretrainer.cpc.total_loss(pretrainer(batch))
    np.testing.assert_allclose(
        loaded.cpc.total_loss(loaded(batch)), expected, rtol=1e-6
    )


def test_fit_in_microbatches_equals_fit_on_the_whole_batch():
    weights = []
    for microbatches in (1, 2):
        keras.utils.set_random_seed(0)
        model = CPCPretrainer(make_tiny_cpc())
        model.compile(
            keras.optimizers.Adam(1e-3),
            clip_global_norm=0.01,
            microbatches=microbatches,
        )
        model.fit(patch_batches(16).batch(8), epochs=1, verbose=0)
        weights.append([v.numpy() for v in model.trainable_variables])
    for a, b in zip(*weights):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


MULTI_WORKER_SCRIPT = """
import sys
import keras
import tensorflow as tf
sys.path.insert(0, {tests!r})
from helpers import make_tiny_cpc
from cpc_tf.training.keras_fit import CPCPretrainer
strategy = tf.distribute.MultiWorkerMirroredStrategy()
with strategy.scope():
    pretrainer = CPCPretrainer(make_tiny_cpc())
    try:
        pretrainer.compile(keras.optimizers.SGD(0.1))
    except ValueError as error:
        print("refused:", error)
"""


def test_fit_under_multi_worker_names_the_trainer():
    # Its own process: a multi-worker strategy's collectives would meet
    # the test process's mirrored one.
    tests = os.path.dirname(os.path.abspath(__file__))
    process = subprocess.run(
        [sys.executable, "-c", MULTI_WORKER_SCRIPT.format(tests=tests)],
        env={
            **{k: v for k, v in os.environ.items() if k != "TF_CONFIG"},
            "TF_CPP_MIN_LOG_LEVEL": "2",
        },
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert process.returncode == 0, process.stderr[-2000:]
    assert "refused:" in process.stdout and "Trainer" in process.stdout
