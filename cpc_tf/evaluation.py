"""What the three evaluation protocols (appendices B and C) share.

- Configs: `LinearEvalConfig`, `SupervisedConfig` and `FinetuneConfig`
  nest the pretraining groups (`DataConfig`, `OptimConfig`, `RunConfig`,
  `ModelConfig`) with the protocol's own options; every field is a flag.
- The pretrained encoder: always built from the pretraining run's
  `config.json` (so it follows this run's mixed-precision policy), then
  given the weights of its `encoder.keras` / `backbone.keras` (the
  Polyak-averaged ones), or left at a fresh random initialisation
  (`--random_init`, the baseline).
- Heads: `linear_head` (appendix B) and `classifier_head` (global mean
  pool, dropout, linear layer, optionally after residual bottleneck blocks:
  appendix C).
- `ClassifierTask`: softmax cross-entropy for the shared `trainer.Trainer`,
  with a frozen or trained encoder and one or two optimizers.
- `Inputs`: patch grids (linear evaluation) or whole images (supervised,
  fine-tuning) from `data.pipeline`, for training and evaluation.
- `label_split`: the label-fraction subset and the validation holdout,
  written once to files that every later run reads, so runs agree.
- `evaluate`: top-1 / top-5 over a dataset, summed over replicas and
  workers.
- `search_and_test`: the hyperparameter search of appendix C.1 with
  keras-tuner; a trial is one protocol run with the shared trainer, scored
  on the held-out validation data; the best trial is tested once.
- `finish`: validation and test accuracy, `classifier.keras` and
  `results.json`.
"""

import dataclasses
import json
import os
import shutil
import time

import keras
import keras_tuner
import numpy as np
import tensorflow as tf
from absl import app
from keras import layers

from cpc_tf import artifacts, encoders, trainer
from cpc_tf import flags as cpc_flags
from cpc_tf.config import (
    DataConfig,
    ModelConfig,
    OptimConfig,
    PretrainConfig,
    RunConfig,
    _fail,
    _field,
    read_json,
)
from cpc_tf.data import pipeline, sources, subsets
from cpc_tf.pretrain import augment_config, build_backbone

RESULTS_FILE = "results.json"
CLASSIFIER_FILE = "classifier.keras"
SEARCH_DIR = "search"
GEOMETRY_FLAGS = ("image_size", "crop_size", "patch_size", "patch_stride")
SEARCH_ALGORITHMS = ("random", "bayesian")
OBJECTIVE = "val_top1"
# `--eval_data=holdout`: test on the --holdout images of --train_data.
HOLDOUT = "holdout"


class FlagError(ValueError):
    """A flag that cannot work with the data or files at hand."""


def _flag_error(flag, message):
    raise FlagError(f"--{flag}: {message}")


def _dropout_field():
    return _field(0.0, "Dropout rate before the final linear layer.")


def _check_dropout(config):
    if not 0.0 <= config.dropout < 1.0:
        _fail("dropout", f"must be in [0, 1), got {config.dropout}.")


@dataclasses.dataclass(frozen=True)
class EvalOptions:
    """Options every protocol has."""

    augment: bool = _field(
        True,
        "Augment the training data (appendix A steps 1-4, as set by the "
        "augmentation flags); false: no augmentation.",
    )
    eval_batch_size: int = _field(
        0, "Global batch size of validation and test (0 = --batch_size)."
    )

    def __post_init__(self):
        if self.eval_batch_size < 0:
            _fail("eval_batch_size", "must be >= 0.")


@dataclasses.dataclass(frozen=True)
class LinearOptions(EvalOptions):
    """The linear probe (appendix B) on a pretrained encoder."""

    pretrained_dir: str = _field(
        "runs/cpc",
        "Model directory of a pretraining run (config.json, encoder.keras, "
        "backbone.keras).",
    )
    random_init: bool = _field(
        False,
        "Baseline: the pretrained architecture (from config.json) with "
        "fresh random weights instead of the pretrained ones.",
    )

    def __post_init__(self):
        super().__post_init__()
        if not self.pretrained_dir:
            _fail("pretrained_dir", "is required (a pretraining model_dir).")


@dataclasses.dataclass(frozen=True)
class SupervisedOptions(EvalOptions):
    """The supervised baseline's classifier (appendix C.1)."""

    dropout: float = _dropout_field()

    def __post_init__(self):
        super().__post_init__()
        _check_dropout(self)


