"""Writing checkpoints: where each worker writes, and writes that don't stall.

`CheckpointWriter` saves a `tf.train.Checkpoint` with a
`tf.train.CheckpointManager`:

- The chief writes `model_dir/checkpoints`. TF needs every worker of a
  multi-worker run to save too; the others write to a temporary
  directory on their local disk (not beside the model directory, which
  may be a bucket), deleted by `close`.
- With `async_save` (`--async_checkpoint`) a save copies every variable
  to host memory (TF's `CheckpointOptions(enable_async=True)`: one more
  float32 copy of the checkpoint in host RAM, about 5.7 GB at ResNet-161
  with Adam and the Polyak average) and writes the files in a TF thread
  while training goes on. `sync` waits for the write in flight; `close`,
  which the trainer calls before it returns (also when preempted or on a
  NaN), syncs first. The manager records a checkpoint in its state file
  only once its files are complete, so an interrupted asynchronous write
  is an interrupted save like any other (`training.checkpoints`).

Keras 3's TensorFlow variable creates a new `tf.Variable` in
`_copy_trackable_to_cpu` each time TF's asynchronous checkpoint asks for
its host copy, which TF does inside a `tf.function` from the second save
on, where creating a variable is an error. `_host_copies_of_keras_variables`
makes a Keras variable's host copy that of the `tf.Variable` it wraps
(the same saved tensors, refreshed by TF on every save); the tests restore
every asynchronous checkpoint and compare it with a synchronous one.
"""

import os
import shutil
import tempfile

import tensorflow as tf

from cpc_tf.rundir import artifacts
from cpc_tf.training import distribute


def _copy_wrapped_variable_to_cpu(variable, object_map):
    variable.value._copy_trackable_to_cpu(object_map)
    object_map[variable] = object_map[variable.value]


def _host_copies_of_keras_variables():
    """Gives Keras's TF variable a host copy TF can refresh (see the
    module); once per process."""
    from keras.src.backend.tensorflow.core import Variable

    Variable._copy_trackable_to_cpu = _copy_wrapped_variable_to_cpu


def write_directory(model_dir, strategy):
    """Where this process writes: `model_dir` on the chief, else a new
    temporary directory on the local disk."""
    _, task_id, is_chief, _ = distribute.cluster_task(strategy)
    if is_chief:
        return model_dir
    return tempfile.mkdtemp(prefix=f"cpc_tf_worker{task_id}_")


class CheckpointWriter:
    """Saves `checkpoint` for `strategy`'s process (see the module).

    Args:
        checkpoint: the `tf.train.Checkpoint`.
        model_dir: the run's directory (any TF file system).
        strategy: the `tf.distribute` strategy (who is the chief).
        keep: checkpoints kept.
        async_save: write in the background.
    """

    def __init__(self, checkpoint, model_dir, strategy, keep, async_save):
        self.checkpoint = checkpoint
        self.model_dir = model_dir
        self.directory = write_directory(model_dir, strategy)
        self.keep = keep
        self.options = tf.train.CheckpointOptions(enable_async=async_save)
        self.async_save = async_save
        if async_save:
            _host_copies_of_keras_variables()
        self.manager = None
        self.reopen()

    def reopen(self):
        """Reads the state file again (after `checkpoints.resume`)."""
        self.manager = tf.train.CheckpointManager(
            self.checkpoint,
            os.path.join(self.directory, artifacts.CHECKPOINT_DIR),
            max_to_keep=self.keep,
        )

    def save(self, step):
        """Saves `ckpt-<step>`; returns once the variables are copied
        (asynchronous) or written."""
        self.manager.save(checkpoint_number=step, options=self.options)

    def sync(self):
        """Waits for an asynchronous write in flight."""
        if self.async_save:
            self.checkpoint.sync()

    def close(self):
        """Syncs, and deletes a non-chief worker's temporary directory."""
        self.sync()
        if self.directory != self.model_dir:
            shutil.rmtree(self.directory, ignore_errors=True)
