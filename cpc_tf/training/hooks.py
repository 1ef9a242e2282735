"""Periodic hooks of the training loop: evaluations between compiled loops.

A `Hook` (a k-NN monitor, a validation evaluation) runs every `every`
steps; `HookRunner` calls the due ones after each compiled loop, records
their values in the run's history and TensorBoard, and tells the trainer
whether one asked to stop.
"""

import dataclasses
import time

import tensorflow as tf

from cpc_tf.training import preemption


@dataclasses.dataclass
class Hook:
    """Runs `fn(step) -> {name: float}` every `every` steps and at the end
    (and, with `at_start`, before the first step of a run from step 0).

    The values go to TensorBoard, the progress bar and the summary's
    `history`. `fn` runs in cross-replica context between compiled loops.
    `stop(step) -> bool`, when given, is asked after `fn` and before the
    first step: True ends training there (early stopping; one checkpoint
    is saved, and a resumed run that had stopped stays stopped). It must
    give every worker the same answer.
    """

    every: int
    fn: object
    at_end: bool = True
    stop: object = None
    at_start: bool = False


def due(every, step, done):
    """Whether a multiple of `every` lies in (step - done, step]."""
    return step // every > (step - done) // every


def stop_requested(hooks, step):
    """Whether any hook's `stop` says training ends at `step`."""
    return any(hook.stop is not None and hook.stop(step) for hook in hooks)


class HookRunner:
    """Runs the hooks due after a loop; keeps their history and cost.

    Args:
        hooks: the `Hook`s.
        last_step: the run's final step (`at_end` hooks run there).
        history: `{name: [[step, value], ...]}`, appended to in place.
        writer: a TensorBoard writer, or None (a non-chief worker).
    """

    def __init__(self, hooks, last_step, history, writer=None):
        self.hooks = tuple(hooks)
        self.last_step = last_step
        self.history = history
        self.writer = writer
        self.seconds = 0.0
        self.preempted = False

    def start(self, step):
        """The `at_start` hooks, when a run begins at step 0: scores."""
        if step:
            return {}
        starting = [hook for hook in self.hooks if hook.at_start]
        return self._run(starting, 0)[0]

    def run(self, step, done):
        """The hooks due at `step` after `done` steps: `(scores, stop)`.

        A SIGTERM during a hook ends training after the steps done.
        """
        due_now = [
            hook
            for hook in self.hooks
            if due(hook.every, step, done)
            or (hook.at_end and step == self.last_step)
        ]
        return self._run(due_now, step)

    def _run(self, hooks, step):
        shown, stop = {}, False
        for hook in hooks:
            start = time.perf_counter()
            try:
                scores = hook.fn(step)
            except preemption.Preempted:
                scores, stop, self.preempted = {}, True, True
            scores = {name: float(value) for name, value in scores.items()}
            self.seconds += time.perf_counter() - start
            for name, value in scores.items():
                self.history.setdefault(name, []).append([step, value])
            if hook.stop is not None and hook.stop(step):
                stop = True
            shown.update(scores)
            if self.writer is not None:
                with self.writer.as_default(step=step):
                    for name, value in scores.items():
                        tf.summary.scalar(name, value)
        return shown, stop