@dataclasses.dataclass(frozen=True)
class FinetuneOptions(LinearOptions):
    """The residual classifier and the two phases of appendix C.2."""

    dropout: float = _dropout_field()
    classifier_blocks: int = _field(11, "Residual bottleneck blocks.")
    classifier_hidden: int = _field(4096, "Width of the residual stream.")
    classifier_bottleneck: int = _field(1024, "Width inside each block.")
    phase1_steps: int = _field(
        10000, "Steps training the classifier on frozen features."
    )
    phase2_steps: int = _field(
        10000,
        "Steps fine-tuning everything: classifier with --optimizer, "
        "encoder with Adam.",
    )
    encoder_learning_rate: float = _field(
        4e-4,
        "Phase 2 Adam learning rate of the encoder (betas and epsilon from "
        "the pretraining config.json).",
    )

    def __post_init__(self):
        super().__post_init__()
        _check_dropout(self)
        for name in (
            "classifier_blocks",
            "classifier_hidden",
            "classifier_bottleneck",
        ):
            if getattr(self, name) < 1:
                _fail(name, f"must be >= 1, got {getattr(self, name)}.")
        if min(self.phase1_steps, self.phase2_steps) < 0:
            _fail("phase1_steps", "phase steps must be >= 0.")
        if self.phase1_steps + self.phase2_steps == 0:
            _fail("phase1_steps", "--phase1_steps + --phase2_steps is 0.")
        if self.encoder_learning_rate <= 0:
            _fail("encoder_learning_rate", "must be > 0.")


@dataclasses.dataclass(frozen=True)
class SearchConfig:
    """The hyperparameter search of appendix C.1 (keras-tuner)."""

    search: bool = _field(
        False,
        "Search learning rate, weight decay, dropout and per-worker batch "
        "on the --holdout validation data, then test the best trial.",
    )
    search_trials: int = _field(20, "Trials of the search.")
    search_algorithm: str = _field(
        "random", "keras-tuner oracle: " + "|".join(SEARCH_ALGORITHMS)
    )
    search_learning_rates: tuple = _field(
        (0.05, 0.1, 0.2), "Learning rates to choose from."
    )
    search_weight_decay: tuple = _field(
        (1e-5, 1e-2), "Weight decay range, sampled log-uniformly."
    )
    search_dropout: tuple = _field(
        (0.0, 0.9), "Dropout range, sampled uniformly (1 drops everything)."
    )
    search_batch_sizes: tuple = _field(
        (16, 32), "Per-worker (per-replica) batch sizes to choose from."
    )

    def __post_init__(self):
        if self.search_trials < 1:
            _fail("search_trials", "must be >= 1.")
        if self.search_algorithm not in SEARCH_ALGORITHMS:
            _fail(
                "search_algorithm",
                f"expected one of {SEARCH_ALGORITHMS}, got "
                f"{self.search_algorithm}.",
            )
        ranges = dict(
            search_weight_decay=(self.search_weight_decay, 0.0, None),
            search_dropout=(self.search_dropout, 0.0, 1.0),
        )
        for name, (values, low, high) in ranges.items():
            if len(values) != 2 or not values[0] <= values[1]:
                _fail(name, f"expected MIN,MAX, got {values}.")
            if values[0] < low or (high is not None and values[1] >= high):
                _fail(name, f"{values} is out of range.")
        if self.search_weight_decay[0] <= 0:
            _fail("search_weight_decay", "log sampling needs MIN > 0.")
        if (
            not self.search_learning_rates
            or min(self.search_learning_rates) <= 0
        ):
            _fail("search_learning_rates", "need positive values.")
        if not self.search_batch_sizes or min(self.search_batch_sizes) < 1:
            _fail("search_batch_sizes", "need sizes >= 1.")


def _check_search(config):
    if config.search.search and config.data.eval_data == HOLDOUT:
        _fail(
            "eval_data",
            "the search selects on the --holdout images, so they cannot "
            "also be the test set; give a separate --eval_data.",
        )
    if config.search.search and not config.data.holdout:
        _fail(
            "search",
            "needs validation data held out of the training split: set "
            "--holdout (e.g. 10000 or 0.1).",
        )


class _ConfigMixin:
    def to_dict(self):
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class LinearEvalConfig(_ConfigMixin):
    """Everything `cpc_tf.linear_eval` needs."""

    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    run: RunConfig = dataclasses.field(default_factory=RunConfig)
    options: LinearOptions = dataclasses.field(default_factory=LinearOptions)


