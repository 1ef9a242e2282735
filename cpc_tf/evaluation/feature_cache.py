"""Features of a whole source, computed once per encoder and reused.

A report evaluates one frozen encoder at several label fractions and
seeds; the images' features do not change between those stages. The
first stage embeds every image of a source in its fixed order and writes
`features/<key>.npz` (any TF file system); later stages select the rows of
their ids. The key names the encoder (the pretraining run, or a random
initialisation with its seed), the source and the patch geometry.
"""

import hashlib
import io
import os
import zipfile

import numpy as np
import tensorflow as tf

from cpc_tf.data import sources
from cpc_tf.evaluation import features
from cpc_tf.rundir import artifacts

CACHE_DIR = "features"


def cache_path(directory, encoder_key, spec, data):
    """`directory/features/<key>.npz` for an encoder, a source, geometry."""
    text = "|".join(
        str(v)
        for v in (
            encoder_key,
            spec,
            data.image_size,
            data.crop_size,
            data.patch_size,
            data.patch_stride,
        )
    )
    key = hashlib.sha1(text.encode()).hexdigest()[:16]
    return os.path.join(directory, CACHE_DIR, f"{key}.npz")


def _write(path, values, labels):
    buffer = io.BytesIO()
    np.savez(buffer, features=values, labels=labels)
    tf.io.gfile.makedirs(os.path.dirname(path))
    # Written aside and renamed: stages side by side may embed the same
    # encoder at once, and a reader never sees half a file.
    partial = f"{path}.partial-{os.getpid()}"
    with tf.io.gfile.GFile(partial, "wb") as f:
        f.write(buffer.getvalue())
    tf.io.gfile.rename(partial, path, overwrite=True)


def _read(path):
    with tf.io.gfile.GFile(path, "rb") as f:
        with np.load(io.BytesIO(f.read())) as stored:
            return stored["features"], stored["labels"]


def source_features(strategy, encoder, eval_fn, spec, data, path, write):
    """`(features [N, D], labels [N])` of every image of `spec`, in its
    fixed order: read from `path`, or embedded and written there.

    The order is checked against `sources.source_labels` (one input
    pipeline reads the source in order). A damaged cache file is set
    aside (`.damaged`) and the source embedded again.
    """
    if tf.io.gfile.exists(path):
        try:
            return _read(path)
        except (ValueError, KeyError, EOFError, OSError, zipfile.BadZipFile):
            if write:
                artifacts.set_aside(path)
    values, labels = features.extract(strategy, encoder, eval_fn(spec, None))
    expected = sources.source_labels(spec, data_dir=data.data_dir or None)
    if len(labels) != len(expected) or not np.array_equal(labels, expected):
        raise ValueError(
            f"The embedding of {spec} is not in its fixed order; run the "
            "cached probe with one input pipeline, or without the cache."
        )
    if write:
        _write(path, values, labels)
    return values, labels


def select(cached, ids):
    """The rows of `ids` (None: all) of `(features, labels)`."""
    if ids is None:
        return cached
    return cached[0][ids], cached[1][ids]
