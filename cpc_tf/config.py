"""Frozen, validated configuration dataclasses.

Every field is one command-line flag of the same name (`cpc_tf.flags`
defines them from these classes, with each field's `help`); the defaults
are the paper's values. Validation happens on construction, before any
compute, and every message names the flag.
"""

import dataclasses
import json

import tensorflow as tf

from cpc_tf.context import DIRECTIONS
from cpc_tf.data.augment import RANDAUGMENT_OPS
from cpc_tf.encoders import NORMALIZATIONS, RESNET_V2_SPECS

LABEL_FRACTIONS = (1, 2, 5, 10, 20, 50, 100)
STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")
PRECISIONS = ("float32", "bfloat16", "float16")
# The boolean spelling of --mixed_precision before it took a precision.
_LEGACY_PRECISIONS = {"false": "float32", "true": "bfloat16"}
WEIGHT_DECAY_TYPES = ("l2", "decoupled")


class FlagError(ValueError):
    """A flag value that makes no sense; the message names the flag."""


def _field(default, help_text, **kwargs):
    return dataclasses.field(
        default=default, metadata={"help": help_text, **kwargs}
    )


def _fail(flag, message):
    raise FlagError(f"--{flag}: {message}")


def _check_probability(config, name):
    value = getattr(config, name)
    if not 0.0 <= value <= 1.0:
        _fail(name, f"a probability must be in [0, 1], got {value}.")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Data sources, patch geometry and augmentation (appendix A)."""

    train_data: str = _field(
        "mnist5k:train",
        "Training source: mnist5k:SPLIT, tfds:NAME[/CONFIG]:SPLIT, "
        "folder:DIR or tfrecord:GLOB.",
    )
    eval_data: str = _field(
        "mnist5k:test",
        "Evaluation source (same forms), or 'holdout': test on the --holdout "
        "images of --train_data (for data without a test split).",
    )
    data_dir: str = _field("", "TFDS data directory ('' = TFDS default).")
    image_size: int = _field(300, "Images are first resized to this square.")
    crop_size: int = _field(260, "Random (train) / center (eval) crop size.")
    patch_size: int = _field(80, "Side of each square patch.")
    patch_stride: int = _field(36, "Stride between patches.")
    label_fraction: float = _field(
        100.0, "Percent of labels used by evaluation (1, 2, 5, ... 100)."
    )
    holdout: float = _field(
        0.0,
        "Images held out of --train_data, a count (>= 1) or a fraction "
        "(< 1); pretraining never sees them. They are the test set with "
        "--eval_data=holdout, else the validation set. 0 = none.",
    )
    holdout_seed: int = _field(
        0,
        "Seed of the --holdout and --validation splits; unlike --seed it "
        "stays fixed, so every seed and every stage hold out the same images.",
    )
    validation: float = _field(
        0.0,
        "With --eval_data=holdout: validation images for model selection, "
        "a count or fraction of the training images left after --holdout "
        "(pretraining may see them, like the paper's). 0 = none.",
    )
    subset_dir: str = _field(
        "", "Where label subsets are written/read ('' = model_dir)."
    )
    shuffle_buffer: int = _field(10000, "Shuffle buffer (examples).")
    crop_min_area: float = _field(
        0.08,
        "Whole-image training (supervised, fine-tuning): the smallest area "
        "fraction of the Inception random-sized crop (Inception's 0.08).",
    )
    random_flip: bool = _field(
        True,
        "Whole-image training: random left-right flips (off for digits).",
    )
    randaugment: bool = _field(
        True, "Step 1: two AutoAugment/RandAugment ops per patch."
    )
    randaugment_num_ops: int = _field(2, "Step 1: ops drawn per patch.")
    randaugment_magnitude: float = _field(
        9.0, "Step 1: op magnitude on AutoAugment's 0-10 scale (RandAugment M)."
    )
    randaugment_ops: tuple = _field(
        RANDAUGMENT_OPS,
        "Step 1: the operations drawn from (default: AutoAugment's list).",
    )
    elastic_shear_prob: float = _field(
        0.2, "Step 2: probability of elastic deformation + shear."
    )
    color_histogram_prob: float = _field(
        0.2, "Step 2: probability of colour-histogram augmentation."
    )
    color_jitter_prob: float = _field(
        0.8, "Step 3: probability of Inception colour augmentation."
    )
    grayscale_prob: float = _field(0.25, "Step 4: probability of greyscale.")

    def __post_init__(self):
        for name in ("image_size", "crop_size", "patch_size", "patch_stride"):
            if getattr(self, name) < 1:
                _fail(name, f"must be >= 1, got {getattr(self, name)}.")
        if self.crop_size > self.image_size:
            _fail(
                "crop_size",
                f"{self.crop_size} is larger than --image_size "
                f"{self.image_size}.",
            )
        span = self.crop_size - self.patch_size
        if span < 0 or span % self.patch_stride:
            _fail(
                "patch_stride",
                f"patches of {self.patch_size} at stride {self.patch_stride} "
                f"do not tile a {self.crop_size} crop exactly "
                "((crop_size - patch_size) must be a non-negative multiple "
                "of patch_stride).",
            )
        if self.label_fraction not in LABEL_FRACTIONS:
            _fail(
                "label_fraction",
                f"expected one of {LABEL_FRACTIONS}, got "
                f"{self.label_fraction}.",
            )
        for name in ("holdout", "validation"):
            if getattr(self, name) < 0:
                _fail(name, f"must be >= 0, got {getattr(self, name)}.")
        if self.validation and self.eval_data != "holdout":
            _fail(
                "validation",
                "is for --eval_data=holdout; with a separate --eval_data "
                "the --holdout images are the validation set.",
            )
        if self.eval_data == "holdout" and not self.holdout:
            _fail(
                "eval_data",
                "'holdout' tests on the --holdout images; set --holdout.",
            )
        if not 0.0 < self.crop_min_area <= 1.0:
            _fail(
                "crop_min_area", f"must be in (0, 1], got {self.crop_min_area}."
            )
        for name in (
            "elastic_shear_prob",
            "color_histogram_prob",
            "color_jitter_prob",
            "grayscale_prob",
        ):
            _check_probability(self, name)
        unknown = set(self.randaugment_ops) - set(RANDAUGMENT_OPS)
        if unknown or not self.randaugment_ops:
            _fail(
                "randaugment_ops",
                f"unknown {sorted(unknown) or 'empty list'}; choose from "
                f"{','.join(RANDAUGMENT_OPS)}.",
            )
        if not 0.0 <= self.randaugment_magnitude <= 10.0:
            _fail(
                "randaugment_magnitude",
                f"must be in [0, 10], got {self.randaugment_magnitude}.",
            )

    @property
    def grid_size(self):
        """Patches per side of the grid."""
        return (self.crop_size - self.patch_size) // self.patch_stride + 1


# The ModelConfig fields that shape the encoder (`backbone_kwargs` reads
# these and `norm`); a network built from them matches the CPC encoder.
ENCODER_SHAPE_FIELDS = (
    "encoder_depth",
    "encoder_blocks",
    "encoder_widths",
    "encoder_output_widths",
    "stem_width",
    "stem_kernel",
    "stem_stride",
    "stem_pool",
)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Encoder and CPC head (appendix A, section 4 of the paper)."""

    encoder_depth: int = _field(
        161,
        "ResNet-v2 depth (50, 101, 152, 200, 161); 0 = the small custom "
        "encoder given by --encoder_blocks/--encoder_widths/...",
    )
    encoder_blocks: tuple = _field((1, 1), "Custom encoder: blocks per stack.")
    encoder_widths: tuple = _field(
        (16, 32), "Custom encoder: bottleneck width per stack."
    )
    encoder_output_widths: tuple = _field(
        (64, 128), "Custom encoder: output width per stack."
    )
    stem_width: int = _field(64, "Stem convolution channels.")
    stem_kernel: int = _field(7, "Stem kernel (7 ImageNet, 3 tiny images).")
    stem_stride: int = _field(2, "Stem stride.")
    stem_pool: bool = _field(True, "3x3/2 max pool after the stem.")
    norm: str = _field(
        "layer", "Encoder normalization: " + "|".join(NORMALIZATIONS)
    )
    directions: tuple = _field(
        DIRECTIONS, "Prediction directions (v2: down,up,left,right)."
    )
    steps_to_ignore: int = _field(2, "Offsets 1..steps_to_ignore skipped.")
    steps_to_predict: int = _field(3, "Largest offset predicted.")
    target_dim: int = _field(64, "Target / prediction width.")
    emb_scale: float = _field(0.1, "Prediction scale.")
    share_context: bool = _field(
        False, "One context network and predictors for all directions."
    )
    context_blocks: int = _field(5, "PixelCNN residual blocks.")
    context_hidden: int = _field(256, "PixelCNN hidden width.")
    loss_chunk_size: int = _field(
        0, "Prediction rows per InfoNCE logits chunk (0 = one chunk)."
    )

    def __post_init__(self):
        if self.encoder_depth and self.encoder_depth not in RESNET_V2_SPECS:
            _fail(
                "encoder_depth",
                f"expected 0 or one of {sorted(RESNET_V2_SPECS)}, got "
                f"{self.encoder_depth}.",
            )
        if self.norm not in NORMALIZATIONS:
            _fail("norm", f"expected one of {NORMALIZATIONS}, got {self.norm}.")
        unknown = [d for d in self.directions if d not in DIRECTIONS]
        if unknown or not self.directions:
            _fail(
                "directions",
                f"unknown {unknown or 'empty list'}; expected some of "
                f"{DIRECTIONS}.",
            )
        if not 0 <= self.steps_to_ignore < self.steps_to_predict:
            _fail(
                "steps_to_predict",
                "need 0 <= --steps_to_ignore < --steps_to_predict, got "
                f"{self.steps_to_ignore} and {self.steps_to_predict}.",
            )
        if not self.encoder_depth:
            lengths = {
                len(self.encoder_blocks),
                len(self.encoder_widths),
                len(self.encoder_output_widths),
            }
            if len(lengths) != 1:
                _fail(
                    "encoder_blocks",
                    "--encoder_blocks, --encoder_widths and "
                    "--encoder_output_widths need one entry per stack.",
                )

    def backbone_kwargs(self):
        """Keyword arguments of `encoders.resnet_v2` for this config."""
        kwargs = dict(
            norm=self.norm,
            stem_width=self.stem_width,
            stem_kernel=self.stem_kernel,
            stem_stride=self.stem_stride,
            stem_pool=self.stem_pool,
        )
        if self.encoder_depth:
            return dict(depth=self.encoder_depth, **kwargs)
        return dict(
            depth=None,
            blocks=tuple(int(v) for v in self.encoder_blocks),
            widths=tuple(int(v) for v in self.encoder_widths),
            output_widths=tuple(int(v) for v in self.encoder_output_widths),
            **kwargs,
        )

    def cpc_kwargs(self):
        """Keyword arguments of `model.CPC` for this config."""
        return dict(
            directions=tuple(self.directions),
            steps_to_ignore=self.steps_to_ignore,
            steps_to_predict=self.steps_to_predict,
            target_dim=self.target_dim,
            emb_scale=self.emb_scale,
            share_context=self.share_context,
            context_blocks=self.context_blocks,
            context_hidden=self.context_hidden,
            loss_chunk_size=self.loss_chunk_size or None,
        )


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """Optimisation (appendix A: Adam 4e-4, beta1 0.8, clip 0.01, EMA)."""

    optimizer: str = _field("adam", "adam | sgd.")
    learning_rate: float = _field(4e-4, "Peak learning rate.")
    beta1: float = _field(0.8, "Adam beta1 (SGD: momentum).")
    beta2: float = _field(0.999, "Adam beta2.")
    epsilon: float = _field(1e-8, "Adam epsilon.")
    weight_decay: float = _field(
        0.0,
        "Weight decay strength (0 = none). Kernels only: normalization "
        "parameters and biases are never decayed.",
    )
    weight_decay_type: str = _field(
        "l2",
        "l2: the penalty weight_decay / 2 * sum(kernel ** 2) added to the "
        "loss (the paper's); decoupled: Keras's decoupled decay in the "
        "optimizer step.",
    )
    clip_global_norm: float = _field(
        0.01, "Clip the aggregated gradient to this global norm (0 = off)."
    )
    lr_schedule: str = _field("constant", "constant | cosine.")
    warmup_steps: int = _field(0, "Linear warm-up steps.")
    ema_decay: float = _field(
        0.9999, "Polyak averaging decay (warm-up min(d, (1+n)/(10+n)))."
    )

    def __post_init__(self):
        if self.optimizer not in ("adam", "sgd"):
            _fail("optimizer", f"expected adam or sgd, got {self.optimizer}.")
        if self.learning_rate <= 0:
            _fail("learning_rate", f"must be > 0, got {self.learning_rate}.")
        if self.lr_schedule not in ("constant", "cosine"):
            _fail(
                "lr_schedule",
                f"expected constant or cosine, got {self.lr_schedule}.",
            )
        if self.clip_global_norm < 0:
            _fail("clip_global_norm", "must be >= 0.")
        if not 0.0 <= self.ema_decay < 1.0:
            _fail("ema_decay", f"must be in [0, 1), got {self.ema_decay}.")
        if self.warmup_steps < 0:
            _fail("warmup_steps", "must be >= 0.")
        if self.weight_decay < 0:
            _fail("weight_decay", f"must be >= 0, got {self.weight_decay}.")
        if self.weight_decay_type not in WEIGHT_DECAY_TYPES:
            _fail(
                "weight_decay_type",
                f"expected one of {WEIGHT_DECAY_TYPES}, got "
                f"{self.weight_decay_type}.",
            )


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Where, how long and on what the job runs."""

    model_dir: str = _field("runs/cpc", "Checkpoints, logs and results.")
    batch_size: int = _field(512, "Global batch size (all replicas).")
    steps: int = _field(
        0, "Training steps; 0 = --epochs over the training data."
    )
    epochs: float = _field(200.0, "Epochs, when --steps is 0.")
    min_steps: int = _field(
        0, "With --epochs: train at least this many steps (small subsets)."
    )
    steps_per_loop: int = _field(
        1,
        "Training steps per call of the compiled loop; the NaN check, "
        "summaries and the progress bar run once per loop.",
    )
    strategy: str = _field("default", "|".join(STRATEGIES))
    tpu: str = _field("", "TPU address, for --strategy=tpu.")
    negatives: str = _field(
        "local", "InfoNCE negatives: local (replica batch) | global."
    )
    mixed_precision: str = _field(
        "float32",
        "Compute precision: float32 | bfloat16 (mixed_bfloat16: TPUs, "
        "A100/H100, AMX CPUs) | float16 (mixed_float16 with dynamic loss "
        "scaling: V100, T4).",
    )
    jit_compile: bool = _field(False, "XLA-compile the train step.")
    checkpoint_every: int = _field(1000, "Steps between checkpoints.")
    keep_checkpoints: int = _field(3, "Checkpoints kept.")
    log_every: int = _field(100, "Steps between TensorBoard summaries.")
    use_ema: bool = _field(
        True, "Evaluate and export the Polyak-averaged weights."
    )
    seed: int = _field(0, "Seed for initialisation, data order, augmentation.")

    def __post_init__(self):
        precision = str(self.mixed_precision).lower()
        precision = _LEGACY_PRECISIONS.get(precision, precision)
        if precision not in PRECISIONS:
            _fail(
                "mixed_precision",
                f"expected one of {PRECISIONS}, got {self.mixed_precision}.",
            )
        object.__setattr__(self, "mixed_precision", precision)
        if self.batch_size < 1:
            _fail("batch_size", f"must be >= 1, got {self.batch_size}.")
        if self.strategy not in STRATEGIES:
            _fail(
                "strategy",
                f"expected one of {STRATEGIES}, got {self.strategy}.",
            )
        if self.strategy == "tpu" and not self.tpu:
            _fail("tpu", "--strategy=tpu needs --tpu (a TPU name or address).")
        if self.negatives not in ("local", "global"):
            _fail(
                "negatives",
                f"expected local or global, got {self.negatives}.",
            )
        if self.steps < 0 or (self.steps == 0 and self.epochs <= 0):
            _fail("steps", "set --steps > 0 or --epochs > 0.")
        if self.min_steps < 0:
            _fail("min_steps", f"must be >= 0, got {self.min_steps}.")
        for name in (
            "checkpoint_every",
            "log_every",
            "keep_checkpoints",
            "steps_per_loop",
        ):
            if getattr(self, name) < 1:
                _fail(name, f"must be >= 1, got {getattr(self, name)}.")

    @property
    def dtype_policy(self):
        """The Keras dtype policy name of `mixed_precision`."""
        if self.mixed_precision == "float32":
            return "float32"
        return f"mixed_{self.mixed_precision}"


@dataclasses.dataclass(frozen=True)
class KnnConfig:
    """The weighted k-NN monitor (Wu et al. 2018) of the EMA encoder."""

    knn_every: int = _field(
        0,
        "Pretraining: score the EMA encoder with k-NN every N steps and at "
        "the end (0 = never).",
    )
    knn_memory: int = _field(
        5000, "Labelled training images in the k-NN memory (0 = all)."
    )
    knn_queries: int = _field(
        2000,
        "Query images (the hold-out, or --eval_data) per k-NN score (0 = all).",
    )
    knn_k: int = _field(200, "Neighbours that vote.")
    knn_temperature: float = _field(
        0.07, "Vote weight exp(cosine similarity / temperature)."
    )

    def __post_init__(self):
        if self.knn_every < 0:
            _fail("knn_every", f"must be >= 0, got {self.knn_every}.")
        for name in ("knn_memory", "knn_queries"):
            if getattr(self, name) < 0:
                _fail(name, f"must be >= 0, got {getattr(self, name)}.")
        if self.knn_k < 1:
            _fail("knn_k", f"must be >= 1, got {self.knn_k}.")
        if self.knn_temperature <= 0:
            _fail("knn_temperature", "must be > 0.")


@dataclasses.dataclass(frozen=True)
class PretrainConfig:
    """Everything `cpc_tf.pretrain` needs."""

    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    run: RunConfig = dataclasses.field(default_factory=RunConfig)
    knn: KnnConfig = dataclasses.field(default_factory=KnnConfig)

    def __post_init__(self):
        grid = self.data.grid_size
        if self.model.steps_to_predict >= grid:
            _fail(
                "steps_to_predict",
                f"{self.model.steps_to_predict} needs a patch grid larger "
                f"than that, but --crop_size {self.data.crop_size}, "
                f"--patch_size {self.data.patch_size}, --patch_stride "
                f"{self.data.patch_stride} give a {grid}x{grid} grid.",
            )

    def to_dict(self):
        return dataclasses.asdict(self)

    def to_json(self, path):
        with tf.io.gfile.GFile(path, "w") as f:
            json.dump(self.to_dict(), f, indent=2, sort_keys=True)


def from_dict(cls, values):
    """Builds dataclass `cls` from a (possibly nested) dict, e.g. JSON."""
    kwargs = {}
    for field in dataclasses.fields(cls):
        if field.name not in values:
            continue
        value = values[field.name]
        if dataclasses.is_dataclass(field.type):
            value = from_dict(field.type, value)
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[field.name] = value
    return cls(**kwargs)


def read_json(cls, path):
    with tf.io.gfile.GFile(path) as f:
        return from_dict(cls, json.load(f))
