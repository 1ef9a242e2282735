"""The training step that `trainer.Trainer` and Keras `fit` share.

- `Task` says what to compute on a batch, `OptimizerGroup` which optimizer
  updates which variables.
- `replica_step` is one step in replica context: the gradients of the
  task's loss, one all-reduce (`distribute.apply_gradients`, with the
  loss, the metrics and the stop flag packed in), each group clipped and
  applied, then the Polyak average.
- `PolyakAverage`: the exponential moving average of the weights with
  TF's warm-up, updated inside the replicated step.
"""

import contextlib
import dataclasses

import keras
import numpy as np
import tensorflow as tf

from cpc_tf.training import distribute


def _value(variable):
    """The tensor value of a Keras or TF variable."""
    return variable.value if isinstance(variable, keras.Variable) else variable


class PolyakAverage(tf.Module):
    """Exponential moving average of variables with the TF warm-up.

    The decay at update `n` is `min(decay, (1 + n) / (10 + n))`, so short
    runs average recent weights instead of the initial ones. The averages
    are mirrored variables without aggregation: `update` in replica
    context averages each replica's own copy (the replicas' weights are
    equal after every step), with no communication.
    """

    def __init__(self, variables, decay):
        super().__init__(name="polyak_average")
        self.decay = decay
        self.source = list(variables)
        self.averages = [
            tf.Variable(_value(v), trainable=False, name=f"ema_{i}")
            for i, v in enumerate(self.source)
        ]
        self.updates = tf.Variable(
            0, dtype=tf.int64, trainable=False, name="ema_updates"
        )

    def current_decay(self):
        n = tf.cast(self.updates, tf.float32)
        return tf.minimum(self.decay, (1.0 + n) / (10.0 + n))

    def update(self):
        """One averaging step (replica or single-device context)."""
        decay = self.current_decay()
        for average, variable in zip(self.averages, self.source):
            value = tf.cast(_value(variable), average.dtype)
            average.assign(decay * average + (1.0 - decay) * value)
        self.updates.assign_add(1)

    @contextlib.contextmanager
    def swapped(self):
        """Temporarily puts the averaged values into the variables."""
        raw = [np.array(v.numpy()) for v in self.source]
        for variable, average in zip(self.source, self.averages):
            variable.assign(average.numpy())
        try:
            yield
        finally:
            for variable, value in zip(self.source, raw):
                variable.assign(value)


@dataclasses.dataclass
class OptimizerGroup:
    """An optimizer and the variables it alone updates."""

    optimizer: keras.optimizers.Optimizer
    variables: list


class Task:
    """What to train. Subclasses set `model` and implement `compute`."""

    model: keras.Model
    # False: `compute` returns the mean over this replica's examples.
    # True: it returns the loss of the whole global batch, and its gradient
    # on each replica is that replica's part (see `distribute.gather_batch`).
    global_loss = False

    def compute(self, batch, training):
        """Returns `(loss, metrics)`: a float32 scalar and a dict of scalars.

        Runs in replica context on this replica's batch.
        """
        raise NotImplementedError

    def optimizer_groups(self):
        """The `OptimizerGroup`s; their variables must be disjoint."""
        raise NotImplementedError

    def averaged_variables(self):
        """Variables to Polyak-average (default: all trainable ones)."""
        return self.model.trainable_variables

    def gradients(self, groups, batch, loss_scale=None):
        """`(grads, loss, metrics)`: `compute_gradients` unless a task
        computes them its own way (e.g. in micro-batches)."""
        return compute_gradients(self, groups, batch, loss_scale)


def loss_share(task, loss, loss_scale=None):
    """This replica's share of `loss`: divided by the replicas (a
    per-replica mean) or the loss itself (`task.global_loss`), times the
    loss scale if any."""
    replicas = tf.distribute.get_replica_context().num_replicas_in_sync
    share = loss if task.global_loss else loss / replicas
    if loss_scale is not None:
        share = share * tf.cast(loss_scale, share.dtype)
    return share


def compute_gradients(task, groups, batch, loss_scale=None):
    """`(grads, loss, metrics)` of this replica's share of the loss
    (`loss_share`), one gradient per variable of `groups`, in order."""
    variables = [v for g in groups for v in g.variables]
    with tf.GradientTape() as tape:
        loss, metrics = task.compute(batch, training=True)
        share = loss_share(task, loss, loss_scale)
    return tape.gradient(share, variables), loss, metrics


def task_gradients(task, groups, batch, loss_scale=None):
    """`task.gradients`: the gradients as the task computes them."""
    return task.gradients(groups, batch, loss_scale)


def replica_step(
    task,
    groups,
    batch,
    stop=0.0,
    *,
    clip_norm=0.0,
    ema=None,
    loss_scaling=False,
    gradients_fn=task_gradients,
    pack_bytes=0,
):
    """The training step, in replica context; shared by `Trainer` and
    `keras_fit.CPCPretrainer.train_step` (Keras `fit`).

    Gradients of the task's loss, one all-reduce (with the loss, metrics
    and the stop flag packed in), each group clipped and applied
    (`distribute.apply_gradients`), then the Polyak average of each
    replica's own copy.

    Returns:
        `(loss, metrics, grad_norm, finite, stop_sum)`: the replica-mean
        loss and metrics, the global gradient norm before clipping, whether
        every gradient was finite, and the sum of the replicas' stop flags.
    """
    replicas = tf.distribute.get_replica_context().num_replicas_in_sync
    scale = (
        distribute.loss_scale_of(groups[0].optimizer) if loss_scaling else None
    )
    grads, loss, metrics = gradients_fn(task, groups, batch, scale)
    names = sorted(metrics)
    means = [loss] + [metrics[name] for name in names]
    norms, sums, finite = distribute.apply_gradients(
        [(g.optimizer, g.variables) for g in groups],
        grads,
        clip_norm,
        extras=[m / replicas for m in means] + [stop],
        loss_scale=scale,
        pack_bytes=pack_bytes,
    )
    if ema is not None:
        ema.update()
    return (
        sums[0],
        dict(zip(names, sums[1:-1])),
        tf.linalg.global_norm(norms),
        finite,
        sums[-1],
    )
