"""Serving export (a TF Serving SavedModel) and encoders for transfer.

    python -m cpc_tf.export --model_dir=DIR --export_dir=DIR [--version=N]
        [--classifier=FILE.keras] [--labels=FILE.txt] [--top_k=5]

writes the SavedModel to `export_dir/<version>/`, the layout TF Serving
watches; the version defaults to one more than the largest present, else
1. The version directory also holds copies of `encoder.keras`,
`backbone.keras` and `config.json`, so `load_encoder` reads it like a
model directory. Signatures, with the evaluation preprocessing
(`data.pipeline.eval_patches`, `eval_image`) inside the graph:

- `serving_default`: `image_bytes` string `[B]` (encoded JPEG, PNG, GIF,
  BMP or WebP; grey and alpha channels are converted to RGB) ->
  `embedding` float32 `[B, D]` (the patch features averaged over the grid)
  and `features` float32 `[B, g, g, D]` (the patch grid's features).
- `serve_images`: `images` uint8 `[B, h, w, C]`, values 0..255, C in 1..4
  (grey replicated, alpha dropped) -> the same outputs.
- `classify` (with `--classifier`): `image_bytes` -> `probabilities`
  `[B, K]`, `top_k_probabilities` `[B, k]` (descending), `top_k_indices`
  int32 `[B, k]` and `top_k_labels` string `[B, k]` (the `--labels` lines,
  else the indices as text).

A classifier is a whole `.keras` model producing logits `[B, K]`, either
from patch grids `[B, g, g, p, p, 3]` (linear evaluation; fed by
`eval_patches`) or from images `[B, S, S, 3]` (fine-tuning; fed by
`eval_image` at S, which must be fixed).

Weights: the `.keras` files of a run hold the weights the run chose
(Polyak-averaged unless it ran with `--use_ema=false`); a model directory
carries no second set, so the export has no flag to choose between them.
"""

import functools
import os

import keras
import tensorflow as tf
from absl import flags

from cpc_tf import config
from cpc_tf.config import FlagError
from cpc_tf.data import pipeline
from cpc_tf.rundir import artifacts
from cpc_tf.rundir.transfer import (  # noqa: F401 (cpc_tf.export.load_encoder)
    _versions,
    load_encoder,
)

BYTES_SPEC = tf.TensorSpec([None], tf.string, name="image_bytes")
# Any rank, so that the rank check below happens at run time: a signature
# does not check shapes, and a static rank would fold the check away.
IMAGES_SPEC = tf.TensorSpec(None, tf.uint8, name="images")


class ExportArgumentError(FlagError):
    """A bad export argument; the message names its command-line flag."""


def _fail(flag, message):
    raise ExportArgumentError(f"--{flag}: {message}")


def _is_file(path):
    return tf.io.gfile.exists(path) and not tf.io.gfile.isdir(path)


def _read_labels(path):
    if not _is_file(path):
        _fail("labels", f"no such file {path}.")
    with tf.io.gfile.GFile(path) as f:
        labels = [line.strip() for line in f if line.strip()]
    if not labels:
        _fail("labels", f"{path} has no labels (one class name a line).")
    return labels


def _check_arguments(model_dir, export_dir, version, classifier, labels, top_k):
    """Validates everything that needs no model; returns `(config, version,
    label names or None)`."""
    for name in (
        artifacts.ENCODER_FILE,
        artifacts.BACKBONE_FILE,
        artifacts.CONFIG_FILE,
    ):
        if not _is_file(os.path.join(model_dir, name)):
            _fail(
                "model_dir",
                f"{model_dir} has no {name}; expected a finished run's "
                f"directory with {artifacts.ENCODER_FILE}, "
                f"{artifacts.BACKBONE_FILE} and {artifacts.CONFIG_FILE}.",
            )
    run_config = config.read_json(
        config.PretrainConfig,
        os.path.join(model_dir, artifacts.CONFIG_FILE),
    )
    if tf.io.gfile.exists(export_dir) and not tf.io.gfile.isdir(export_dir):
        _fail("export_dir", f"{export_dir} exists and is not a directory.")
    present = _versions(export_dir)
    if version is None:
        version = max(present, default=0) + 1
    elif version < 1:
        _fail("version", f"must be >= 1, got {version}.")
    elif version in present:
        _fail(
            "version",
            f"{os.path.join(export_dir, str(version))} already exists; "
            f"choose another or leave --version unset for the next free "
            f"one ({max(present) + 1}).",
        )
    if classifier is None:
        if labels is not None:
            _fail("labels", "labels name classes: it needs --classifier.")
        return run_config, version, None
    if not _is_file(classifier):
        _fail("classifier", f"no such file {classifier}.")
    if top_k < 1:
        _fail("top_k", f"must be >= 1, got {top_k}.")
    names = None if labels is None else _read_labels(labels)
    return run_config, version, names


