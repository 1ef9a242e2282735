"""The configurations of the evaluation protocols (appendices B and C).

`LinearEvalConfig`, `SupervisedConfig` and `FinetuneConfig` nest the
pretraining groups (`DataConfig`, `OptimConfig`, `RunConfig`, ...) with
the protocol's own options; every field is a flag of the same name.
"""

import dataclasses

from cpc_tf.config import (
    HOLDOUT,
    DataConfig,
    KnnConfig,
    ModelConfig,
    OptimConfig,
    RunConfig,
    config_field,
    flag_error,
)

GEOMETRY_FLAGS = ("image_size", "crop_size", "patch_size", "patch_stride")
SEARCH_ALGORITHMS = ("random", "bayesian")
PROBES = ("augmented", "cached", "knn")
# `--eval_data=holdout`: test on the --holdout images of --train_data.


def _dropout_field():
    return config_field(0.0, "Dropout rate before the final linear layer.")


def _check_dropout(config):
    if not 0.0 <= config.dropout < 1.0:
        flag_error("dropout", f"must be in [0, 1), got {config.dropout}.")


@dataclasses.dataclass(frozen=True)
class EvalOptions:
    """Options every protocol has."""

    augment: bool = config_field(
        True,
        "Augment the training data (appendix A steps 1-4, as set by the "
        "augmentation flags); false: no augmentation.",
    )
    eval_batch_size: int = config_field(
        0, "Global batch size of validation and test (0 = --batch_size)."
    )
    eval_every: int = config_field(
        0,
        "Steps between validation evaluations; the best one is kept and "
        "tested (model selection). 0 = ten per run.",
    )
    patience: int = config_field(
        0,
        "Early stopping: end training once this many validation "
        "evaluations in a row have not beaten the best (0 = run the whole "
        "budget). The best evaluation is tested either way.",
    )

    def __post_init__(self):
        for name in ("eval_batch_size", "eval_every", "patience"):
            if getattr(self, name) < 0:
                flag_error(name, "must be >= 0.")


@dataclasses.dataclass(frozen=True)
class LinearOptions(EvalOptions):
    """The linear probe (appendix B) on a pretrained encoder."""

    pretrained_dir: str = config_field(
        "runs/cpc",
        "Model directory of a pretraining run (config.json, encoder.keras, "
        "backbone.keras).",
    )
    random_init: bool = config_field(
        False,
        "Baseline: the pretrained architecture (from config.json) with "
        "fresh random weights instead of the pretrained ones.",
    )

    def __post_init__(self):
        super().__post_init__()
        if not self.pretrained_dir:
            flag_error(
                "pretrained_dir", "is required (a pretraining model_dir)."
            )


