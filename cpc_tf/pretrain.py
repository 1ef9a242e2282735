"""CPC v2 pretraining: `python -m cpc_tf.pretrain --flagfile=flags/v2.cfg`.

Parses flags into a `config.PretrainConfig`, checks the data source, builds
the model under the chosen `tf.distribute` strategy and hands a `CPCTask`
to the shared `trainer.Trainer`. The model directory ends up holding
`config.json`, checkpoints, TensorBoard logs, the final encoder (`.keras`,
Polyak-averaged weights by default) and `summary.json`.
"""

import math
import os
import time

import keras
import numpy as np
import tensorflow as tf
from absl import app, logging

from cpc_tf import artifacts, distribute, encoders, trainer
from cpc_tf.config import (
    DataConfig,
    ModelConfig,
    OptimConfig,
    PretrainConfig,
    RunConfig,
)
from cpc_tf.data import augment as augment_lib
from cpc_tf.data import pipeline, sources
from cpc_tf.model import CPC
from cpc_tf.optimizers import make_optimizer
from cpc_tf.tasks import CPCTask


def augment_config(data):
    """The `AugmentConfig` of the appendix's steps 1-4 from `DataConfig`."""
    return augment_lib.AugmentConfig(
        randaugment=data.randaugment,
        randaugment_num_ops=data.randaugment_num_ops,
        randaugment_magnitude=data.randaugment_magnitude,
        elastic_shear_prob=data.elastic_shear_prob,
        color_histogram_prob=data.color_histogram_prob,
        color_jitter_prob=data.color_jitter_prob,
        grayscale_prob=data.grayscale_prob,
    )


def build_backbone(model_config, norm=None):
    """The ResNet-v2 of `model_config` (optionally another normalization)."""
    kwargs = model_config.backbone_kwargs()
    if norm is not None:
        kwargs["norm"] = norm
    return encoders.resnet_v2(name="backbone", **kwargs)


def build_cpc_model(config):
    """A built `CPC` model for `config` (a `PretrainConfig`)."""
    data = config.data
    model = CPC(
        encoders.PatchEncoder(build_backbone(config.model), name="encoder"),
        **config.model.cpc_kwargs(),
    )
    grid = data.grid_size
    model.build((None, grid, grid, data.patch_size, data.patch_size, 3))
    return model


def total_steps(run, num_examples):
    """`run.steps`, or the steps of `run.epochs` over `num_examples`."""
    if run.steps:
        return run.steps
    if not num_examples:
        raise ValueError(
            "--epochs needs the number of training examples, which this "
            "source does not report; set --steps instead."
        )
    return max(1, math.ceil(run.epochs * num_examples / run.batch_size))


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


def _dataset_fn(config, steps_done):
    data, run = config.data, config.run
    augment = augment_config(data)

    def dataset_fn(input_context):
        batch = input_context.get_per_replica_batch_size(run.batch_size)
        dataset, info = pipeline.pretrain_dataset(
            data.train_data,
            batch_size=batch,
            training=True,
            image_size=data.image_size,
            crop_size=data.crop_size,
            patch_size=data.patch_size,
            patch_stride=data.patch_stride,
            augment=augment,
            seed=run.seed + 1009 * steps_done(),
            data_dir=data.data_dir or None,
            input_context=input_context,
            shuffle_buffer=data.shuffle_buffer,
        )
        dataset_fn.infos.append(info)
        return dataset.map(lambda patches, labels: patches)

    dataset_fn.infos = []
    return dataset_fn


def _log_sample_patches(config, writer):
    data = config.data
    sample, _ = pipeline.pretrain_dataset(
        data.train_data,
        batch_size=1,
        training=True,
        image_size=data.image_size,
        crop_size=data.crop_size,
        patch_size=data.patch_size,
        patch_stride=data.patch_stride,
        augment=augment_config(data),
        seed=config.run.seed,
        data_dir=data.data_dir or None,
        shuffle_buffer=1,
    )
    patches, _ = next(iter(sample))
    with writer.as_default(step=0):
        tf.summary.image(
            "augmented_patches", patch_mosaic(patches[0].numpy()), step=0
        )


