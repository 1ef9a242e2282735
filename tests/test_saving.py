"""Writing checkpoints: an asynchronous save holds exactly what a
synchronous one holds (every object copied when the save was asked for),
an exit waits for the write in flight, other workers write locally."""

import os

import keras
import numpy as np
import tensorflow as tf
from helpers import make_tiny_cpc
from test_tasks import patch_data

from cpc_tf.training import trainer
from cpc_tf.training.tasks import CPCTask

STEPS = 4


def make_trainer(model_dir, async_checkpoint):
    keras.utils.set_random_seed(0)
    task = CPCTask(make_tiny_cpc(), keras.optimizers.Adam(1e-2))
    options = trainer.TrainerOptions(
        str(model_dir),
        steps=STEPS,
        ema_decay=0.9,
        checkpoint_every=1,
        keep_checkpoints=STEPS,
        async_checkpoint=async_checkpoint,
        verbose=False,
    )
    return trainer.Trainer(tf.distribute.get_strategy(), task, options)


def saved_values(model_dir, step):
    """Every variable of a fresh trainer restored from `ckpt-<step>`,
    with every object of the checkpoint matched."""
    loop = make_trainer(model_dir / "unused", False)
    path = os.path.join(model_dir, "checkpoints", f"ckpt-{step}")
    loop.checkpoint.restore(path).assert_consumed()
    values = [v.numpy() for v in loop.task.model.weights]
    values += [v.numpy() for v in loop.groups[0].optimizer.variables]
    values += [v.numpy() for v in loop.ema.averages]
    return values + [loop.step.numpy()]


def test_async_checkpoints_equal_sync_ones(tmp_path):
    for name, asynchronous in (("sync", False), ("async", True)):
        loop = make_trainer(tmp_path / name, asynchronous)
        result = loop.fit(lambda ctx: patch_data().batch(4).repeat())
        assert result["steps"] == STEPS
        # fit returned: the last write is complete and recorded.
        assert loop.latest_checkpoint().endswith(f"ckpt-{STEPS}")
    for step in range(1, STEPS + 1):
        sync = saved_values(tmp_path / "sync", step)
        copied = saved_values(tmp_path / "async", step)
        assert len(sync) == len(copied) and sync[-1] == step
        for a, b in zip(sync, copied):
            np.testing.assert_array_equal(a, b)
