"""What the tests share: `ROOT`, flag parsing and the fast tiny flag
setting, tiny backbones and the tiny CPC, a tiny pretrained run and the
check of a protocol's `results.json`, test patches, and a tiny
regression task for the trainer."""

import json
import os
import signal
import time

import keras
import numpy as np
import tensorflow as tf

from cpc_tf import evaluation
from cpc_tf.config import (
    DataConfig,
    ModelConfig,
    OptimConfig,
    PretrainConfig,
    RunConfig,
)
from cpc_tf.config import flags as cpc_flags
from cpc_tf.models import encoders
from cpc_tf.models.cpc import build_cpc
from cpc_tf.rundir import artifacts
from cpc_tf.training import preemption, trainer
from cpc_tf.training.builders import build_cpc_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST = [
    "--steps_to_ignore=1",
    "--steps_to_predict=2",
    "--image_size=20",
    "--crop_size=16",
    "--patch_size=8",
    "--patch_stride=4",
    "--encoder_blocks=1",
    "--encoder_widths=4",
    "--encoder_output_widths=8",
    "--stem_width=4",
    "--context_hidden=8",
    "--context_blocks=1",
    "--target_dim=8",
    "--batch_size=4",
    "--shuffle_buffer=16",
    "--knn_every=0",
]


def parse(*args):
    """A `PretrainConfig` from command-line style arguments."""
    return cpc_flags.parse_pretrain_args(args, program="pretrain")