@dataclasses.dataclass(frozen=True)
class SupervisedConfig(_ConfigMixin):
    """Everything `cpc_tf.supervised` needs."""

    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    run: RunConfig = dataclasses.field(default_factory=RunConfig)
    options: SupervisedOptions = dataclasses.field(
        default_factory=SupervisedOptions
    )
    search: SearchConfig = dataclasses.field(default_factory=SearchConfig)

    def __post_init__(self):
        _check_search(self)


@dataclasses.dataclass(frozen=True)
class FinetuneConfig(_ConfigMixin):
    """Everything `cpc_tf.finetune` needs."""

    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    run: RunConfig = dataclasses.field(default_factory=RunConfig)
    options: FinetuneOptions = dataclasses.field(
        default_factory=FinetuneOptions
    )
    search: SearchConfig = dataclasses.field(default_factory=SearchConfig)

    def __post_init__(self):
        _check_search(self)
        if self.run.steps:
            _fail(
                "steps",
                "fine-tuning runs --phase1_steps then --phase2_steps; "
                "leave --steps unset.",
            )


# -- flags of the protocols ----------------------------------------------------


def set_whole_image_geometry(flag_values, program):
    """Whole-image protocols read `--image_size` only.

    Sets `--crop_size`, `--patch_size` and `--patch_stride` to the image
    side (one patch, so `DataConfig` validates) and rejects them when they
    were given.
    """
    for name in GEOMETRY_FLAGS[1:]:
        if flag_values[name].present:
            _flag_error(
                name,
                f"{program} trains on whole images of --image_size; the "
                "patch geometry does not apply.",
            )
        flag_values[name].value = flag_values.image_size


def pretrained_geometry(data, pretrain_data, explicit=()):
    """`data` with the patch geometry of the pretraining run.

    Args:
        data: this run's `DataConfig`.
        pretrain_data: the pretraining run's `DataConfig`.
        explicit: names of the geometry flags given on the command line;
            each must agree with the pretraining value.
    """
    values = {name: getattr(pretrain_data, name) for name in GEOMETRY_FLAGS}
    for name in explicit:
        if getattr(data, name) != values[name]:
            _flag_error(
                name,
                f"{getattr(data, name)} differs from the pretraining run's "
                f"{values[name]}; linear evaluation uses the pretraining "
                "patch geometry (drop the flag).",
            )
    return dataclasses.replace(data, **values)


# -- the pretrained encoder ----------------------------------------------------


def read_pretrained(pretrained_dir, required, random_init):
    """Checks a pretraining model_dir; returns its `PretrainConfig`.

    Args:
        pretrained_dir: the directory.
        required: the artifact the protocol loads (`artifacts.ENCODER_FILE`
            or `artifacts.BACKBONE_FILE`); not needed with `random_init`.
        random_init: whether only the architecture is needed.

    Raises:
        ValueError: naming `--pretrained_dir`, when a file is missing.
    """
    if not os.path.isdir(pretrained_dir):
        _flag_error("pretrained_dir", f"{pretrained_dir} is not a directory.")
    needed = [artifacts.CONFIG_FILE] + ([] if random_init else [required])
    missing = [
        name
        for name in needed
        if not os.path.isfile(os.path.join(pretrained_dir, name))
    ]
    if missing:
        _flag_error(
            "pretrained_dir",
            f"{pretrained_dir} has no {' or '.join(missing)}; point it at "
            "the model_dir of a finished `cpc_tf.pretrain` run.",
        )
    return read_json(
        PretrainConfig, os.path.join(pretrained_dir, artifacts.CONFIG_FILE)
    )


def _copy_weights(model, pretrained_dir, name):
    path = os.path.join(pretrained_dir, name)
    saved = keras.saving.load_model(path, compile=False)
    try:
        model.set_weights(saved.get_weights())
    except ValueError as error:
        _flag_error(
            "pretrained_dir",
            f"{path} does not match the architecture of its config.json: "
            f"{error}",
        )


def load_patch_encoder(pretrained_dir, pretrain_config, random_init):
    """Patch grids `[B, g, g, p, p, 3]` -> latents `[B, g, g, D]`.

    Built from `pretrain_config` under the current dtype policy; weights
    from `encoder.keras` unless `random_init`.
    """
    data = pretrain_config.data
    grid, patch = data.grid_size, data.patch_size
    encoder = encoders.PatchEncoder(
        build_backbone(pretrain_config.model), name="encoder"
    )
    inputs = keras.Input((grid, grid, patch, patch, 3), name="patches")
    model = keras.Model(inputs, encoder(inputs), name="cpc_encoder")
    if not random_init:
        _copy_weights(model, pretrained_dir, artifacts.ENCODER_FILE)
    return model


