"""The one training loop that pretraining and every evaluation share.

A `Task` says what to compute on a batch; the `Trainer` runs it under a
`tf.distribute` strategy with what the paper needs around it: one
all-reduce per step, after which each optimizer group's summed gradient is
clipped to its global norm and applied (`distribute.apply_gradients`), one
or more optimizers on disjoint variables, Polyak averaging with warm-up
inside the replicated step, `steps_per_loop` steps per compiled call,
checkpoints that survive `kill -9` and damage (`training.checkpoints`:
resume from the newest checkpoint that restores, never start over
silently), preemption (SIGTERM to any worker
stops every worker after the same step, with one checkpoint), a NaN/Inf
guard that never overwrites a good checkpoint, periodic evaluation hooks
(`training.hooks`), TensorBoard summaries and a console progress bar.

Multi-worker runs write only from the chief: the other workers save their
(required) checkpoints to a temporary directory beside it and delete it.
"""

import contextlib
import dataclasses
import math
import os
import sys
import time

import keras
import tensorflow as tf

from cpc_tf.rundir import artifacts
from cpc_tf.training import checkpoints, distribute, preemption
from cpc_tf.training.hooks import Hook, HookRunner, due, stop_requested  # noqa: F401
from cpc_tf.training.steps import (  # noqa: F401 (the trainer's public names)
    OptimizerGroup,
    PolyakAverage,
    Task,
    compute_gradients,
    replica_step,
    task_gradients,
)


class NonFiniteLossError(FloatingPointError):
    """The loss or gradient norm became NaN/Inf; nothing was saved."""


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
    steps_per_loop: int = 1
    loss_scaling: bool = False
    restart: bool = False
    maintenance_url: str = "auto"


def _learning_rates(groups):
    rates = {}
    for index, group in enumerate(groups):
        key = "lr" if len(groups) == 1 else f"lr_{index}"
        rates[key] = float(
            keras.ops.convert_to_numpy(group.optimizer.learning_rate)
        )
    return rates


