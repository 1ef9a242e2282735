"""The one training loop that pretraining and every evaluation share.

A `Task` says what to compute on a batch; the `Trainer` runs it under a
`tf.distribute` strategy with what the paper needs around it: gradients
summed over replicas before global-norm clipping, one or more optimizers on
disjoint variables, Polyak averaging with warm-up, checkpoints that survive
`kill -9` and save on SIGTERM, a NaN/Inf guard that never overwrites a good
checkpoint, TensorBoard summaries and a console progress bar.
"""

import contextlib
import dataclasses
import math
import os
import signal
import sys
import time

import keras
import numpy as np
import tensorflow as tf

from cpc_tf import artifacts, distribute


class NonFiniteLossError(FloatingPointError):
    """The loss or gradient norm became NaN/Inf; nothing was saved."""


def _value(variable):
    """The tensor value of a Keras or TF variable."""
    return variable.value if isinstance(variable, keras.Variable) else variable


class PolyakAverage(tf.Module):
    """Exponential moving average of variables with the TF warm-up.

    The decay at update `n` is `min(decay, (1 + n) / (10 + n))`, so short
    runs average recent weights instead of the initial ones.
    """

    def __init__(self, variables, decay):
        super().__init__(name="polyak_average")
        self.decay = decay
        self.source = list(variables)
        self.averages = [
            tf.Variable(
                _value(v),
                trainable=False,
                name=f"ema_{i}",
                aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
            )
            for i, v in enumerate(self.source)
        ]
        self.updates = tf.Variable(
            0,
            dtype=tf.int64,
            trainable=False,
            name="ema_updates",
            aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
        )

    def current_decay(self):
        n = tf.cast(self.updates, tf.float32)
        return tf.minimum(self.decay, (1.0 + n) / (10.0 + n))

    def update(self):
        """One averaging step; call in cross-replica context."""
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


@dataclasses.dataclass
class TrainerOptions:
    """How the loop runs (a subset of `config.RunConfig` plus clipping)."""

    model_dir: str
    steps: int
    clip_global_norm: float = 0.0
    ema_decay: float = 0.0
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    log_every: int = 100
    jit_compile: bool = False
    verbose: bool = True
    images_per_step: int = 0


def _learning_rates(groups):
    rates = {}
    for index, group in enumerate(groups):
        key = "lr" if len(groups) == 1 else f"lr_{index}"
        rates[key] = float(
            keras.ops.convert_to_numpy(group.optimizer.learning_rate)
        )
    return rates