def load_backbone(pretrained_dir, pretrain_config, random_init):
    """Images `[B, h, w, 3]` -> feature grid `[B, h', w', D]`.

    Built from `pretrain_config`; weights from `backbone.keras` unless
    `random_init`.
    """
    backbone = build_backbone(pretrain_config.model)
    if not random_init:
        _copy_weights(backbone, pretrained_dir, artifacts.BACKBONE_FILE)
    return backbone


# -- heads and the classification task -----------------------------------------


def linear_head(feature_shape, num_classes, name="linear_head"):
    """Appendix B: `[B, g, g, D]` features -> `[B, num_classes]` logits.

    BatchNormalization without the scale parameter, a 1x1 convolution (a
    Dense layer on the last axis) to per-position logits, then the spatial
    mean of the logits.
    """
    inputs = keras.Input(tuple(feature_shape), name="features")
    x = layers.BatchNormalization(center=True, scale=False, name="norm")(inputs)
    logits = layers.Dense(num_classes, name="logits", dtype="float32")(x)
    outputs = layers.GlobalAveragePooling2D(name="mean", dtype="float32")(
        logits
    )
    return keras.Model(inputs, outputs, name=name)


def classifier_head(
    feature_shape,
    num_classes,
    dropout=0.0,
    blocks=0,
    hidden=4096,
    bottleneck=1024,
    name="classifier_head",
):
    """Appendix C: `[B, h, w, D]` features -> `[B, num_classes]` logits.

    `blocks` pre-activation bottleneck blocks (batch normalization; width
    `hidden`, inner width `bottleneck`; the first projects D to `hidden`)
    and a final normalization and ReLU, then the spatial mean, dropout and
    a linear layer. With `blocks=0` it is the ResNet classifier: mean pool,
    dropout, linear.
    """
    inputs = keras.Input(tuple(feature_shape), name="features")
    x = inputs
    for index in range(blocks):
        x = encoders._bottleneck(
            x, bottleneck, hidden, 1, "batch", f"head_block{index + 1}", None
        )
    if blocks:
        x = encoders._preact(x, "batch", "head_post", None)
    x = layers.GlobalAveragePooling2D(name="mean")(x)
    x = layers.Dropout(dropout, name="dropout")(x)
    outputs = layers.Dense(num_classes, name="logits", dtype="float32")(x)
    return keras.Model(inputs, outputs, name=name)


def classifier(encoder, head, input_shape, name="classifier"):
    """The whole model: inputs -> `encoder` -> `head` -> logits `[B, C]`."""
    inputs = keras.Input(tuple(input_shape), name="inputs")
    return keras.Model(inputs, head(encoder(inputs)), name=name)


class ClassifierTask(trainer.Task):
    """Softmax cross-entropy of `head(encoder(inputs))`.

    Args:
        model: `classifier(encoder, head, ...)`, what is checkpointed.
        encoder, head: its two parts.
        optimizer: updates the head, and the encoder too when
            `train_encoder` and no `encoder_optimizer` is given.
        train_encoder: False freezes the encoder (`trainable=False`, run
            in inference mode).
        encoder_optimizer: a second optimizer for the encoder alone.
    """

    def __init__(
        self,
        model,
        encoder,
        head,
        optimizer,
        train_encoder=False,
        encoder_optimizer=None,
    ):
        if encoder_optimizer is not None and not train_encoder:
            raise ValueError("An encoder optimizer needs train_encoder.")
        self.model = model
        self.encoder = encoder
        self.head = head
        self.optimizer = optimizer
        self.encoder_optimizer = encoder_optimizer
        self.train_encoder = train_encoder
        encoder.trainable = train_encoder

    def compute(self, batch, training):
        inputs, labels = batch
        features = self.encoder(
            inputs, training=training and self.train_encoder
        )
        logits = tf.cast(self.head(features, training=training), tf.float32)
        loss = tf.reduce_mean(
            keras.losses.sparse_categorical_crossentropy(
                labels, logits, from_logits=True
            )
        )
        correct = tf.equal(tf.argmax(logits, -1), tf.cast(labels, tf.int64))
        return loss, {"top1": tf.reduce_mean(tf.cast(correct, tf.float32))}

    def optimizer_groups(self):
        if self.encoder_optimizer is None:
            return [
                trainer.OptimizerGroup(
                    self.optimizer, self.model.trainable_variables
                )
            ]
        return [
            trainer.OptimizerGroup(
                self.optimizer, self.head.trainable_variables
            ),
            trainer.OptimizerGroup(
                self.encoder_optimizer, self.encoder.trainable_variables
            ),
        ]


