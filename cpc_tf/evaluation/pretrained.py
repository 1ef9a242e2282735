"""The pretrained encoder an evaluation starts from.

Always built from the pretraining run's `config.json` (so it follows this
run's dtype policy), then given the weights of its `encoder.keras` /
`backbone.keras` (the Polyak-averaged ones), or left at a fresh random
initialisation (`--random_init`, the baseline).
"""

import dataclasses
import os

import keras
import tensorflow as tf

from cpc_tf.config import PretrainConfig, flag_error, read_json
from cpc_tf.evaluation.configs import GEOMETRY_FLAGS
from cpc_tf.models import encoders
from cpc_tf.rundir import artifacts
from cpc_tf.training.builders import build_backbone


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
            flag_error(
                name,
                f"{getattr(data, name)} differs from the pretraining run's "
                f"{values[name]}; linear evaluation uses the pretraining "
                "patch geometry (drop the flag).",
            )
    return dataclasses.replace(data, **values)


def read_pretrained(pretrained_dir, required, random_init):
    """Checks a pretraining model_dir; returns its `PretrainConfig`.

    Args:
        pretrained_dir: the directory (any TF file system).
        required: the artifact the protocol loads (`artifacts.ENCODER_FILE`
            or `artifacts.BACKBONE_FILE`); not needed with `random_init`.
        random_init: whether only the architecture is needed.

    Raises:
        FlagError: naming `--pretrained_dir`, when a file is missing.
    """
    if not tf.io.gfile.isdir(pretrained_dir):
        flag_error("pretrained_dir", f"{pretrained_dir} is not a directory.")
    needed = [artifacts.CONFIG_FILE] + ([] if random_init else [required])
    missing = [
        name
        for name in needed
        if not tf.io.gfile.exists(os.path.join(pretrained_dir, name))
    ]
    if missing:
        flag_error(
            "pretrained_dir",
            f"{pretrained_dir} has no {' or '.join(missing)}; point it at "
            "the model_dir of a finished `cpc_tf.pretrain` run.",
        )
    return read_json(
        PretrainConfig, os.path.join(pretrained_dir, artifacts.CONFIG_FILE)
    )


def read_pretrain_summary(pretrained_dir):
    """The pretraining run's `summary.json`, or None."""
    path = os.path.join(pretrained_dir, artifacts.SUMMARY_FILE)
    if not tf.io.gfile.exists(path):
        return None
    return artifacts.read_json(path)


def _copy_weights(model, pretrained_dir, name):
    path = os.path.join(pretrained_dir, name)
    saved = keras.saving.load_model(path, compile=False)
    try:
        model.set_weights(saved.get_weights())
    except ValueError as error:
        flag_error(
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
    model = encoders.patch_grid_model(encoder, (grid, grid, patch, patch, 3))
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


def pretrained_results(protocol, options):
    """The `results.json` entries naming the protocol and its encoder."""
    directory = options.pretrained_dir
    if "://" not in directory:
        directory = os.path.abspath(directory)
    return dict(
        protocol=protocol,
        pretrained_dir=directory,
        random_init=options.random_init,
    )
