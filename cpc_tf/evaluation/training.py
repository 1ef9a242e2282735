"""Training a protocol's classifier with the shared trainer.

`train` runs a `ClassifierTask` for a step budget on the labelled subset,
resuming from checkpoints, with model selection: `BestCheckpoint`
evaluates the validation split every `--eval_every` steps (and at the
end) and keeps the weights of the best evaluation in `model_dir/best/`,
so the test scores the best validation point, not the last step. With
`--patience=N` training stops once N evaluations in a row have not
beaten the best (early stopping: a generous budget, trained until
validation stops improving).
"""

import os
import time

import tensorflow as tf

from cpc_tf.evaluation import inputs as inputs_lib
from cpc_tf.evaluation import results as results_lib
from cpc_tf.rundir import artifacts
from cpc_tf.training import builders, checkpoints, preemption, trainer

BEST_DIR = "best"
BEST_FILE = "best.json"
EVALUATIONS_PER_RUN = 10


class BestCheckpoint:
    """Keeps the weights of the best validation top-1 (model selection).

    Args:
        loop: the `trainer.Trainer` (its evaluation weights are scored).
        model: the classifier, inputs -> logits.
        dataset_fn: one pass over the validation images.
        model_dir: where `best/` and `best.json` go (the chief writes).
        use_ema: score the Polyak-averaged weights.
        patience: evaluations without a new best before `exhausted` (0:
            never).
        interval: steps between evaluations.
        restart: forget an earlier run's best (`--restart`).

    A damaged `best.json` is set aside and forgotten (the next evaluation
    becomes the best); damaged best weights fail the results with
    `checkpoints.CheckpointError`, never a silent fallback.
    """

    def __init__(
        self,
        loop,
        model,
        dataset_fn,
        model_dir,
        use_ema,
        patience=0,
        interval=1,
        restart=False,
    ):
        self.loop = loop
        self.patience = patience
        self.interval = interval
        self.evaluator = results_lib.Evaluator(loop.strategy, model, dataset_fn)
        self.directory = os.path.join(model_dir, BEST_DIR)
        self.record_path = os.path.join(model_dir, BEST_FILE)
        self.use_ema = use_ema
        self.checkpoint = tf.train.Checkpoint(model=model)
        self.best = None
        if restart:
            if loop.is_chief():
                artifacts.set_aside(self.record_path, ".replaced")
        else:
            self.best = artifacts.read_record(
                self.record_path, ("step", "val_top1")
            )
            if self.best is None and loop.is_chief():
                artifacts.set_aside(self.record_path)

    def __call__(self, step):
        with self.loop.evaluation_weights(self.use_ema):
            metrics = self.evaluator()
            if self.best is None or metrics["top1"] > self.best["val_top1"]:
                self.best = dict(
                    step=step,
                    val_top1=metrics["top1"],
                    val_loss=metrics["loss"],
                )
                self._save()
        return {"val_top1": metrics["top1"], "val_loss": metrics["loss"]}

    def exhausted(self, step):
        """Whether `patience` evaluations since the best were no better
        (the same on every worker: the scores are all-reduced)."""
        return bool(
            self.patience
            and self.best is not None
            and step - self.best["step"] >= self.patience * self.interval
        )

    def _save(self):
        if self.loop.is_chief():
            self.checkpoint.write(os.path.join(self.directory, "weights"))
            artifacts.write_json(self.record_path, self.best)
        else:
            scratch = os.path.join(self.loop.write_dir, BEST_DIR, "weights")
            self.checkpoint.write(scratch)

    def restore(self):
        """Puts the best weights into the model; False if none was kept."""
        if self.best is None:
            return False
        path = os.path.join(self.directory, "weights")
        reason = checkpoints.try_restore(self.checkpoint, path, written=True)
        if reason is not None:
            raise checkpoints.CheckpointError(
                f"--model_dir: the best validation weights {path} do not "
                f"restore ({reason}); pass --restart=true to train again."
            )
        return True

    def record(self):
        """`{"step", "val_top1", "val_loss"}` of the kept weights."""
        return self.best


def evaluation_interval(options, steps):
    """Steps between validation evaluations (`--eval_every`, or ten per
    run)."""
    return options.eval_every or max(1, steps // EVALUATIONS_PER_RUN)


def train(
    strategy,
    task,
    config,
    steps,
    inputs,
    split,
    model_dir=None,
    step_offset=0,
    verbose=True,
):
    """Fits `task` for `steps` on the labelled ids, resuming if it can.

    Args:
        model_dir: checkpoints and logs (default: `config.run.model_dir`).
        step_offset: added to the trainer's step to reseed the data (a
            second phase continues the first one's stream).

    When `split` has validation images, the best validation evaluation's
    weights are kept (`BestCheckpoint`).

    Returns:
        `(trainer, train_summary dict, BestCheckpoint or None)`.
    """
    run = config.run
    validation_fn = inputs_lib.validation_fn(
        inputs, config.data, split, inputs_lib.eval_batch_size(config)
    )
    model_dir = model_dir or run.model_dir
    loop = trainer.Trainer(
        strategy,
        task,
        builders.trainer_options(
            run, config.optim, steps, model_dir=model_dir, verbose=verbose
        ),
    )
    hooks, selection = [], None
    if validation_fn is not None:
        interval = evaluation_interval(config.options, steps)
        selection = BestCheckpoint(
            loop,
            task.model,
            validation_fn,
            model_dir,
            run.use_ema,
            patience=config.options.patience,
            interval=interval,
            restart=run.restart,
        )
        hooks.append(
            trainer.Hook(interval, selection, stop=selection.exhausted)
        )
    start = time.perf_counter()
    result = loop.fit(
        inputs.train_fn(
            run.batch_size,
            split.train_ids,
            run.seed,
            lambda: step_offset + int(loop.step.numpy()),
        ),
        hooks=hooks,
    )
    if result["preempted"]:
        # Not finished: no test, no results; the same command resumes.
        raise preemption.Preempted(
            f"checkpoint saved at step {result['steps']}"
        )
    summary = results_lib.train_summary(result, time.perf_counter() - start)
    return loop, summary, selection