def trainer_options(config, steps, model_dir, verbose):
    """`TrainerOptions` from a protocol config's `run` and `optim`."""
    run, optim = config.run, config.optim
    return trainer.TrainerOptions(
        model_dir=model_dir,
        steps=steps,
        clip_global_norm=optim.clip_global_norm,
        ema_decay=optim.ema_decay,
        checkpoint_every=run.checkpoint_every,
        keep_checkpoints=run.keep_checkpoints,
        log_every=run.log_every,
        jit_compile=run.jit_compile,
        verbose=verbose,
        images_per_step=run.batch_size,
    )


# -- data ----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Inputs:
    """How a protocol reads data: patch grids or whole images.

    Attributes:
        data: the `DataConfig` (patch geometry, or `image_size` for whole
            images).
        patches: True for CPC patch grids `[B, g, g, p, p, 3]`, False for
            whole images `[B, S, S, 3]`, S = `image_size`.
        augment: augment the training data.
    """

    data: DataConfig
    patches: bool
    augment: bool = True

    @property
    def shape(self):
        """One example's shape."""
        data = self.data
        if self.patches:
            grid, patch = data.grid_size, data.patch_size
            return (grid, grid, patch, patch, 3)
        return (data.image_size, data.image_size, 3)

    def _dataset(self, spec, batch_size, training, **kwargs):
        data = self.data
        kwargs.update(
            batch_size=batch_size,
            training=training,
            image_size=data.image_size,
            augment=augment_config(data) if self.augment else None,
            data_dir=data.data_dir or None,
        )
        if self.patches:
            dataset, _ = pipeline.pretrain_dataset(
                spec,
                crop_size=data.crop_size,
                patch_size=data.patch_size,
                patch_stride=data.patch_stride,
                **kwargs,
            )
        else:
            dataset, _ = pipeline.image_dataset(spec, **kwargs)
        return dataset

    def train_fn(self, global_batch, ids, seed, steps_done):
        """`dataset_fn` of shuffled, augmented, repeated training batches.

        Args:
            global_batch: batch size over all replicas.
            ids: indices into the training source, or None for all.
            seed: run seed.
            steps_done: `() -> int`, the restored step (reseeds a resumed
                run).
        """

        def dataset_fn(input_context):
            return self._dataset(
                self.data.train_data,
                input_context.get_per_replica_batch_size(global_batch),
                True,
                seed=seed + 1009 * steps_done(),
                input_context=input_context,
                label_subset=ids,
                shuffle_buffer=self.data.shuffle_buffer,
            )

        return dataset_fn

    def eval_fn(self, spec, global_batch, ids=None):
        """`dataset_fn` of one pass of `spec` (or its `ids`), no augment."""

        def dataset_fn(input_context):
            return self._dataset(
                spec,
                input_context.get_per_replica_batch_size(global_batch),
                False,
                input_context=input_context,
                label_subset=ids,
                repeat=False,
            )

        return dataset_fn


@dataclasses.dataclass(frozen=True)
class LabelSplit:
    """The labelled training examples and the validation holdout.

    Attributes:
        train_ids: indices into the training source, None for all of it.
        val_ids: held-out indices, None without a holdout.
        num_train: labelled training examples (None: the source does not
            report its size).
        files: the subset files read or written.
    """

    train_ids: np.ndarray | None
    val_ids: np.ndarray | None
    num_train: int | None
    files: dict


def label_split(data, seed, directory):
    """`--label_fraction` and `--holdout` of the training source.

    The first run computes class-balanced subsets (`data.subsets`) and
    writes them under `directory`; later runs with the same fraction,
    holdout and seed read the files, so every run and every worker uses the
    same examples.
    """
    if data.label_fraction == 100 and not data.holdout:
        _, info = sources.load_source(
            data.train_data, data_dir=data.data_dir or None
        )
        return LabelSplit(None, None, info.num_examples, {})
    tag = f"holdout{data.holdout:g}_seed{seed}"
    files = dict(
        train=os.path.join(
            directory, f"train_{data.label_fraction:g}pct_{tag}.txt"
        )
    )
    if data.holdout:
        files["validation"] = os.path.join(directory, f"val_{tag}.txt")
    if all(os.path.exists(path) for path in files.values()):
        train_ids = subsets.load_subset(files["train"])
        val_ids = (
            subsets.load_subset(files["validation"]) if data.holdout else None
        )
        return LabelSplit(train_ids, val_ids, len(train_ids), files)
    labels = sources.source_labels(
        data.train_data, data_dir=data.data_dir or None
    )
    train_idx, val_ids = np.arange(len(labels), dtype=np.int64), None
    if data.holdout:
        holdout = (
            int(data.holdout) if data.holdout >= 1 else float(data.holdout)
        )
        try:
            train_idx, val_ids = subsets.holdout_split(labels, holdout, seed)
        except ValueError as error:
            _flag_error("holdout", str(error))
        subsets.save_subset(files["validation"], val_ids)
    train_ids = train_idx[
        subsets.label_subset_ids(labels[train_idx], data.label_fraction, seed)
    ]
    subsets.save_subset(files["train"], train_ids)
    return LabelSplit(train_ids, val_ids, len(train_ids), files)