def _classifier_preprocess(classifier, data, labels, top_k):
    """Checks a loaded classifier; returns the preprocessing it needs."""
    shape = tuple(classifier.input_shape)
    grid = data.grid_size
    patches = (grid, grid, data.patch_size, data.patch_size, 3)
    if len(shape) == 6:
        if any(s not in (None, e) for s, e in zip(shape[1:], patches)):
            _fail(
                "classifier",
                f"takes patch grids {shape[1:]}, but the run's geometry "
                f"gives {patches}.",
            )
        preprocess = _patches_preprocess(data)
    elif len(shape) == 4 and shape[1] and shape[1:] == (shape[1], shape[1], 3):
        preprocess = functools.partial(pipeline.eval_image, image_size=shape[1])
    else:
        _fail(
            "classifier",
            "must take patch grids [B, g, g, p, p, 3] or square images "
            f"[B, S, S, 3] of a fixed S, got input shape {shape}.",
        )
    classes = classifier.output_shape[-1]
    if len(classifier.output_shape) != 2 or classes is None:
        _fail(
            "classifier",
            f"must output logits [B, K], got {classifier.output_shape}.",
        )
    if labels is not None and len(labels) != classes:
        _fail(
            "labels",
            f"has {len(labels)} labels but the classifier has {classes} "
            "classes.",
        )
    if top_k > classes:
        _fail("top_k", f"{top_k} exceeds the {classes} classes.")
    return preprocess


def _patches_preprocess(data):
    return functools.partial(
        pipeline.eval_patches,
        image_size=data.image_size,
        crop_size=data.crop_size,
        patch_size=data.patch_size,
        patch_stride=data.patch_stride,
    )


def _decode_each(image_bytes, preprocess):
    """Encoded images `[B]` -> `preprocess` of each, stacked.

    Each image is decoded to uint8 RGB (grey replicated, alpha dropped)
    and preprocessed on its own, which brings them to one size. A corrupt
    or unknown image fails the request with the decoder's message.
    """

    def one(data):
        image = tf.io.decode_image(
            data, channels=3, expand_animations=False, name="decode_image"
        )
        return preprocess(image[None])[0]

    return tf.map_fn(one, image_bytes, fn_output_signature=tf.float32)


def _to_rgb(images):
    """uint8 `[B, h, w, C]`, C in 1..4 -> `[B, h, w, 3]`; any other shape
    fails with an error saying what is expected."""
    shape = tf.shape(images)
    rank_check = tf.debugging.Assert(
        tf.equal(tf.size(shape), 4),
        ["images must be uint8 [B, h, w, C]; got shape", shape],
    )
    with tf.control_dependencies([rank_check]):
        images = tf.ensure_shape(images, [None, None, None, None])
    channels = tf.shape(images)[3]
    channels_check = tf.debugging.Assert(
        (channels >= 1) & (channels <= 4),
        ["images must have 1 to 4 channels; got shape", shape],
    )
    with tf.control_dependencies([channels_check]):
        rgb = tf.cond(
            channels < 3,
            lambda: tf.repeat(images[..., :1], 3, axis=3),
            lambda: images[..., :3],
        )
    return tf.ensure_shape(rgb, [None, None, None, 3])


class ServingModule(tf.Module):
    """The exported graph: Keras models plus in-graph preprocessing.

    Args:
        encoder: a Keras model, patch grids `[B, g, g, p, p, 3]` ->
            `[B, g, g, D]`.
        data: the run's `config.DataConfig` (image and patch geometry).
        classifier: optional Keras model, patch grids or images -> logits.
        labels: class names of the classifier, or None.
        top_k: how many classes `classify` ranks.
    """

    def __init__(self, encoder, data, classifier=None, labels=None, top_k=5):
        super().__init__(name="cpc_serving")
        self.encoder = encoder
        patches = _patches_preprocess(data)

        def embed(grids):
            features = self.encoder(grids, training=False)
            return {
                "embedding": tf.reduce_mean(features, axis=(1, 2)),
                "features": features,
            }

        self.serve_bytes = tf.function(
            lambda image_bytes: embed(_decode_each(image_bytes, patches)),
            input_signature=[BYTES_SPEC],
        )
        self.serve_images = tf.function(
            lambda images: embed(patches(_to_rgb(images))),
            input_signature=[IMAGES_SPEC],
        )
        if classifier is None:
            self.classify = None
            return
        self.classifier = classifier
        preprocess = _classifier_preprocess(classifier, data, labels, top_k)
        classes = classifier.output_shape[-1]
        names = labels or [str(i) for i in range(classes)]

        def classify(image_bytes):
            logits = self.classifier(
                _decode_each(image_bytes, preprocess), training=False
            )
            probabilities = tf.nn.softmax(tf.cast(logits, tf.float32))
            top_probabilities, top_indices = tf.math.top_k(
                probabilities, k=top_k
            )
            return {
                "probabilities": probabilities,
                "top_k_probabilities": top_probabilities,
                "top_k_indices": top_indices,
                "top_k_labels": tf.gather(tf.constant(names), top_indices),
            }

        self.classify = tf.function(classify, input_signature=[BYTES_SPEC])

    def signatures(self):
        """The name -> concrete function map for `tf.saved_model.save`."""
        functions = {
            "serving_default": self.serve_bytes,
            "serve_images": self.serve_images,
            "classify": self.classify,
        }
        return {
            name: function.get_concrete_function()
            for name, function in functions.items()
            if function is not None
        }


