"""What the training loop shows and records: the console progress bar,
TensorBoard summaries and the throughput of the compiled calls."""

import sys

import keras
import tensorflow as tf

from cpc_tf.training.hooks import due

# Values the progress bar shows as they are, not as running means.
SHOWN_AS_IS = ("loss", "grad_norm", "knn_top1", "knn_gain", "val_top1")


def learning_rates(groups):
    """`{"lr": rate}` (`lr_<i>` per group with several optimizer groups)."""
    rates = {}
    for index, group in enumerate(groups):
        key = "lr" if len(groups) == 1 else f"lr_{index}"
        rates[key] = float(
            keras.ops.convert_to_numpy(group.optimizer.learning_rate)
        )
    return rates


class LoopProgress:
    """The progress bar (when `verbose`), summaries every `log_every`
    steps (when `writer`) and images/s of a `Trainer.fit`.

    Throughput counts only the loop calls after the first (tracing), not
    checkpoints, hooks, summaries or the progress bar.
    """

    def __init__(self, options, groups, writer, start_step):
        self.options = options
        self.groups = groups
        self.writer = writer
        self.seconds, self.timed_steps = 0.0, 0
        self.bar = None
        if options.verbose:
            self.bar = keras.utils.Progbar(
                options.steps,
                stateful_metrics=list(SHOWN_AS_IS),
                # A log file gets a line every 30 s, a terminal a live bar.
                interval=0.05 if sys.stdout.isatty() else 30.0,
            )
            self.bar.update(start_step)

    def timed(self, seconds, done, first):
        """Counts a compiled call of `done` steps (not the `first`)."""
        if not first:
            self.seconds += seconds
            self.timed_steps += done

    def images_per_second(self):
        if not self.seconds or not self.timed_steps:
            return 0.0
        return self.options.images_per_step * self.timed_steps / self.seconds

    def show(self, step, values):
        """The progress bar at `step` with `values` ({name: float})."""
        if self.bar is not None:
            self.bar.update(step, list(values.items()))

    def log(self, step, done, loss, metrics, norm):
        """Summaries at `step` when a multiple of `log_every` was passed
        (or at the last step)."""
        if self.writer is None:
            return
        if not (
            due(self.options.log_every, step, done)
            or step == self.options.steps
        ):
            return
        with self.writer.as_default(step=step):
            tf.summary.scalar("loss", loss)
            tf.summary.scalar("grad_norm", norm)
            for name, value in metrics.items():
                tf.summary.scalar(name, value)
            for name, value in learning_rates(self.groups).items():
                tf.summary.scalar(name, value)
            if self.images_per_second():
                tf.summary.scalar("images_per_s", self.images_per_second())
