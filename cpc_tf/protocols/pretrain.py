"""CPC v2 pretraining: `python -m cpc_tf.pretrain --flagfile=flags/v2.cfg`.

Parses flags into a `config.PretrainConfig`, checks the data source and
the model directory, builds the model under the chosen `tf.distribute`
strategy and hands a `CPCTask` to the shared `trainer.Trainer`. The
`--holdout` images of `--train_data` are never read (their ids go to a
file in the model directory, named in `summary.json`). With
`--knn_every`, a k-NN monitor scores the Polyak-averaged encoder on them.
The model directory ends up holding `config.json`, the hold-out file,
checkpoints, TensorBoard logs, the final encoder (`.keras`, Polyak-averaged
weights by default) and `summary.json`. Only the chief writes it.
"""

import os
import time

import numpy as np
import tensorflow as tf
from absl import logging

from cpc_tf.config import (
    PretrainConfig,
)
from cpc_tf.config import flags as cpc_flags
from cpc_tf.data import sources, subsets
from cpc_tf.evaluation import monitor
from cpc_tf.protocols import runtime
from cpc_tf.rundir import artifacts, splits
from cpc_tf.training import (
    builders,
    distribute,
    memory,
    preemption,
    trainer,
)
from cpc_tf.training.tasks import CPCTask