def run(config, verbose=True):
    """Pretrains CPC as `config` says; returns the summary dict."""
    run_config = config.run
    _, info = sources.load_source(
        config.data.train_data, data_dir=config.data.data_dir or None
    )
    steps = total_steps(run_config, info.num_examples)
    os.makedirs(run_config.model_dir, exist_ok=True)
    strategy = distribute.make_strategy(run_config.strategy, run_config.tpu)
    distribute.check_batch_size(strategy, run_config.batch_size)
    config.to_json(os.path.join(run_config.model_dir, artifacts.CONFIG_FILE))
    keras.utils.set_random_seed(run_config.seed)
    keras.mixed_precision.set_dtype_policy(
        "mixed_bfloat16" if run_config.mixed_precision else "float32"
    )
    try:
        with strategy.scope():
            model = build_cpc_model(config)
            optimizer = make_optimizer(config.optim, steps)
        task = CPCTask(model, optimizer, run_config.negatives)
        loop = trainer.Trainer(
            strategy,
            task,
            trainer.TrainerOptions(
                model_dir=run_config.model_dir,
                steps=steps,
                clip_global_norm=config.optim.clip_global_norm,
                ema_decay=config.optim.ema_decay,
                checkpoint_every=run_config.checkpoint_every,
                keep_checkpoints=run_config.keep_checkpoints,
                log_every=run_config.log_every,
                jit_compile=run_config.jit_compile,
                verbose=verbose,
                images_per_step=run_config.batch_size,
            ),
        )
        if loop.restore() == 0 and loop.is_chief():
            _log_sample_patches(config, loop.writer())
        dataset_fn = _dataset_fn(config, lambda: int(loop.step.numpy()))
        wall_start = time.perf_counter()
        result = loop.fit(dataset_fn)
        if result["stopped_early"]:
            return dict(result, preempted=True)
        summary_path = os.path.join(
            run_config.model_dir, artifacts.SUMMARY_FILE
        )
        if result["start_step"] == steps and os.path.exists(summary_path):
            # Finished by an earlier invocation: its summary and encoder
            # stand (rewriting them would lose the losses and cost time).
            return artifacts.read_json(summary_path)
        grid = config.data.grid_size
        patch = config.data.patch_size
        if loop.is_chief():
            with loop.evaluation_weights(run_config.use_ema):
                artifacts.save_encoder(
                    run_config.model_dir,
                    model.encoder,
                    (grid, grid, patch, patch, 3),
                )
    finally:
        keras.mixed_precision.set_dtype_policy("float32")
    accuracies = [
        v for k, v in result["metrics"].items() if k.startswith("accuracy")
    ]
    summary = dict(
        result,
        accuracy=float(np.mean(accuracies)) if accuracies else None,
        wall_seconds=time.perf_counter() - wall_start,
        skipped_images=sum(i.skipped.value() for i in dataset_fn.infos),
        parameters=model.encoder.count_params(),
        replicas=strategy.num_replicas_in_sync,
    )
    if loop.is_chief():
        artifacts.write_json(summary_path, summary)
    return summary


def main(argv):
    del argv
    from cpc_tf import flags as cpc_flags

    config = cpc_flags.config_from_flags(PretrainConfig)
    try:
        summary = run(config)
    except sources.SourceError as error:
        raise app.UsageError(str(error)) from error
    if summary.get("preempted"):
        print(
            f"preempted: checkpoint saved at step {summary['steps']}; run "
            "the same command to resume."
        )
        return
    logging.info("Pretraining done: %s", summary)
    print(
        f"steps {summary['steps']}  loss {summary['first_loss']} -> "
        f"{summary['last_loss']}  accuracy {summary['accuracy']}  "
        f"{summary['images_per_s']:.1f} images/s  "
        f"skipped images {summary['skipped_images']}  "
        f"-> {config.run.model_dir}"
    )


def define_flags():
    from cpc_tf import flags as cpc_flags

    cpc_flags.define_config_flags(
        DataConfig, ModelConfig, OptimConfig, RunConfig
    )


if __name__ == "__main__":
    define_flags()
    app.run(main)