def test_dataset_fn(inputs, data, split, global_batch):
    """One pass over the test images: `--eval_data`, or the `--holdout`
    images of `--train_data` with `--eval_data=holdout` (for sources that
    have no test split, such as the CIFAR-10 TFRecords here)."""
    if data.eval_data == HOLDOUT:
        return inputs.eval_fn(data.train_data, global_batch, split.val_ids)
    return inputs.eval_fn(data.eval_data, global_batch)


def num_classes(data):
    """Classes of the training source; the evaluation source must agree."""
    counts = {"eval_data": None}
    holdout = data.eval_data == HOLDOUT
    for flag in ("train_data",) if holdout else ("train_data", "eval_data"):
        _, info = sources.load_source(
            getattr(data, flag), data_dir=data.data_dir or None
        )
        counts[flag] = info.num_classes
    if counts["eval_data"] not in (None, counts["train_data"]):
        _flag_error(
            "eval_data",
            f"{counts['eval_data']} classes, but --train_data has "
            f"{counts['train_data']}.",
        )
    return counts["train_data"]


# -- evaluation ----------------------------------------------------------------


def evaluate(strategy, model, dataset_fn):
    """Top-1 and top-5 accuracy and mean loss of `model` over a dataset.

    Args:
        strategy: the `tf.distribute` strategy `model` was built under.
        model: inputs -> logits `[B, C]`; called with `training=False`.
        dataset_fn: `InputContext -> Dataset` of one pass of per-replica
            `(inputs, labels)` batches; partial and empty batches are fine.

    Returns:
        `{"top1", "top5", "loss", "examples"}`; top-5 is top-min(5, C).
        Ties count as errors (the lowest class index wins).
    """
    dataset = strategy.distribute_datasets_from_function(dataset_fn)
    k = min(5, model.output_shape[-1])

    def replica_totals(batch):
        inputs, labels = batch
        logits = tf.cast(model(inputs, training=False), tf.float32)
        labels = tf.cast(labels, tf.int64)
        top = tf.cast(tf.math.top_k(logits, k).indices, tf.int64)
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

    @tf.function(reduce_retracing=True)
    def step(batch):
        totals = strategy.run(replica_totals, args=(batch,))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, totals, axis=None)

    totals = np.zeros(4)
    for batch in dataset:
        totals += step(batch).numpy()
    count = max(totals[0], 1.0)
    return dict(
        top1=totals[1] / count,
        top5=totals[2] / count,
        loss=totals[3] / count,
        examples=int(totals[0]),
    )


