"""The training groups: optimisation, the run and the k-NN monitor."""

import dataclasses

from cpc_tf.config.base import config_field, flag_error

STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")
PRECISIONS = ("float32", "bfloat16", "float16")
# The boolean spelling of --mixed_precision before it took a precision.
_LEGACY_PRECISIONS = {"false": "float32", "true": "bfloat16"}
WEIGHT_DECAY_TYPES = ("l2", "decoupled")


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """Optimisation (appendix A: Adam 4e-4, beta1 0.8, clip 0.01, EMA)."""

    optimizer: str = config_field("adam", "adam | sgd.")
    learning_rate: float = config_field(4e-4, "Peak learning rate.")
    beta1: float = config_field(0.8, "Adam beta1 (SGD: momentum).")
    beta2: float = config_field(0.999, "Adam beta2.")
    epsilon: float = config_field(1e-8, "Adam epsilon.")
    weight_decay: float = config_field(
        0.0,
        "Weight decay strength (0 = none). Kernels only: normalization "
        "parameters and biases are never decayed.",
    )
    weight_decay_type: str = config_field(
        "l2",
        "l2: the penalty weight_decay / 2 * sum(kernel ** 2) added to the "
        "loss (the paper's); decoupled: Keras's decoupled decay in the "
        "optimizer step.",
    )
    clip_global_norm: float = config_field(
        0.01, "Clip the aggregated gradient to this global norm (0 = off)."
    )
    lr_schedule: str = config_field("constant", "constant | cosine.")
    warmup_steps: int = config_field(0, "Linear warm-up steps.")
    ema_decay: float = config_field(
        0.9999, "Polyak averaging decay (warm-up min(d, (1+n)/(10+n)))."
    )

    def __post_init__(self):
        if self.optimizer not in ("adam", "sgd"):
            flag_error(
                "optimizer", f"expected adam or sgd, got {self.optimizer}."
            )
        if self.learning_rate <= 0:
            flag_error(
                "learning_rate", f"must be > 0, got {self.learning_rate}."
            )
        if self.lr_schedule not in ("constant", "cosine"):
            flag_error(
                "lr_schedule",
                f"expected constant or cosine, got {self.lr_schedule}.",
            )
        if self.clip_global_norm < 0:
            flag_error("clip_global_norm", "must be >= 0.")
        if not 0.0 <= self.ema_decay < 1.0:
            flag_error("ema_decay", f"must be in [0, 1), got {self.ema_decay}.")
        if self.warmup_steps < 0:
            flag_error("warmup_steps", "must be >= 0.")
        if self.weight_decay < 0:
            flag_error(
                "weight_decay", f"must be >= 0, got {self.weight_decay}."
            )
        if self.weight_decay_type not in WEIGHT_DECAY_TYPES:
            flag_error(
                "weight_decay_type",
                f"expected one of {WEIGHT_DECAY_TYPES}, got "
                f"{self.weight_decay_type}.",
            )


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Where, how long and on what the job runs."""

    model_dir: str = config_field("runs/cpc", "Checkpoints, logs and results.")
    batch_size: int = config_field(512, "Global batch size (all replicas).")
    steps: int = config_field(
        0, "Training steps; 0 = --epochs over the training data."
    )
    epochs: float = config_field(200.0, "Epochs, when --steps is 0.")
    min_steps: int = config_field(
        0, "With --epochs: train at least this many steps (small subsets)."
    )
    steps_per_loop: int = config_field(
        1,
        "Training steps per call of the compiled loop; the NaN check, "
        "summaries and the progress bar run once per loop.",
    )
    strategy: str = config_field("default", "|".join(STRATEGIES))
    tpu: str = config_field("", "TPU address, for --strategy=tpu.")
    negatives: str = config_field(
        "local", "InfoNCE negatives: local (replica batch) | global."
    )
    mixed_precision: str = config_field(
        "float32",
        "Compute precision: float32 | bfloat16 (mixed_bfloat16: TPUs, "
        "A100/H100, AMX CPUs) | float16 (mixed_float16 with dynamic loss "
        "scaling: V100, T4).",
    )
    jit_compile: bool = config_field(False, "XLA-compile the train step.")
    allreduce_pack_mb: float = config_field(
        32.0,
        "Split the gradient all-reduce into packs of about this many MiB, "
        "so that packs travel while others are summed (multi-worker); "
        "0 = one pack. TPUs ignore it.",
    )
    checkpoint_every: int = config_field(1000, "Steps between checkpoints.")
    keep_checkpoints: int = config_field(3, "Checkpoints kept.")
    async_checkpoint: bool = config_field(
        False,
        "Write checkpoints in the background: a save copies the variables "
        "to host RAM (one more copy of the checkpoint: ~5.7 GB at "
        "ResNet-161) and training goes on while TF writes the files; every "
        "exit waits for the write in flight.",
    )
    restart: bool = config_field(
        False,
        "Start from step 0 although --model_dir holds checkpoints (they are "
        "moved to checkpoints/replaced/, never deleted). Without it a run "
        "resumes from the newest checkpoint that restores, and fails if "
        "none does.",
    )
    maintenance_url: str = config_field(
        "auto",
        "The cloud's maintenance notice to watch (a value other than NONE "
        "stops training like SIGTERM): auto = the GCE metadata server's "
        "instance/maintenance-event on a Google Cloud VM or TPU VM; none = "
        "off; or a URL.",
    )
    log_every: int = config_field(100, "Steps between TensorBoard summaries.")
    use_ema: bool = config_field(
        True, "Evaluate and export the Polyak-averaged weights."
    )
    seed: int = config_field(
        0, "Seed for initialisation, data order, augmentation."
    )

    def __post_init__(self):
        precision = str(self.mixed_precision).lower()
        precision = _LEGACY_PRECISIONS.get(precision, precision)
        if precision not in PRECISIONS:
            flag_error(
                "mixed_precision",
                f"expected one of {PRECISIONS}, got {self.mixed_precision}.",
            )
        object.__setattr__(self, "mixed_precision", precision)
        if self.batch_size < 1:
            flag_error("batch_size", f"must be >= 1, got {self.batch_size}.")
        if self.strategy not in STRATEGIES:
            flag_error(
                "strategy",
                f"expected one of {STRATEGIES}, got {self.strategy}.",
            )
        if self.strategy == "tpu" and not self.tpu:
            flag_error(
                "tpu", "--strategy=tpu needs --tpu (a TPU name or address)."
            )
        if self.negatives not in ("local", "global"):
            flag_error(
                "negatives",
                f"expected local or global, got {self.negatives}.",
            )
        if self.steps < 0 or (self.steps == 0 and self.epochs <= 0):
            flag_error("steps", "set --steps > 0 or --epochs > 0.")
        if self.allreduce_pack_mb < 0:
            flag_error(
                "allreduce_pack_mb",
                f"must be >= 0, got {self.allreduce_pack_mb}.",
            )
        if self.min_steps < 0:
            flag_error("min_steps", f"must be >= 0, got {self.min_steps}.")
        for name in (
            "checkpoint_every",
            "log_every",
            "keep_checkpoints",
            "steps_per_loop",
        ):
            if getattr(self, name) < 1:
                flag_error(name, f"must be >= 1, got {getattr(self, name)}.")

    @property
    def dtype_policy(self):
        """The Keras dtype policy name of `mixed_precision`."""
        if self.mixed_precision == "float32":
            return "float32"
        return f"mixed_{self.mixed_precision}"


@dataclasses.dataclass(frozen=True)
class KnnConfig:
    """The weighted k-NN monitor (Wu et al. 2018) of the EMA encoder."""

    knn_every: int = config_field(
        0,
        "Pretraining: score the EMA encoder with k-NN every N steps and at "
        "the end (0 = never).",
    )
    knn_memory: int = config_field(
        5000, "Labelled training images in the k-NN memory (0 = all)."
    )
    knn_queries: int = config_field(
        2000,
        "Query images (the hold-out, or --eval_data) per k-NN score (0 = all).",
    )
    knn_k: int = config_field(200, "Neighbours that vote.")
    knn_temperature: float = config_field(
        0.07, "Vote weight exp(cosine similarity / temperature)."
    )

    def __post_init__(self):
        if self.knn_every < 0:
            flag_error("knn_every", f"must be >= 0, got {self.knn_every}.")
        for name in ("knn_memory", "knn_queries"):
            if getattr(self, name) < 0:
                flag_error(name, f"must be >= 0, got {getattr(self, name)}.")
        if self.knn_k < 1:
            flag_error("knn_k", f"must be >= 1, got {self.knn_k}.")
        if self.knn_temperature <= 0:
            flag_error("knn_temperature", "must be > 0.")