@dataclasses.dataclass(frozen=True)
class ProbeOptions(LinearOptions):
    """How the linear probe is trained: streamed (the paper), cached, k-NN."""

    probe: str = config_field(
        "augmented",
        "augmented: the appendix B head trained on streamed, augmented "
        "patch grids (the paper's); cached: features embedded once with "
        "the frozen encoder, the head trained on them to convergence with "
        "its L2 strength and epochs chosen on the validation split; knn: "
        "the weighted k-NN classifier of the features (--knn_* flags).",
    )
    probe_views: int = config_field(
        0, "cached: augmented views per training image added to its plain one."
    )
    probe_features: str = config_field(
        "encoder",
        "cached/knn: encoder (the frozen encoder's mean-pooled features) "
        "or pixels (the raw-pixel floor: flattened centre-cropped "
        "--image_size images, no encoder).",
    )
    probe_l2: tuple = config_field(
        (0.0, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1),
        "cached: L2 strengths tried (penalty l2 / 2 * sum(kernel ** 2)).",
    )
    probe_epochs: int = config_field(
        300, "cached: most epochs per L2 strength."
    )
    probe_patience: int = config_field(
        20, "cached: stop after this many epochs without a better validation."
    )
    probe_min_steps: int = config_field(
        2000,
        "cached: raise --probe_epochs to at least this many Adam steps and "
        "--probe_patience to a tenth of them (a small label set makes one "
        "step per epoch).",
    )
    probe_batch_size: int = config_field(512, "cached: batch size of the head.")
    probe_learning_rate: float = config_field(
        1e-3, "cached: Adam learning rate."
    )
    probe_cache: bool = config_field(
        True,
        "cached/knn: keep whole sources' features in "
        "<pretrained_dir>/features/ so later runs on the same encoder (other "
        "fractions, seeds) skip the embedding (single-worker runs).",
    )

    def __post_init__(self):
        super().__post_init__()
        if self.probe not in PROBES:
            flag_error("probe", f"expected one of {PROBES}, got {self.probe}.")
        if self.probe_features not in ("encoder", "pixels"):
            flag_error(
                "probe_features",
                f"expected encoder or pixels, got {self.probe_features}.",
            )
        if self.probe_features == "pixels" and self.probe == "augmented":
            flag_error("probe_features", "pixels needs --probe=cached or knn.")
        if self.probe_views < 0:
            flag_error("probe_views", "must be >= 0.")
        if not self.probe_l2 or min(self.probe_l2) < 0:
            flag_error("probe_l2", f"need values >= 0, got {self.probe_l2}.")
        for name in ("probe_epochs", "probe_patience", "probe_batch_size"):
            if getattr(self, name) < 1:
                flag_error(name, f"must be >= 1, got {getattr(self, name)}.")
        if self.probe_min_steps < 0:
            flag_error("probe_min_steps", "must be >= 0.")
        if self.probe_learning_rate <= 0:
            flag_error("probe_learning_rate", "must be > 0.")


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
    classifier_blocks: int = config_field(11, "Residual bottleneck blocks.")
    classifier_hidden: int = config_field(4096, "Width of the residual stream.")
    classifier_bottleneck: int = config_field(1024, "Width inside each block.")
    phase1_epochs: float = config_field(
        30.0,
        "Epochs of the labelled subset training the classifier on frozen "
        "features (at least --min_steps steps).",
    )
    phase2_epochs: float = config_field(
        30.0,
        "Epochs of the labelled subset fine-tuning everything: classifier "
        "with --optimizer, encoder with Adam (at least --min_steps steps).",
    )
    phase1_steps: int = config_field(
        0, "Phase 1 steps instead of --phase1_epochs (0 = from epochs)."
    )
    phase2_steps: int = config_field(
        0, "Phase 2 steps instead of --phase2_epochs (0 = from epochs)."
    )
    encoder_learning_rate: float = config_field(
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
                flag_error(name, f"must be >= 1, got {getattr(self, name)}.")
        for name in (
            "phase1_steps",
            "phase2_steps",
            "phase1_epochs",
            "phase2_epochs",
        ):
            if getattr(self, name) < 0:
                flag_error(name, f"must be >= 0, got {getattr(self, name)}.")
        if not (
            self.phase1_steps
            or self.phase2_steps
            or self.phase1_epochs
            or self.phase2_epochs
        ):
            flag_error("phase1_epochs", "both phases are empty.")
        if self.encoder_learning_rate <= 0:
            flag_error("encoder_learning_rate", "must be > 0.")


@dataclasses.dataclass(frozen=True)
class SearchConfig:
    """The hyperparameter search of appendix C.1 (keras-tuner)."""

    search: bool = config_field(
        False,
        "Search learning rate, weight decay, dropout and per-worker batch "
        "on the --holdout validation data, then test the best trial.",
    )
    search_trials: int = config_field(20, "Trials of the search.")
    search_algorithm: str = config_field(
        "random", "keras-tuner oracle: " + "|".join(SEARCH_ALGORITHMS)
    )
    search_learning_rates: tuple = config_field(
        (0.05, 0.1, 0.2), "Learning rates to choose from."
    )
    search_weight_decay: tuple = config_field(
        (1e-5, 1e-2), "Weight decay range, sampled log-uniformly."
    )
    search_dropout: tuple = config_field(
        (0.0, 0.9), "Dropout range, sampled uniformly (1 drops everything)."
    )
    search_batch_sizes: tuple = config_field(
        (16, 32), "Per-worker (per-replica) batch sizes to choose from."
    )

    def __post_init__(self):
        if self.search_trials < 1:
            flag_error("search_trials", "must be >= 1.")
        if self.search_algorithm not in SEARCH_ALGORITHMS:
            flag_error(
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
                flag_error(name, f"expected MIN,MAX, got {values}.")
            if values[0] < low or (high is not None and values[1] >= high):
                flag_error(name, f"{values} is out of range.")
        if self.search_weight_decay[0] <= 0:
            flag_error("search_weight_decay", "log sampling needs MIN > 0.")
        if (
            not self.search_learning_rates
            or min(self.search_learning_rates) <= 0
        ):
            flag_error("search_learning_rates", "need positive values.")
        if not self.search_batch_sizes or min(self.search_batch_sizes) < 1:
            flag_error("search_batch_sizes", "need sizes >= 1.")


def has_validation(data):
    """Whether `data` sets validation images apart (for model selection)."""
    if data.eval_data == HOLDOUT:
        return bool(data.validation)
    return bool(data.holdout)


_NEEDS_VALIDATION = (
    "needs validation images: --holdout (e.g. 10000 or 0.1), or with "
    "--eval_data=holdout (the hold-out is then the test set) --validation."
)


def _check_validation_users(config):
    """`--search` and `--patience` select on validation images."""
    search = getattr(config, "search", None)
    for flag, used in (
        ("search", search is not None and search.search),
        ("patience", config.options.patience),
    ):
        if used and not has_validation(config.data):
            flag_error(flag, _NEEDS_VALIDATION)


class _ConfigMixin:
    def to_dict(self):
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class LinearEvalConfig(_ConfigMixin):
    """Everything `cpc_tf.linear_eval` needs."""

    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    run: RunConfig = dataclasses.field(default_factory=RunConfig)
    options: ProbeOptions = dataclasses.field(default_factory=ProbeOptions)
    knn: KnnConfig = dataclasses.field(default_factory=KnnConfig)

    def __post_init__(self):
        _check_validation_users(self)


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
        _check_validation_users(self)


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
        _check_validation_users(self)
        if self.run.steps:
            flag_error(
                "steps",
                "fine-tuning runs --phase1_epochs then --phase2_epochs "
                "(or --phase1_steps, --phase2_steps); leave --steps unset.",
            )