def finish(
    loop,
    strategy,
    model,
    inputs,
    config,
    split,
    train_summary,
    extra,
    test=True,
):
    """Validation/test accuracy, `classifier.keras` and `results.json`.

    Runs within `loop.evaluation_weights` (Polyak averages with
    `--use_ema`). Validation uses the held-out ids when there are some;
    the test runs on `--eval_data` when `test`.

    Returns:
        The results dict (also written to `model_dir/results.json` by the
        chief).
    """
    run, data = config.run, config.data
    batch = config.options.eval_batch_size or run.batch_size
    with loop.evaluation_weights(run.use_ema):
        validation = test_metrics = None
        if split.val_ids is not None:
            validation = evaluate(
                strategy,
                model,
                inputs.eval_fn(data.train_data, batch, split.val_ids),
            )
        if test:
            test_metrics = evaluate(
                strategy, model, test_dataset_fn(inputs, data, split, batch)
            )
        path = os.path.join(run.model_dir, CLASSIFIER_FILE)
        if loop.is_chief():
            model.save(path)
    results = dict(
        top1=test_metrics and test_metrics["top1"],
        top5=test_metrics and test_metrics["top5"],
        test=test_metrics,
        validation=validation,
        label_fraction=data.label_fraction,
        labelled_examples=split.num_train,
        holdout=data.holdout,
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


def write_results(model_dir, results):
    """Writes `model_dir/results.json`."""
    artifacts.write_json(os.path.join(model_dir, RESULTS_FILE), results)


def read_results(model_dir):
    return artifacts.read_json(os.path.join(model_dir, RESULTS_FILE))


def train_summary(result, wall_seconds):
    """The JSON-friendly part of a `Trainer.fit` summary."""
    keys = ("steps", "first_loss", "last_loss", "metrics", "images_per_s")
    return dict({k: result[k] for k in keys}, wall_seconds=wall_seconds)


def train(
    strategy,
    task,
    config,
    steps,
    inputs,
    train_ids,
    model_dir=None,
    step_offset=0,
    verbose=True,
):
    """Fits `task` for `steps` on the labelled ids, resuming if it can.

    Args:
        model_dir: checkpoints and logs (default: `config.run.model_dir`).
        step_offset: added to the trainer's step to reseed the data (a
            second phase continues the first one's stream).

    Returns:
        `(trainer, train_summary dict)`.
    """
    run = config.run
    loop = trainer.Trainer(
        strategy,
        task,
        trainer_options(config, steps, model_dir or run.model_dir, verbose),
    )
    start = time.perf_counter()
    result = loop.fit(
        inputs.train_fn(
            run.batch_size,
            train_ids,
            run.seed,
            lambda: step_offset + int(loop.step.numpy()),
        )
    )
    return loop, train_summary(result, time.perf_counter() - start)


def run_main(run, config, **kwargs):
    """An entry point's `main`: `run(config)`, bad flags as usage errors."""
    try:
        results = run(config, **kwargs)
    except FlagError as error:
        raise app.UsageError(str(error)) from error
    if results is not None:
        print(dump(results), "->", config.run.model_dir)


def parse_whole_image_config(flag_values, protocol, config_class):
    """`config_class` of parsed flags for a whole-image protocol.

    A bad flag raises `app.UsageError`.
    """
    try:
        set_whole_image_geometry(flag_values, protocol)
    except FlagError as error:
        raise app.UsageError(str(error)) from error
    return cpc_flags.config_from_flags(config_class, flag_values)


def pretrained_results(protocol, options):
    """The `results.json` entries naming the protocol and its encoder."""
    return dict(
        protocol=protocol,
        pretrained_dir=os.path.abspath(options.pretrained_dir),
        random_init=options.random_init,
    )


def define_protocol_flags(flag_values, defaults, *config_classes):
    """Defines an entry point's flags with the protocol's `defaults`."""
    cpc_flags.define_config_flags(*config_classes, flag_values=flag_values)
    for name, value in defaults.items():
        flag_values.set_default(name, value)


# -- hyperparameter search -----------------------------------------------------


def search_space(search):
    """The `keras_tuner.HyperParameters` of appendix C.1."""
    hp = keras_tuner.HyperParameters()
    hp.Choice("learning_rate", [float(v) for v in search.search_learning_rates])
    hp.Float("weight_decay", *search.search_weight_decay, sampling="log")
    hp.Float("dropout", *search.search_dropout)
    hp.Choice("batch_per_worker", [int(v) for v in search.search_batch_sizes])
    return hp


def with_hyperparameters(config, values, replicas, model_dir):
    """`config` with a trial's values, training into `model_dir`.

    The global batch is the per-worker batch times `replicas`; label
    subsets stay where the search run keeps them.
    """
    run = config.run
    return dataclasses.replace(
        config,
        optim=dataclasses.replace(
            config.optim,
            learning_rate=values["learning_rate"],
            weight_decay=values["weight_decay"],
        ),
        options=dataclasses.replace(config.options, dropout=values["dropout"]),
        run=dataclasses.replace(
            run,
            model_dir=model_dir,
            batch_size=values["batch_per_worker"] * replicas,
        ),
        data=dataclasses.replace(
            config.data, subset_dir=config.data.subset_dir or run.model_dir
        ),
        search=dataclasses.replace(config.search, search=False),
    )


class ProtocolTuner(keras_tuner.Tuner):
    """A keras-tuner `Tuner` whose trial is one call of `trial_fn`.

    Args:
        oracle: a `keras_tuner.Oracle` with objective `val_top1`.
        trial_fn: `(hyperparameter values, trial_dir) -> validation top-1`.
        **kwargs: for `keras_tuner.Tuner` (directory, project_name,
            distribution_strategy, ...).
    """

    def __init__(self, oracle, trial_fn, **kwargs):
        super().__init__(oracle, **kwargs)
        self.trial_fn = trial_fn

    def run_trial(self, trial, *args, **kwargs):
        trial_dir = self.get_trial_dir(trial.trial_id)
        return {
            OBJECTIVE: self.trial_fn(trial.hyperparameters.values, trial_dir)
        }


def make_oracle(search, seed):
    """The oracle of `search.search_algorithm` over `search_space`."""
    kwargs = dict(
        objective=keras_tuner.Objective(OBJECTIVE, direction="max"),
        max_trials=search.search_trials,
        hyperparameters=search_space(search),
        tune_new_entries=False,
        allow_new_entries=False,
        seed=seed,
    )
    if search.search_algorithm == "bayesian":
        return keras_tuner.oracles.BayesianOptimizationOracle(**kwargs)
    return keras_tuner.oracles.RandomSearchOracle(**kwargs)


def is_tuner_worker():
    """True in a distributed search's worker (it runs trials only).

    keras-tuner's distributed mode: every process sets
    `KERASTUNER_ORACLE_IP` and `KERASTUNER_ORACLE_PORT`; the chief has
    `KERASTUNER_TUNER_ID=chief`, workers any other id.
    """
    return "KERASTUNER_ORACLE_IP" in os.environ and "chief" not in (
        os.environ.get("KERASTUNER_TUNER_ID", "")
    )


def run_search(search, trial_fn, directory, seed, strategy=None):
    """Runs the search; returns the tuner (its oracle holds the trials).

    The tuner's state and the trials go to `directory/search/`; an
    interrupted search found there resumes.
    """
    tuner = ProtocolTuner(
        make_oracle(search, seed),
        trial_fn,
        directory=directory,
        project_name=SEARCH_DIR,
        distribution_strategy=strategy,
    )
    tuner.search()
    return tuner


def search_and_test(config, run_fn, strategy, inputs, verbose=True):
    """Appendix C.1: search on the holdout, test the best trial once.

    Each trial is `run_fn(trial_config, strategy=..., test=False)` in
    `model_dir/search/trial_<id>/`, scored by its validation top-1.
    The best trial's `classifier.keras` is then evaluated on
    `--eval_data` (read as `inputs` say), copied to `model_dir` and
    reported in its `results.json` with every trial's values and score.

    Returns:
        The results dict, or None in a distributed search's worker.
    """
    model_dir = config.run.model_dir
    replicas = strategy.num_replicas_in_sync

    def trial_fn(values, trial_dir):
        trial_config = with_hyperparameters(config, values, replicas, trial_dir)
        results = run_fn(
            trial_config, strategy=strategy, test=False, verbose=verbose
        )
        return results["validation"]["top1"]

    tuner = run_search(
        config.search,
        trial_fn,
        model_dir,
        config.run.seed,
        strategy,
    )
    if is_tuner_worker():
        return None
    best = tuner.oracle.get_best_trials(1)[0]
    best_dir = tuner.get_trial_dir(best.trial_id)
    with strategy.scope():
        model = keras.saving.load_model(
            os.path.join(best_dir, CLASSIFIER_FILE), compile=False
        )
    batch = config.options.eval_batch_size or config.run.batch_size
    test = evaluate(
        strategy, model, inputs.eval_fn(config.data.eval_data, batch)
    )
    path = os.path.join(model_dir, CLASSIFIER_FILE)
    shutil.copyfile(os.path.join(best_dir, CLASSIFIER_FILE), path)
    trials = [
        dict(
            trial_id=trial.trial_id,
            values=trial.hyperparameters.values,
            val_top1=trial.score,
            status=trial.status,
        )
        for trial in tuner.oracle.trials.values()
    ]
    results = dict(
        read_results(best_dir),
        top1=test["top1"],
        top5=test["top5"],
        test=test,
        classifier=path,
        model_dir=model_dir,
        config=config.to_dict(),
        search=dict(
            best_trial=best.trial_id,
            best_values=best.hyperparameters.values,
            best_dir=best_dir,
            trials=trials,
        ),
    )
    write_results(model_dir, results)
    return results


def dump(results):
    """One line of the headline numbers."""
    keys = ("top1", "top5", "label_fraction", "labelled_examples", "steps")
    return json.dumps({k: results.get(k) for k in keys})