def write_directory(model_dir, strategy):
    """Where this process writes: `model_dir` on the chief, else a
    temporary `workertemp_<id>` directory beside it (TF's convention)."""
    _, task_id, is_chief, _ = distribute.cluster_task(strategy)
    if is_chief:
        return model_dir
    return os.path.join(model_dir, f"workertemp_{task_id}")


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
        _, _, self._is_chief, self._num_workers = distribute.cluster_task(
            strategy
        )
        self.write_dir = write_directory(options.model_dir, strategy)
        # Set by SIGTERM's watcher thread (`preemption.on_request`) while a
        # compiled loop runs; the loop reads it on the host before every
        # step, so a stop ends the loop after the step in flight.
        with tf.device("/cpu:0"):
            self._stop = tf.Variable(
                0.0, trainable=False, name="stop_requested"
            )
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
                if options.loss_scaling and not isinstance(
                    group.optimizer, keras.optimizers.LossScaleOptimizer
                ):
                    raise ValueError(
                        "loss_scaling needs LossScaleOptimizers "
                        "(optimizers.make_optimizer with float16)."
                    )
                distribute.skip_gradient_aggregation(group.optimizer)
                group.optimizer.build(group.variables)
        trackables = dict(model=task.model, step=self.step)
        for index, group in enumerate(self.groups):
            trackables[f"optimizer_{index}"] = group.optimizer
        if self.ema is not None:
            trackables["ema"] = self.ema
        self.checkpoint = tf.train.Checkpoint(**trackables)
        self.manager = self._checkpoint_manager()
        self.resumed = None
        self._gradients_fn = task_gradients
        compile_pieces = getattr(task, "compile_around_collectives", None)
        if options.jit_compile and not (compile_pieces and compile_pieces()):
            # XLA compiles the forward and backward passes; the collective
            # and the update stay outside (TF cannot put a CPU collective
            # inside an XLA cluster; TPUStrategy compiles the whole step).
            compiled = tf.function(
                lambda batch, scale: task.gradients(self.groups, batch, scale),
                jit_compile=True,
            )
            self._gradients_fn = lambda task, groups, batch, scale: compiled(
                batch, scale
            )
        self._train_loop = tf.function(self._distributed_loop)
        self._writer = None

    def _checkpoint_manager(self):
        return tf.train.CheckpointManager(
            self.checkpoint,
            os.path.join(self.write_dir, artifacts.CHECKPOINT_DIR),
            max_to_keep=self.options.keep_checkpoints,
        )

    def checkpoint_dir(self):
        """`model_dir/checkpoints` (the chief's: every worker reads it)."""
        return os.path.join(self.options.model_dir, artifacts.CHECKPOINT_DIR)

    def latest_checkpoint(self):
        """The newest checkpoint the state file names, or None."""
        return tf.train.latest_checkpoint(self.checkpoint_dir())

    def restore(self):
        """Restores the newest checkpoint that restores, once
        (`checkpoints.resume`: damaged ones are moved aside, and a
        directory whose checkpoints all fail raises `CheckpointError`);
        returns the step it was at. `self.resumed` says what happened."""
        if self.resumed is None:
            self.resumed = checkpoints.resume(
                self.checkpoint,
                self.checkpoint_dir(),
                is_chief=self._is_chief,
                restart=self.options.restart,
                agree=self._agree_with_chief,
            )
            # The manager reads the state file as `resume` left it.
            self.manager = self._checkpoint_manager()
        return int(self.step.numpy())

    def _agree_with_chief(self, value):
        if self._num_workers == 1:
            return value
        return distribute.broadcast_from_chief(
            self.strategy, value, self._is_chief
        )

    # -- the compiled step ----------------------------------------------------

    def _replica_step(self, batch, stop):
        return replica_step(
            self.task,
            self.groups,
            batch,
            stop,
            clip_norm=self.options.clip_global_norm,
            ema=self.ema,
            loss_scaling=self.options.loss_scaling,
            gradients_fn=self._gradients_fn,
        )

    def _distributed_loop(self, iterator, steps):
        """Up to `steps` steps; stops early after a step on which any
        worker asked to stop (the host's flag, read before each step) or
        the loss or gradient was not finite."""
        first = self.strategy.experimental_local_results

        def one_step():
            stop = self._stop.read_value()
            outputs = self.strategy.run(
                self._replica_step, args=(next(iterator), stop)
            )
            self.step.assign_add(1)
            loss, metrics, norm, finite, stop_sum = tf.nest.map_structure(
                lambda value: first(value)[0], outputs
            )
            return loss, metrics, norm, finite, stop_sum > 0

        loss, metrics, norm, finite, stopped = one_step()
        done = tf.constant(1, tf.int64)
        # One step per call traces the step once; a loop traces it twice
        # (the first step fixes the shapes the loop carries).
        if self.options.steps_per_loop > 1:
            while done < steps and not stopped and self._finite(loss, norm):
                loss, metrics, norm, finite, stopped = one_step()
                done += 1
        return loss, metrics, norm, finite, stopped, done

    def train_steps(self, iterator, count):
        """Runs up to `count` steps in one call of the compiled loop (as
        `fit` does, without checkpoints, hooks or summaries); returns
        `(loss, metrics, grad_norm, finite, stopped, steps_done)`."""
        return self._train_loop(iterator, tf.constant(count, tf.int64))

    def _finite(self, loss, norm):
        if self.options.loss_scaling:
            # An overflowing float16 step is skipped, not an error.
            return tf.math.is_finite(loss)
        return tf.math.is_finite(loss) & tf.math.is_finite(norm)

    # -- the host loop --------------------------------------------------------

    def fit(self, dataset_fn, hooks=()):
        """Trains until `options.steps`, resuming from the last checkpoint.

        Args:
            dataset_fn: `InputContext -> tf.data.Dataset` of per-replica
                batches (`strategy.distribute_datasets_from_function`). It
                is called after restoring, with the restored step available
                as `trainer.step` for reseeding.
            hooks: `Hook`s (e.g. a k-NN monitor, a validation evaluation).

        Returns:
            A dict: steps, first/last loss and metrics, images/s, seconds,
            `history` of the hooks' values, `stopped_early`,
            `preempted` (SIGTERM stopped it, not a hook's early stop) and
            `checkpoints` (what `restore` did: the checkpoint restored,
            damaged ones moved aside, ones replaced by `restart`).
        """
        options = self.options
        start_step = self.restore()
        history = {}
        if start_step >= options.steps or stop_requested(hooks, start_step):
            return self._summary(start_step, start_step, None, None, {}, 0.0)
        with preemption.watching():
            if preemption.requested() and self._num_workers == 1:
                # Preempted before the first step: nothing to save.
                return dict(
                    self._summary(start_step, start_step, None, None, {}, 0.0),
                    preempted=True,
                )
            self._stop.assign(0.0)
            preemption.watch_maintenance(options.maintenance_url)
            with preemption.on_request(self._request_stop):
                return self._fit(dataset_fn, hooks, start_step, history)

    def _request_stop(self):
        self._stop.assign(1.0)

    def _fit(self, dataset_fn, hooks, start_step, history):
        options = self.options
        dataset = self.strategy.distribute_datasets_from_function(dataset_fn)
        iterator = iter(dataset)
        writer = self.writer() if self._is_chief else None
        progress = None
        if options.verbose:
            progress = keras.utils.Progbar(
                options.steps,
                stateful_metrics=["loss", "grad_norm", "knn_top1", "val_top1"],
                # A log file gets a line every 30 s, a terminal a live bar.
                interval=0.05 if sys.stdout.isatty() else 30.0,
            )
            progress.update(start_step)
        first_loss = last_loss = None
        metrics, preempted = {}, False
        wall_start = time.perf_counter()
        # Throughput counts only the loop calls after the first (tracing),
        # not checkpoints, hooks, summaries or the progress bar.
        step_seconds, timed_steps = 0.0, 0
        runner = HookRunner(hooks, options.steps, history, writer)
        step = start_step
        try:
            while step < options.steps:
                count = self._loop_length(step)
                call_start = time.perf_counter()
                loss, values, norm, finite, stopped, done = self._train_loop(
                    iterator, tf.constant(count, tf.int64)
                )
                loss, norm = float(loss), float(norm)
                done, stopped = int(done), bool(stopped)
                preempted = stopped
                if first_loss is not None:
                    step_seconds += time.perf_counter() - call_start
                    timed_steps += done
                metrics = {k: float(v) for k, v in values.items()}
                ok = math.isfinite(loss) and (
                    options.loss_scaling or math.isfinite(norm)
                )
                if not ok:
                    raise NonFiniteLossError(
                        f"Loss {loss} / gradient norm {norm} at step "
                        f"{step + done}; stopping. The last good checkpoint "
                        f"in {options.model_dir} is untouched."
                    )
                step += done
                if first_loss is None:
                    first_loss = loss
                last_loss = loss
                shown = dict(loss=loss, grad_norm=norm)
                scores, hook_stop = runner.run(step, done)
                shown.update(scores)
                preempted = preempted or runner.preempted
                stopped = stopped or hook_stop
                if writer is not None and (
                    due(options.log_every, step, done) or step == options.steps
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
                    progress.update(step, list(shown.items()))
                if (
                    due(options.checkpoint_every, step, done)
                    or stopped
                    or step == options.steps
                ):
                    self.manager.save(checkpoint_number=step)
                if stopped:
                    break
        finally:
            if writer is not None:
                writer.flush()
            self._remove_worker_directory()
        result = self._summary(
            start_step,
            step,
            first_loss,
            last_loss,
            metrics,
            time.perf_counter() - wall_start,
            self._images_per_second(step_seconds, timed_steps),
        )
        result["history"] = history
        result["hook_seconds"] = runner.seconds
        result["preempted"] = preempted
        return result

    def _loop_length(self, step):
        remaining = self.options.steps - step
        return min(self.options.steps_per_loop, remaining)

    def _remove_worker_directory(self):
        if self.write_dir != self.options.model_dir and tf.io.gfile.exists(
            self.write_dir
        ):
            tf.io.gfile.rmtree(self.write_dir)

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
            preempted=False,
            history={},
            hook_seconds=0.0,
            checkpoints=self.resumed,
        )

    def writer(self):
        """The TensorBoard writer of `model_dir/logs` (created once)."""
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(
                os.path.join(self.options.model_dir, artifacts.LOG_DIR)
            )
        return self._writer

    def is_chief(self):
        return self._is_chief

    @contextlib.contextmanager
    def evaluation_weights(self, use_ema=True):
        """Within this context the model holds the weights to evaluate."""
        if use_ema and self.ema is not None:
            with self.ema.swapped():
                yield
        else:
            yield