class Trainer:
    """Runs a `Task` for `options.steps` steps under `strategy`.

    Build the task's model and optimizers inside `strategy.scope()` before
    constructing the trainer.
    """

    def __init__(self, strategy, task, options):
        self.strategy = strategy
        self.task = task
        self.options = options
        self.groups = task.optimizer_groups()
        seen = set()
        for group in self.groups:
            for variable in group.variables:
                key = id(variable)
                if key in seen:
                    raise ValueError(
                        f"Variable {variable.path} is in two optimizer groups."
                    )
                seen.add(key)
        with strategy.scope():
            self.step = tf.Variable(
                0,
                dtype=tf.int64,
                trainable=False,
                name="global_step",
                aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
            )
            self.ema = None
            if options.ema_decay:
                self.ema = PolyakAverage(
                    task.averaged_variables(), options.ema_decay
                )
            for group in self.groups:
                group.optimizer.build(group.variables)
        trackables = dict(model=task.model, step=self.step)
        for index, group in enumerate(self.groups):
            trackables[f"optimizer_{index}"] = group.optimizer
        if self.ema is not None:
            trackables["ema"] = self.ema
        self.checkpoint = tf.train.Checkpoint(**trackables)
        self.manager = tf.train.CheckpointManager(
            self.checkpoint,
            os.path.join(options.model_dir, artifacts.CHECKPOINT_DIR),
            max_to_keep=options.keep_checkpoints,
        )
        self._train_step = tf.function(
            self._distributed_step, jit_compile=False
        )
        self._stop_requested = False
        self._writer = None

    def restore(self):
        """Restores the latest checkpoint; returns the step it was at."""
        path = self.manager.latest_checkpoint
        if path:
            self.checkpoint.restore(path).assert_existing_objects_matched()
        return int(self.step.numpy())

    def _replica_step(self, batch):
        context = tf.distribute.get_replica_context()
        replicas = context.num_replicas_in_sync
        variables = [v for g in self.groups for v in g.variables]
        with tf.GradientTape() as tape:
            loss, metrics = self.task.compute(batch, training=True)
            share = loss if self.task.global_loss else loss / replicas
        grads = tape.gradient(share, variables)
        grads = [
            tf.zeros_like(v) if g is None else g
            for g, v in zip(grads, variables)
        ]
        shares, norm = distribute.aggregate_and_clip(
            grads, self.options.clip_global_norm
        )
        start = 0
        for group in self.groups:
            stop = start + len(group.variables)
            group.optimizer.apply(shares[start:stop], group.variables)
            start = stop
        return loss, metrics, norm

    def _distributed_step(self, iterator):
        batch = next(iterator)
        loss, metrics, norm = self.strategy.run(
            self._compute_fn(), args=(batch,)
        )
        mean = tf.distribute.ReduceOp.MEAN
        loss = self.strategy.reduce(mean, loss, axis=None)
        metrics = {
            k: self.strategy.reduce(mean, v, axis=None)
            for k, v in metrics.items()
        }
        norm = self.strategy.experimental_local_results(norm)[0]
        if self.ema is not None:
            self.ema.update()
        self.step.assign_add(1)
        return loss, metrics, norm

    def _compute_fn(self):
        if self.options.jit_compile:
            return tf.function(self._replica_step, jit_compile=True)
        return self._replica_step

    def _request_stop(self, signum, frame):
        self._stop_requested = True

    def fit(self, dataset_fn):
        """Trains until `options.steps`, resuming from the last checkpoint.

        Args:
            dataset_fn: `InputContext -> tf.data.Dataset` of per-replica
                batches (`strategy.distribute_datasets_from_function`). It
                is called after restoring, with the restored step available
                as `trainer.step` for reseeding.

        Returns:
            A dict: steps, first/last loss and metrics, images/s, seconds.
        """
        options = self.options
        start_step = self.restore()
        if start_step >= options.steps:
            return self._summary(start_step, start_step, None, None, {}, 0.0)
        dataset = self.strategy.distribute_datasets_from_function(dataset_fn)
        iterator = iter(dataset)
        writer = self.writer() if self.is_chief() else None
        previous = signal.signal(signal.SIGTERM, self._request_stop)
        progress = None
        if options.verbose:
            progress = keras.utils.Progbar(
                options.steps,
                stateful_metrics=["loss", "grad_norm"],
                # A log file gets a line every 30 s, a terminal a live bar.
                interval=0.05 if sys.stdout.isatty() else 30.0,
            )
            progress.update(start_step)
        first_loss = last_loss = None
        metrics = {}
        wall_start = time.perf_counter()
        # Throughput counts only the step calls after the first (tracing),
        # not checkpoints, summaries or the progress bar.
        step_seconds, timed_steps = 0.0, 0
        try:
            step = start_step
            while step < options.steps:
                step_start = time.perf_counter()
                loss, metrics, norm = self._train_step(iterator)
                loss, norm = float(loss), float(norm)
                if first_loss is not None:
                    step_seconds += time.perf_counter() - step_start
                    timed_steps += 1
                metrics = {k: float(v) for k, v in metrics.items()}
                if not (math.isfinite(loss) and math.isfinite(norm)):
                    raise NonFiniteLossError(
                        f"Loss {loss} / gradient norm {norm} at step "
                        f"{step + 1}; stopping. The last good checkpoint in "
                        f"{self.manager.directory} is untouched."
                    )
                step += 1
                if first_loss is None:
                    first_loss = loss
                last_loss = loss
                if writer is not None and (
                    step % options.log_every == 0 or step == options.steps
                ):
                    self._log(
                        writer,
                        step,
                        loss,
                        metrics,
                        norm,
                        self._images_per_second(step_seconds, timed_steps),
                    )
                if progress is not None:
                    progress.update(step, [("loss", loss), ("grad_norm", norm)])
                if (
                    step % options.checkpoint_every == 0
                    or self._stop_requested
                    or step == options.steps
                ):
                    self.manager.save(checkpoint_number=step)
                if self._stop_requested:
                    break
        finally:
            signal.signal(signal.SIGTERM, previous)
            if writer is not None:
                writer.flush()
        return self._summary(
            start_step,
            step,
            first_loss,
            last_loss,
            metrics,
            time.perf_counter() - wall_start,
            self._images_per_second(step_seconds, timed_steps),
        )

    def _images_per_second(self, seconds, timed_steps):
        if not seconds or not timed_steps:
            return 0.0
        return self.options.images_per_step * timed_steps / seconds

    def _log(self, writer, step, loss, metrics, norm, images_per_s):
        with writer.as_default(step=step):
            tf.summary.scalar("loss", loss)
            tf.summary.scalar("grad_norm", norm)
            for name, value in metrics.items():
                tf.summary.scalar(name, value)
            for name, value in _learning_rates(self.groups).items():
                tf.summary.scalar(name, value)
            if images_per_s:
                tf.summary.scalar("images_per_s", images_per_s)

    def _summary(
        self, start, end, first, last, metrics, seconds, images_per_s=0.0
    ):
        return dict(
            start_step=start,
            steps=end,
            first_loss=first,
            last_loss=last,
            metrics=metrics,
            seconds=seconds,
            images_per_s=images_per_s,
            stopped_early=end < self.options.steps,
        )

    def writer(self):
        """The TensorBoard writer of `model_dir/logs` (created once)."""
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(
                os.path.join(self.options.model_dir, artifacts.LOG_DIR)
            )
        return self._writer

    def is_chief(self):
        resolver = getattr(self.strategy, "cluster_resolver", None)
        if resolver is None or not resolver.task_type:
            return True
        return resolver.task_type == "chief" or (
            resolver.task_type == "worker" and resolver.task_id == 0
        )

    @contextlib.contextmanager
    def evaluation_weights(self, use_ema=True):
        """Within this context the model holds the weights to evaluate."""
        if use_ema and self.ema is not None:
            with self.ema.swapped():
                yield
        else:
            yield
