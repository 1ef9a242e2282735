"""Shared by the tests: flag parsing, a fast tiny setting, test patches."""

import os

import numpy as np

from cpc_tf import flags as cpc_flags

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
    return cpc_flags.parse_pretrain_args(args, program="pretrain")


def textured_patches(n=8, size=12, seed=0):
    """float32 [n, size, size, 3] on the 8-bit grid: a ramp, noise, a tint."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0.1, 0.9, size)[None, :, None, None]
    noise = rng.random((n, size, size, 3)) * 0.3
    tint = rng.random((n, 1, 1, 3)) * 0.4
    images = np.clip(ramp.transpose(0, 2, 1, 3) * 0.5 + noise + tint, 0, 1)
    return (np.round(images * 255) / 255).astype(np.float32)


def in_unit_range(x):
    """Whether every value of `x` lies in [0, 1]."""
    x = np.asarray(x)
    return x.min() >= 0.0 and x.max() <= 1.0
