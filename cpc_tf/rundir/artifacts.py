"""What a run leaves in its model directory, and how to read it back.

    model_dir/
      config.json      the resolved configuration (`config.PretrainConfig`)
      checkpoints/     `tf.train.CheckpointManager` checkpoints
      logs/            TensorBoard summaries
      encoder.keras    patch grids `[B, gh, gw, ph, pw, 3]` -> `[B, gh, gw, D]`
      backbone.keras   images `[B, h, w, 3]` -> feature grid `[B, h', w', D]`
      summary.json     steps, losses, accuracy, throughput, skipped images

The `.keras` files hold the Polyak-averaged weights unless the run was
told otherwise (`--use_ema=false`). Images enter every model as float32 in
[-1, 1]. Every file goes through `tf.io.gfile` (Keras does the same for
`scheme://` paths), so a model directory may be on any TF file system
(`gs://`, `ram://`, ...).
"""

import json
import os

import tensorflow as tf

from cpc_tf.models import encoders

CONFIG_FILE = "config.json"
SUMMARY_FILE = "summary.json"
RESULTS_FILE = "results.json"
ENCODER_FILE = "encoder.keras"
BACKBONE_FILE = "backbone.keras"
CHECKPOINT_DIR = "checkpoints"
LOG_DIR = "logs"


def save_encoder(model_dir, encoder, grid_shape):
    """Writes `encoder.keras` and `backbone.keras` for a `PatchEncoder`.

    Args:
        model_dir: destination directory.
        encoder: a built `encoders.PatchEncoder`.
        grid_shape: `(gh, gw, ph, pw, C)` of its inputs.
    """
    wrapped = encoders.patch_grid_model(encoder, grid_shape)
    wrapped.save(os.path.join(model_dir, ENCODER_FILE))
    encoder.backbone.save(os.path.join(model_dir, BACKBONE_FILE))


def write_json(path, values):
    with tf.io.gfile.GFile(path, "w") as f:
        json.dump(values, f, indent=2, sort_keys=True)


def read_json(path):
    with tf.io.gfile.GFile(path) as f:
        return json.load(f)


def read_record(path, required=()):
    """The JSON object at `path`, or None when it is missing or damaged
    (unreadable, not JSON, not an object, or without a `required` key):
    a run that resumes re-runs what such a file records, never trusts it.
    """
    if not tf.io.gfile.exists(path):
        return None
    try:
        values = read_json(path)
    except (ValueError, UnicodeDecodeError, tf.errors.OpError):
        return None
    if not isinstance(values, dict) or any(k not in values for k in required):
        return None
    return values


# The records that say a run finished, and the keys a whole one has.
FINISHED_RECORDS = {RESULTS_FILE: ("top1",), SUMMARY_FILE: ("steps",)}


def finished(directory, names=tuple(FINISHED_RECORDS)):
    """Whether one of the `FINISHED_RECORDS` `names` in `directory` reads
    back whole (a damaged one means the run must run again)."""
    return any(
        read_record(os.path.join(directory, name), FINISHED_RECORDS[name])
        is not None
        for name in names
    )


def set_aside(path, suffix=".damaged"):
    """Renames a damaged file to `path + suffix` (a new name each time, so
    nothing is lost); returns the new path, or None if `path` is absent."""
    if not tf.io.gfile.exists(path):
        return None
    target, index = path + suffix, 1
    while tf.io.gfile.exists(target):
        index += 1
        target = f"{path}{suffix}{index}"
    tf.io.gfile.rename(path, target)
    return target
