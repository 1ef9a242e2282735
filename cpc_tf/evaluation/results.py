"""Scoring and reporting: top-1/top-5 over a dataset, `results.json`.

`Evaluator` (and one-shot `evaluate`) sums hits over replicas and
workers; `finish` tests a trained classifier once (after model selection
on the validation split, when the run has one), saves `classifier.keras`
and writes `results.json`.
"""

import contextlib
import json
import os

import keras
import numpy as np
import tensorflow as tf

from cpc_tf.config import HOLDOUT
from cpc_tf.evaluation import inputs as inputs_lib
from cpc_tf.rundir import artifacts, splits

RESULTS_FILE = artifacts.RESULTS_FILE
CLASSIFIER_FILE = "classifier.keras"


class Evaluator:
    """Top-1 and top-5 accuracy and mean loss of `model` over a dataset,
    as often as asked: the dataset and the traced step are built once, so
    the validation evaluations of a run cost their compute only (no
    retracing, and a cached subset is read once).

    Args:
        strategy: the `tf.distribute` strategy `model` was built under.
        model: inputs -> logits `[B, C]`; called with `training=False`.
        dataset_fn: `InputContext -> Dataset` of one pass of per-replica
            `(inputs, labels)` batches; partial and empty batches are fine.
    """

    def __init__(self, strategy, model, dataset_fn):
        self.strategy = strategy
        self.model = model
        self.k = min(5, model.output_shape[-1])
        self.dataset = strategy.distribute_datasets_from_function(dataset_fn)
        self.step = tf.function(self._step, reduce_retracing=True)

    def _replica_totals(self, batch):
        inputs, labels = batch
        logits = tf.cast(self.model(inputs, training=False), tf.float32)
        labels = tf.cast(labels, tf.int64)
        top = tf.cast(tf.math.top_k(logits, self.k).indices, tf.int64)
        hits = tf.cast(tf.equal(top, labels[:, None]), tf.float32)
        loss = keras.losses.sparse_categorical_crossentropy(
            labels, logits, from_logits=True
        )
        return tf.stack(
            [
                tf.cast(tf.shape(labels)[0], tf.float32),
                tf.reduce_sum(hits[:, 0]),
                tf.reduce_sum(hits),
                tf.reduce_sum(loss),
            ]
        )

    def _step(self, batch):
        totals = self.strategy.run(self._replica_totals, args=(batch,))
        return self.strategy.reduce(
            tf.distribute.ReduceOp.SUM, totals, axis=None
        )

    def __call__(self):
        """`{"top1", "top5", "loss", "examples"}` of one pass; top-5 is
        top-min(5, C). Ties count as errors (the lowest class index
        wins)."""
        totals = np.zeros(4)
        for batch in self.dataset:
            totals += self.step(batch).numpy()
        count = max(totals[0], 1.0)
        return dict(
            top1=totals[1] / count,
            top5=totals[2] / count,
            loss=totals[3] / count,
            examples=int(totals[0]),
        )


def evaluate(strategy, model, dataset_fn):
    """One pass of `Evaluator(strategy, model, dataset_fn)`."""
    return Evaluator(strategy, model, dataset_fn)()


def finish(
    loop,
    model,
    *,
    inputs,
    config,
    split,
    train_summary,
    extra,
    test=True,
    selection=None,
    pretrain_summary=None,
):
    """Validation/test accuracy, `classifier.keras` and `results.json`.

    With a `selection` (a `training.BestCheckpoint` that ran) the model
    first gets the weights of the best validation evaluation; otherwise it
    is evaluated within `loop.evaluation_weights` (Polyak averages with
    `--use_ema`). The test runs once, on `--eval_data` (or the hold-out),
    when `test`.

    Returns:
        The results dict (also written to `model_dir/results.json` by the
        chief).
    """
    strategy = loop.strategy
    run, data = config.run, config.data
    batch = inputs_lib.eval_batch_size(config)
    selected = selection is not None and selection.restore()
    weights = (
        contextlib.nullcontext()
        if selected
        else loop.evaluation_weights(run.use_ema)
    )
    with weights:
        validation = test_metrics = None
        validation_fn = inputs_lib.validation_fn(inputs, data, split, batch)
        if validation_fn is not None:
            validation = evaluate(strategy, model, validation_fn)
        if test:
            test_metrics = evaluate(
                strategy, model, inputs_lib.test_fn(inputs, data, split, batch)
            )
        path = os.path.join(run.model_dir, CLASSIFIER_FILE)
        if loop.is_chief():
            model.save(path)
    results = dict(
        top1=test_metrics and test_metrics["top1"],
        top5=test_metrics and test_metrics["top5"],
        test=test_metrics,
        validation=validation,
        selected=selection.record() if selected else None,
        label_fraction=data.label_fraction,
        labelled_examples=split.num_train,
        holdout=data.holdout,
        test_set=test_set_name(data, test_metrics),
        test_excluded_from_pretraining=splits.test_excluded_from_pretraining(
            split, data, pretrain_summary
        ),
        subset_files=split.files,
        num_classes=model.output_shape[-1],
        steps=train_summary["steps"],
        train=train_summary,
        checkpoint=loop.manager.latest_checkpoint,
        classifier=path,
        model_dir=run.model_dir,
        config=config.to_dict(),
        **extra,
    )
    if loop.is_chief():
        write_results(run.model_dir, results)
    return results


def test_set_name(data, test_metrics=None):
    """`{"source", "examples"}` naming the test set."""
    source = data.eval_data
    if source == HOLDOUT:
        source = (
            f"{data.train_data} hold-out ({data.holdout:g}, seed "
            f"{data.holdout_seed})"
        )
    examples = test_metrics["examples"] if test_metrics else None
    return dict(source=source, examples=examples)


def write_results(model_dir, results):
    """Writes `model_dir/results.json`."""
    artifacts.write_json(os.path.join(model_dir, RESULTS_FILE), results)


def read_results(model_dir):
    return artifacts.read_json(os.path.join(model_dir, RESULTS_FILE))


def train_summary(result, wall_seconds):
    """The JSON-friendly part of a `Trainer.fit` summary."""
    keys = ("steps", "first_loss", "last_loss", "metrics", "images_per_s")
    summary = {k: result[k] for k in keys}
    return dict(
        summary,
        history=result.get("history", {}),
        wall_seconds=wall_seconds,
        checkpoints=result.get("checkpoints"),
    )


def dump(results):
    """One line of the headline numbers."""
    keys = ("top1", "top5", "label_fraction", "labelled_examples", "steps")
    return json.dumps({k: results.get(k) for k in keys})


def describe(results, model_dir):
    """An entry point's last line: the headline numbers and where they
    are (None when the protocol returned nothing)."""
    if results is None:
        return None
    return f"{dump(results)} -> {model_dir}"