def patch_mosaic(patches):
    """`[g, g, p, p, 3]` in [-1, 1] -> one `[1, H, W, 3]` image with gaps."""
    grid, _, size = patches.shape[:3]
    gap = max(1, size // 8)
    side = grid * size + (grid - 1) * gap
    mosaic = np.ones((side, side, 3), np.float32)
    for row in range(grid):
        for col in range(grid):
            top, left = row * (size + gap), col * (size + gap)
            mosaic[top : top + size, left : left + size] = (
                patches[row, col] + 1.0
            ) / 2.0
    return mosaic[None]


def _log_sample_patches(sample, writer):
    """One augmented patch grid of `sample` (a dataset) in TensorBoard."""
    patches = next(iter(sample))
    with writer.as_default(step=0):
        tf.summary.image(
            "augmented_patches", patch_mosaic(patches[0].numpy()), step=0
        )


def _knn_queries(data, model_dir, ids, record, write):
    """Indices of `--train_data` the k-NN monitor queries: the validation
    images (with `--validation`), else the hold-out; None: `--eval_data`."""
    if not record["holdout"]:
        return None
    if data.validation:
        labels = sources.source_labels(
            data.train_data, data_dir=data.data_dir or None
        )
        return splits.validation_split(data, model_dir, labels, ids, write)[0]
    return subsets.load_subset(record["holdout"]["file"])


def _knn_hooks(config, loop, model, ids, record, verbose):
    knn_config = config.knn
    if not knn_config.knn_every:
        return []
    queries = _knn_queries(
        config.data, config.run.model_dir, ids, record, loop.is_chief()
    )
    planned = monitor.plan(config.data, knn_config, ids, queries)
    if isinstance(planned, str):
        if verbose:
            print(planned)
        return []
    function = monitor.KnnMonitor(
        loop,
        model.encoder,
        config.data,
        knn_config,
        *planned,
        batch_size=config.run.batch_size,
        use_ema=config.run.use_ema,
    )
    return [trainer.Hook(knn_config.knn_every, function, at_start=True)]


def run(config, verbose=True, strategy=None):
    """Pretrains CPC as `config` says; returns the summary dict."""
    data, run_config = config.data, config.run
    runtime.check_sources(data, eval_data=bool(config.knn.knn_every))
    model_dir = runtime.prepare_model_dir(run_config.model_dir)
    _, _, is_chief, workers = distribute.cluster_task(strategy)
    ids, record = splits.pretraining_ids(data, model_dir, write=is_chief)
    preemption.check(workers)
    with runtime.session(run_config, strategy) as strategy:
        memory_line = memory.check(config, strategy)
        if verbose and is_chief:
            print(memory_line)
        if is_chief:
            config.to_json(os.path.join(model_dir, artifacts.CONFIG_FILE))
        with strategy.scope():
            parts = builders.pretraining(
                config, record["train_examples"], verbose
            )
        steps, model = parts.steps, parts.model
        task = CPCTask(
            model,
            parts.optimizer,
            run_config.negatives,
            microbatches=config.memory.microbatches,
        )
        loop = trainer.Trainer(strategy, task, parts.options)
        hooks = _knn_hooks(config, loop, model, ids, record, verbose)
        dataset_fn = builders.pretrain_dataset_fn(
            data, run_config, lambda: int(loop.step.numpy()), ids
        )
        if loop.restore() == 0 and is_chief:
            sample, _ = builders.pretrain_patches(
                data,
                1,
                run_config.seed,
                ids=None if ids is None else ids[:64],
                shuffle_buffer=1,
            )
            _log_sample_patches(sample, loop.writer())
        preemption.check(workers)
        wall_start = time.perf_counter()
        result = loop.fit(dataset_fn, hooks=hooks)
        if result["preempted"]:
            return result
        summary_path = os.path.join(model_dir, artifacts.SUMMARY_FILE)
        if result["start_step"] == steps and tf.io.gfile.exists(summary_path):
            # Finished by an earlier invocation: its summary and encoder
            # stand (rewriting them would lose the losses and cost time).
            return artifacts.read_json(summary_path)
        if is_chief:
            grid, patch = data.grid_size, data.patch_size
            with loop.evaluation_weights(run_config.use_ema):
                artifacts.save_encoder(
                    model_dir, model.encoder, (grid, grid, patch, patch, 3)
                )
    accuracies = [
        v for k, v in result["metrics"].items() if k.startswith("accuracy")
    ]
    knn_history = result["history"].get("knn_top1", [])
    summary = dict(
        result,
        **record,
        accuracy=float(np.mean(accuracies)) if accuracies else None,
        knn_top1=knn_history[-1][1] if knn_history else None,
        knn_top1_at_start=(
            knn_history[0][1]
            if knn_history and knn_history[0][0] == 0
            else None
        ),
        wall_seconds=time.perf_counter() - wall_start,
        skipped_images=sum(i.skipped.value() for i in dataset_fn.infos),
        parameters=model.encoder.count_params(),
        replicas=strategy.num_replicas_in_sync,
    )
    if is_chief:
        artifacts.write_json(summary_path, summary)
    return summary


def parse_config(flag_values):
    """The `PretrainConfig` of parsed flags (a bad one raises FlagError)."""
    return cpc_flags.config_from_flags(PretrainConfig, flag_values)


def run_from_flags(flag_values, verbose=True):
    """`run` on parsed flags (the entry point and the report's stages)."""
    return run(parse_config(flag_values), verbose=verbose)


def describe(summary, flag_values):
    """The line the entry point prints at the end."""
    if summary.get("preempted"):
        return (
            f"preempted: checkpoint saved at step {summary['steps']}; run "
            "the same command to resume."
        )
    logging.info("Pretraining done: %s", summary)
    knn, start = summary.get("knn_top1"), summary.get("knn_top1_at_start")
    gain = (
        f"(random init {start:.4f}, {knn - start:+.4f})  "
        if knn is not None and start is not None
        else ""
    )
    return (
        f"steps {summary['steps']}  loss {summary['first_loss']} -> "
        f"{summary['last_loss']}  accuracy {summary['accuracy']}  "
        + (f"k-NN top-1 {knn:.4f} {gain} " if knn is not None else "")
        + f"{summary['images_per_s']:.1f} images/s  "
        f"skipped images {summary['skipped_images']}  "
        f"-> {flag_values.model_dir}"
    )


def define_flags(flag_values):
    cpc_flags.define_pretrain_flags(flag_values)
