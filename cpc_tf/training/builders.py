"""What every entry point builds from a config, in one library module.

Backbones, the CPC model, the augmentation settings, step budgets, trainer
options and the pretraining patch dataset are made here from the config
dataclasses, so that entry points stay thin and no library module needs
to import one.
"""

import dataclasses
import math

import keras

from cpc_tf.data import augment as augment_lib
from cpc_tf.data import pipeline
from cpc_tf.models import encoders
from cpc_tf.models.cpc import CPC
from cpc_tf.training import trainer
from cpc_tf.training.optimizers import make_optimizer


def augment_config(data):
    """The `AugmentConfig` of the appendix's steps 1-4 from `DataConfig`."""
    return augment_lib.AugmentConfig(
        randaugment=data.randaugment,
        randaugment_num_ops=data.randaugment_num_ops,
        randaugment_magnitude=data.randaugment_magnitude,
        randaugment_ops=tuple(data.randaugment_ops),
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
        encoders.PatchEncoder(
            build_backbone(config.model),
            remat=config.memory.remat,
            name="encoder",
        ),
        **config.model.cpc_kwargs(),
    )
    grid = data.grid_size
    model.build((None, grid, grid, data.patch_size, data.patch_size, 3))
    return model


def total_steps(run, num_examples):
    """`run.steps`, or the steps of `run.epochs` over `num_examples`
    (at least `run.min_steps`)."""
    if run.steps:
        return run.steps
    if not num_examples:
        raise ValueError(
            "--epochs needs the number of training examples, which this "
            "source does not report; set --steps instead."
        )
    steps = math.ceil(run.epochs * num_examples / run.batch_size)
    return max(1, run.min_steps, steps)


def trainer_options(run, optim, steps, model_dir=None, verbose=True):
    """`trainer.TrainerOptions` from a `RunConfig` and an `OptimConfig`."""
    return trainer.TrainerOptions(
        model_dir=model_dir or run.model_dir,
        steps=steps,
        clip_global_norm=optim.clip_global_norm,
        ema_decay=optim.ema_decay,
        checkpoint_every=run.checkpoint_every,
        keep_checkpoints=run.keep_checkpoints,
        log_every=run.log_every,
        jit_compile=run.jit_compile,
        verbose=verbose,
        images_per_step=run.batch_size,
        steps_per_loop=run.steps_per_loop,
        loss_scaling=run.mixed_precision == "float16",
        restart=run.restart,
        maintenance_url=run.maintenance_url,
        async_checkpoint=run.async_checkpoint,
        allreduce_pack_mb=run.allreduce_pack_mb,
    )


def pretrain_patches(
    data, batch_size, seed, ids=None, shuffle_buffer=None, input_context=None
):
    """Training patch grids of `data` (a `DataConfig`), labels dropped.

    Args:
        batch_size: images per batch (per pipeline with `input_context`).
        seed: the pipeline's seed (crops, augmentation, shuffling).
        ids: indices of `data.train_data` to read (None: all).
        shuffle_buffer: defaults to `data.shuffle_buffer`.

    Returns:
        `(dataset of [batch, g, g, P, P, 3] float32, SourceInfo)`.
    """
    dataset, info = pipeline.pretrain_dataset(
        data.train_data,
        batch_size=batch_size,
        training=True,
        image_size=data.image_size,
        crop_size=data.crop_size,
        patch_size=data.patch_size,
        patch_stride=data.patch_stride,
        augment=augment_config(data),
        seed=seed,
        data_dir=data.data_dir or None,
        input_context=input_context,
        label_subset=ids,
        shuffle_buffer=(
            data.shuffle_buffer if shuffle_buffer is None else shuffle_buffer
        ),
    )
    return dataset.map(lambda patches, labels: patches), info


def pretrain_dataset_fn(data, run, steps_done, ids=None):
    """`dataset_fn` of pretraining patch grids (labels dropped).

    Args:
        data: the `DataConfig`.
        run: the `RunConfig` (global batch, seed).
        steps_done: `() -> int`, the restored step; a resumed run reseeds
            the pipeline from it.
        ids: indices of `data.train_data` pretraining may read (None: all),
            e.g. everything but the hold-out.

    The returned function keeps the `SourceInfo` of every pipeline it made
    in its `infos` list (for the skipped-image count).
    """

    def dataset_fn(input_context):
        dataset, info = pretrain_patches(
            data,
            input_context.get_per_replica_batch_size(run.batch_size),
            run.seed + 1009 * steps_done(),
            ids=ids,
            input_context=input_context,
        )
        dataset_fn.infos.append(info)
        return dataset

    dataset_fn.infos = []
    return dataset_fn


@dataclasses.dataclass
class Pretraining:
    """What a pretraining run trains: its step count, trainer options,
    optimizer and CPC model."""

    steps: int
    options: trainer.TrainerOptions
    optimizer: keras.optimizers.Optimizer
    model: CPC


def pretraining(config, train_examples, verbose=True):
    """The `Pretraining` of `config` (a `PretrainConfig`) over
    `train_examples` images; build it inside `strategy.scope()`."""
    run = config.run
    steps = total_steps(run, train_examples)
    options = trainer_options(run, config.optim, steps, verbose=verbose)
    optimizer = make_optimizer(config.optim, steps, run.mixed_precision)
    return Pretraining(steps, options, optimizer, build_cpc_model(config))