def export(
    model_dir,
    export_dir,
    *,
    version=None,
    classifier=None,
    labels=None,
    top_k=5,
):
    """Writes the serving SavedModel of a run (see the module docstring).

    Arguments are checked before any model is built; a bad one raises
    `ExportArgumentError` naming its flag. The SavedModel is written next
    to the versions and renamed into place, so a watching TF Serving never
    sees a half-written version.

    Args:
        model_dir: the run's directory (`encoder.keras`, `backbone.keras`,
            `config.json`).
        export_dir: TF Serving's model base path.
        version: the version to write (default: the next free one).
        classifier: optional path of a `.keras` classifier (logits).
        labels: optional text file, one class name a line.
        top_k: classes ranked by `classify`.

    Returns:
        The version directory written.
    """
    run_config, version, names = _check_arguments(
        model_dir, export_dir, version, classifier, labels, top_k
    )
    if classifier is not None:
        classifier = keras.saving.load_model(classifier, compile=False)
    module = ServingModule(
        keras.saving.load_model(
            os.path.join(model_dir, artifacts.ENCODER_FILE), compile=False
        ),
        run_config.data,
        classifier=classifier,
        labels=names,
        top_k=top_k,
    )
    destination = os.path.join(export_dir, str(version))
    # A local version is written beside its place and renamed into it
    # (atomic). Object stores (`gs://`, `ram://`) have no directory rename:
    # the version is written in place, the `.keras` copies first;
    # `tf.saved_model.save` writes `saved_model.pb` after the variables,
    # and TF Serving loads a version only once that file exists.
    local = "://" not in destination
    target = os.path.join(export_dir, f".staging-{version}")
    if not local:
        target = destination
    if tf.io.gfile.exists(target):
        tf.io.gfile.rmtree(target)
    tf.io.gfile.makedirs(target)
    for name in (
        artifacts.ENCODER_FILE,
        artifacts.BACKBONE_FILE,
        artifacts.CONFIG_FILE,
    ):
        tf.io.gfile.copy(
            os.path.join(model_dir, name), os.path.join(target, name)
        )
    tf.saved_model.save(module, target, signatures=module.signatures())
    if local:
        tf.io.gfile.rename(target, destination)
    return destination


def define_flags(flag_values):
    """The export's flags, on `flag_values`."""
    flags.DEFINE_string(
        "model_dir",
        None,
        "Run directory with encoder.keras, backbone.keras and config.json.",
        flag_values=flag_values,
    )
    flags.DEFINE_string(
        "export_dir",
        None,
        "TF Serving model base path; the SavedModel goes to "
        "<export_dir>/<version>/.",
        flag_values=flag_values,
    )
    flags.DEFINE_integer(
        "version",
        None,
        "Version to write (default: the next free one).",
        flag_values=flag_values,
    )
    flags.DEFINE_string(
        "classifier",
        None,
        "Optional .keras classifier giving logits, from patch grids "
        "[B, g, g, p, p, 3] or images [B, S, S, 3]; adds `classify`.",
        flag_values=flag_values,
    )
    flags.DEFINE_string(
        "labels",
        None,
        "Optional class names for --classifier, one a line.",
        flag_values=flag_values,
    )
    flags.DEFINE_integer(
        "top_k", 5, "Classes ranked by `classify`.", flag_values=flag_values
    )
    flags.mark_flags_as_required(
        ["model_dir", "export_dir"], flag_values=flag_values
    )


def run_from_flags(values, argv=()):
    """Exports as parsed flags say; returns the version directory."""
    if len(argv) > 1:
        raise FlagError(f"Unexpected arguments: {argv[1:]}")
    return export(
        values.model_dir,
        values.export_dir,
        version=values.version,
        classifier=values.classifier,
        labels=values.labels,
        top_k=values.top_k,
    )
