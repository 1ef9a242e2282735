"""Pretrained CPC encoders as Keras models for transfer learning.

`load_encoder(path, kind)` reads a model directory, an export directory
(its newest version), a version directory or a `.keras` file and returns
a Keras model that drops into `keras.Sequential` or functional models.
"""

import os

import keras
import tensorflow as tf
from keras import layers

from cpc_tf.models.encoders import PatchEncoder, patch_grid_model
from cpc_tf.rundir import artifacts

KINDS = ("image", "features", "patches")


def load_encoder(path, kind="image", trainable=True):
    """Loads a pre-trained CPC encoder as a Keras model for transfer.

    The result drops into `keras.Sequential` or functional models and
    trains with `fit`. Its inputs are float32 in [-1, 1], as
    `data.pipeline.eval_image` / `eval_patches` make them.

    Args:
        path: a model directory, an export directory (its newest version),
            one version directory, or a `.keras` file holding the patch
            encoder or the backbone.
        kind: "image": images `[B, h, w, 3]` -> `[B, D]` (backbone and
            global average pooling); "features": images -> the feature
            map `[B, h', w', D]`; "patches": patch grids
            `[B, gh, gw, ph, pw, 3]` -> `[B, gh, gw, D]`.
        trainable: False freezes every weight (layers such as batch
            normalization then also run in inference mode).

    Returns:
        A `keras.Model`.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}.")
    if tf.io.gfile.isdir(path):
        name = (
            artifacts.ENCODER_FILE
            if kind == "patches"
            else artifacts.BACKBONE_FILE
        )
        path = os.path.join(_model_files_dir(path), name)
    model = keras.saving.load_model(path, compile=False)
    if kind == "patches":
        if len(model.input_shape) != 6:
            model = patch_grid_model(
                PatchEncoder(model), (None, None) + model.input_shape[1:]
            )
    else:
        if len(model.input_shape) == 6:
            model = next(
                layer
                for layer in model.layers
                if isinstance(layer, PatchEncoder)
            ).backbone
        if kind == "image":
            inputs = keras.Input(model.input_shape[1:], name="images")
            pooled = layers.GlobalAveragePooling2D(name="pool")(model(inputs))
            model = keras.Model(inputs, pooled, name="cpc_image_encoder")
    model.trainable = trainable
    return model


def _versions(directory):
    """The integer-named subdirectories of `directory` (TF Serving's)."""
    if not tf.io.gfile.isdir(directory):
        return []
    names = [name.rstrip("/") for name in tf.io.gfile.listdir(directory)]
    return [
        int(name)
        for name in names
        if name.isdigit() and tf.io.gfile.isdir(os.path.join(directory, name))
    ]


def _model_files_dir(path):
    """The directory with the `.keras` files: `path` or its newest version."""
    if tf.io.gfile.exists(os.path.join(path, artifacts.BACKBONE_FILE)):
        return path
    versions = _versions(path)
    if versions:
        return os.path.join(path, str(max(versions)))
    raise FileNotFoundError(
        f"{path} is neither a model directory (with "
        f"{artifacts.BACKBONE_FILE}) nor an export directory (with "
        "numbered versions)."
    )
