"""Shared by the tests: flag parsing, a fast tiny setting, test patches,
a tiny regression task for the trainer."""

import os

import keras
import numpy as np
import tensorflow as tf

from cpc_tf import flags as cpc_flags
from cpc_tf import trainer

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
