"""Shared by the entry-point tests: flag parsing and a fast tiny setting."""

import os

from absl import flags as absl_flags

from cpc_tf import flags as cpc_flags
from cpc_tf.config import (
    DataConfig,
    KnnConfig,
    ModelConfig,
    OptimConfig,
    PretrainConfig,
    RunConfig,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST = [
    "--steps_to_ignore=1",
    "--steps_to_predict=2",
    "--image_size=20",
    "--crop_size=16",
    "--patch_size=8",
    "--patch_stride=4",
    "--encoder_blocks=1",
    "--encoder_widths=4",
    "--encoder_output_widths=8",
    "--stem_width=4",
    "--context_hidden=8",
    "--context_blocks=1",
    "--target_dim=8",
    "--batch_size=4",
    "--shuffle_buffer=16",
    "--knn_every=0",
]


def parse(*args):
    """A `PretrainConfig` from command-line style arguments."""
    values = absl_flags.FlagValues()
    cpc_flags.define_config_flags(
        DataConfig,
        ModelConfig,
        OptimConfig,
        RunConfig,
        KnnConfig,
        flag_values=values,
    )
    values(["pretrain", *args])
    return cpc_flags.config_from_flags(PretrainConfig, values)
