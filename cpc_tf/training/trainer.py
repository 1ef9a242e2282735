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
(required) checkpoints to a temporary local directory and delete it
(`training.saving`, which also writes asynchronously on request).
"""

import contextlib
import dataclasses
import math
import os
import time

import keras
import tensorflow as tf

from cpc_tf.rundir import artifacts
from cpc_tf.training import checkpoints, distribute, preemption, saving
from cpc_tf.training.hooks import Hook, HookRunner, due, stop_requested  # noqa: F401
from cpc_tf.training.progress import LoopProgress
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
    async_checkpoint: bool = False
    allreduce_pack_mb: float = 0.0


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
        self.saver = saving.CheckpointWriter(
            self.checkpoint,
            options.model_dir,
            strategy,
            options.keep_checkpoints,
            options.async_checkpoint,
        )
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

    @property
    def write_dir(self):
        """Where this process writes (`saving.write_directory`)."""
        return self.saver.directory

    @property
    def manager(self):
        """The `tf.train.CheckpointManager` this process saves with."""
        return self.saver.manager

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
            self.saver.reopen()
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
            pack_bytes=self.options.allreduce_pack_mb * 2**20,
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
        progress = LoopProgress(options, self.groups, writer, start_step)
        first_loss = last_loss = None
        metrics, preempted = {}, False
        wall_start = time.perf_counter()
        runner = HookRunner(hooks, options.steps, history, writer)
        step = start_step
        progress.show(step, runner.start(step))
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
                progress.timed(
                    time.perf_counter() - call_start, done, first_loss is None
                )
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
                progress.log(step, done, loss, metrics, norm)
                progress.show(step, shown)
                if (
                    due(options.checkpoint_every, step, done)
                    or stopped
                    or step == options.steps
                ):
                    self.saver.save(step)
                if stopped:
                    break
        finally:
            if writer is not None:
                writer.flush()
            self.saver.close()
        result = self._summary(
            start_step,
            step,
            first_loss,
            last_loss,
            metrics,
            time.perf_counter() - wall_start,
            progress.images_per_second(),
        )
        result["history"] = history
        result["hook_seconds"] = runner.seconds
        result["preempted"] = preempted
        return result

    def _loop_length(self, step):
        remaining = self.options.steps - step
        return min(self.options.steps_per_loop, remaining)

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