def textured_patches(n=8, size=12, seed=0):
    """float32 [n, size, size, 3] on the 8-bit grid: a ramp, noise, a tint."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0.1, 0.9, size)[None, :, None, None]
    noise = rng.random((n, size, size, 3)) * 0.3
    tint = rng.random((n, 1, 1, 3)) * 0.4
    images = np.clip(ramp.transpose(0, 2, 1, 3) * 0.5 + noise + tint, 0, 1)
    return (np.round(images * 255) / 255).astype(np.float32)


def in_unit_range(x):
    """Whether every value of `x` lies in [0, 1]."""
    x = np.asarray(x)
    return x.min() >= 0.0 and x.max() <= 1.0


class RegressionTask(trainer.Task):
    """Mean squared error of a Dense layer: a per-example loss."""

    def __init__(self, optimizer):
        inputs = keras.Input((3,))
        self.model = keras.Model(inputs, keras.layers.Dense(2)(inputs))
        self.optimizer = optimizer

    def compute(self, batch, training):
        x, y = batch
        loss = tf.reduce_mean(tf.square(self.model(x) - y))
        return loss, {}

    def optimizer_groups(self):
        return [
            trainer.OptimizerGroup(
                self.optimizer, self.model.trainable_variables
            )
        ]


def run_steps(strategy, make_task, dataset, tmp_path, steps=1, **options):
    keras.utils.set_random_seed(0)
    with strategy.scope():
        task = make_task()
    initial = [v.numpy() for v in task.model.trainable_variables]
    loop = trainer.Trainer(
        strategy,
        task,
        trainer.TrainerOptions(
            model_dir=str(tmp_path), steps=steps, verbose=False, **options
        ),
    )
    per_replica = 8 // strategy.num_replicas_in_sync
    result = loop.fit(lambda ctx: dataset.batch(per_replica).repeat())
    final = [v.numpy() for v in task.model.trainable_variables]
    return initial, final, result, loop


def regression_data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 3)).astype("float32")
    y = 10.0 * rng.normal(size=(8, 2)).astype("float32")
    return tf.data.Dataset.from_tensor_slices((x, y))


TWO_CPUS = ["/cpu:0", "/cpu:1"]
TINY_BACKBONE = dict(
    blocks=(1,),
    widths=(4,),
    output_widths=(8,),
    stem_width=4,
    stem_kernel=3,
    stem_stride=2,
    stem_pool=False,
)
# Twice as wide: for tests whose model must learn or export something.
SMALL_BACKBONE = dict(
    TINY_BACKBONE, widths=(8,), output_widths=(16,), stem_width=8
)


# Two stacks of two blocks: for tests that cut the backbone into blocks.
TWO_STACK_BACKBONE = dict(
    TINY_BACKBONE, blocks=(2, 2), widths=(4, 4), output_widths=(8, 8)
)


def make_tiny_cpc(backbone=None, remat="none"):
    """A built tiny CPC model for `[B, 4, 4, 8, 8, 3]` patch grids
    (`backbone`: `resnet_v2` arguments, default `TINY_BACKBONE`)."""
    return build_cpc(
        encoders.resnet_v2(**(backbone or TINY_BACKBONE)),
        (8, 8, 3),
        (4, 4),
        remat=remat,
        directions=("down", "right"),
        steps_to_ignore=1,
        steps_to_predict=2,
        context_blocks=1,
        context_hidden=8,
        target_dim=8,
    )


# A 3x3 grid of 4x4 patches from a 12x12 crop of 16x16 images.
TINY_GEOMETRY = dict(image_size=16, crop_size=12, patch_size=4, patch_stride=4)
TINY_ENCODER = dict(
    encoder_depth=0,
    encoder_blocks=(1,),
    encoder_widths=(4,),
    encoder_output_widths=(8,),
    stem_width=4,
    stem_kernel=3,
    stem_stride=1,
    stem_pool=False,
)
RESULT_KEYS = {
    "top1",
    "top5",
    "test",
    "validation",
    "label_fraction",
    "labelled_examples",
    "holdout",
    "num_classes",
    "steps",
    "train",
    "checkpoint",
    "classifier",
    "config",
    "protocol",
    "test_set",
    "test_excluded_from_pretraining",
    "selected",
}


def make_pretrained_dir(path, seed=1):
    """A pretraining model_dir with a tiny random encoder (no training)."""
    config = PretrainConfig(
        data=DataConfig(**TINY_GEOMETRY),
        model=ModelConfig(
            **TINY_ENCODER,
            steps_to_ignore=1,
            steps_to_predict=2,
            context_blocks=1,
            context_hidden=8,
            target_dim=8,
        ),
        optim=OptimConfig(beta1=0.8),
        run=RunConfig(model_dir=str(path)),
    )
    os.makedirs(path, exist_ok=True)
    keras.utils.set_random_seed(seed)
    model = build_cpc_model(config)
    artifacts.save_encoder(str(path), model.encoder, (3, 3, 4, 4, 3))
    config.to_json(os.path.join(path, artifacts.CONFIG_FILE))
    return str(path)


def tiny_run(model_dir, **overrides):
    """A `RunConfig` for a few quiet steps."""
    values = dict(
        model_dir=str(model_dir),
        batch_size=8,
        steps=3,
        checkpoint_every=100,
        log_every=1,
        seed=0,
    )
    return RunConfig(**dict(values, **overrides))


def check_results(model_dir, protocol, test_examples=1000):
    """Reads `results.json`, checks it is complete; returns it.

    The default test set is the 1,000 images of `mnist5k:test`.
    """
    with open(os.path.join(model_dir, evaluation.RESULTS_FILE)) as f:
        results = json.load(f)
    assert RESULT_KEYS <= set(results)
    assert results["protocol"] == protocol
    assert 0.0 <= results["top1"] <= results["top5"] <= 1.0
    assert results["test"]["examples"] == test_examples
    assert os.path.isfile(results["classifier"])
    assert os.path.isfile(results["checkpoint"] + ".index")
    return results


def weights_equal(a, b):
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


# -- heads ---------------------------------------------------------------------


def signalling_batches(dataset, loop, at, record):
    """`dataset` (tensors or `(x, y)` pairs) whose batch `at`, when the
    pipeline produces it, calls `record(steps done then)`, sends SIGTERM
    to this process and lets the batch go only once the stop flag is up,
    so that the step that consumes it has the flag to read."""

    def produce(index):
        if int(index) == at:
            record(int(loop.step.numpy()))
            os.kill(os.getpid(), signal.SIGTERM)
            while not preemption.requested():
                time.sleep(0.001)
        return index

    def attach(index, batch):
        index = tf.py_function(produce, [index], tf.int64)
        index.set_shape(())
        return tf.nest.map_structure(
            lambda t: t + tf.cast(index, t.dtype) * 0, batch
        )

    return dataset.enumerate().map(attach)
