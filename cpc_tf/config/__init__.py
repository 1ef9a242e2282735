"""Frozen, validated configuration dataclasses.

Every field is one command-line flag of the same name (`cpc_tf.flags`
defines them from these classes, with each field's `help`); the defaults
are the paper's values. Validation happens on construction, before any
compute, and every message names the flag.
"""

import dataclasses
import json

import tensorflow as tf

from cpc_tf.config.base import (
    FlagError,
    check_probability,
    config_field,
    flag_error,
    from_dict,
    read_json,
)
from cpc_tf.config.data import HOLDOUT, LABEL_FRACTIONS, DataConfig
from cpc_tf.config.memory import REMAT_MODES, MemoryConfig
from cpc_tf.config.model import ENCODER_SHAPE_FIELDS, ModelConfig
from cpc_tf.config.training import (
    PRECISIONS,
    STRATEGIES,
    WEIGHT_DECAY_TYPES,
    KnnConfig,
    OptimConfig,
    RunConfig,
)

__all__ = [
    "ENCODER_SHAPE_FIELDS",
    "HOLDOUT",
    "LABEL_FRACTIONS",
    "MemoryConfig",
    "PRECISIONS",
    "REMAT_MODES",
    "STRATEGIES",
    "WEIGHT_DECAY_TYPES",
    "DataConfig",
    "FlagError",
    "KnnConfig",
    "ModelConfig",
    "OptimConfig",
    "PretrainConfig",
    "RunConfig",
    "check_probability",
    "config_field",
    "flag_error",
    "from_dict",
    "read_json",
]


@dataclasses.dataclass(frozen=True)
class PretrainConfig:
    """Everything `cpc_tf.pretrain` needs."""

    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    run: RunConfig = dataclasses.field(default_factory=RunConfig)
    knn: KnnConfig = dataclasses.field(default_factory=KnnConfig)
    memory: MemoryConfig = dataclasses.field(default_factory=MemoryConfig)

    def __post_init__(self):
        if self.memory.microbatches > 1 and self.model.norm == "batch":
            flag_error(
                "microbatches",
                "needs an encoder without batch statistics (--norm=layer, "
                "group or none): batch normalisation makes each image's "
                "features depend on its micro-batch.",
            )
        grid = self.data.grid_size
        if self.model.steps_to_predict >= grid:
            flag_error(
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
