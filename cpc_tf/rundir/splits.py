"""The images each stage may use: hold-out, validation, labelled subset.

Indices are positions in the training source's fixed order
(`sources.source_labels`). Three disjoint, class-balanced parts:

- the hold-out (`--holdout`, drawn with `--holdout_seed`): never seen by
  pretraining; the test set with `--eval_data=holdout`, else the
  validation set;
- the validation set (`--validation`, only with `--eval_data=holdout`):
  for model selection, drawn from the rest with `--holdout_seed`;
- the labelled training subset (`--label_fraction`, drawn with `--seed`
  from what is left), so that seeds differ in their labelled images but
  share one hold-out and one validation set.

Every part is computed once and written to a file in `directory` (any TF
file system); later runs read the file, so stages and workers agree.
"""

import dataclasses
import os

import numpy as np
import tensorflow as tf

from cpc_tf.config import HOLDOUT, FlagError
from cpc_tf.data import sources, subsets

# The second draw of --holdout_seed (validation) must differ from the first.
_VALIDATION_SALT = 7919


@dataclasses.dataclass(frozen=True)
class Split:
    """The parts of the training source one evaluation run uses.

    Attributes:
        train_ids: labelled training indices, None for all of the source.
        val_ids: validation indices (model selection), or None.
        test_ids: test indices into the training source with
            `--eval_data=holdout`, else None (the test set is --eval_data).
        holdout_ids: the hold-out, excluded from pretraining, or None.
        num_train: labelled training examples (None: the source does not
            report its size).
        files: the subset files read or written, by part.
    """

    train_ids: np.ndarray | None
    val_ids: np.ndarray | None
    test_ids: np.ndarray | None
    holdout_ids: np.ndarray | None
    num_train: int | None
    files: dict


def _count(value):
    """A `--holdout`-style value: int count (>= 1) or float fraction."""
    return int(value) if value >= 1 else float(value)


def _read_or_draw(path, draw, write):
    if tf.io.gfile.exists(path):
        return subsets.load_subset(path)
    ids = draw()
    if write:
        subsets.save_subset(path, ids)
    return ids


def holdout_file(data, directory):
    """The path of the hold-out ids of `data` under `directory`."""
    return os.path.join(
        directory, f"holdout_{data.holdout:g}_seed{data.holdout_seed}.txt"
    )


def _labels(data):
    return sources.source_labels(
        data.train_data, data_dir=data.data_dir or None
    )


def _draw(labels, pool, count, seed, flag):
    """`count` class-balanced indices of `pool` -> (rest, drawn)."""
    try:
        keep, drawn = subsets.holdout_split(labels[pool], _count(count), seed)
    except ValueError as error:
        raise FlagError(f"--{flag}: {error}") from None
    return pool[keep], pool[drawn]


def holdout_split(data, directory, labels=None, write=True):
    """`(rest, holdout ids, file)`: the hold-out and everything else.

    Without `--holdout`: `(None, None, None)`. `write=False` (a worker
    that is not the chief) draws the same ids without writing the file.
    """
    if not data.holdout:
        return None, None, None
    labels = _labels(data) if labels is None else labels
    everything = np.arange(len(labels), dtype=np.int64)
    path = holdout_file(data, directory)

    def draw():
        return _draw(
            labels, everything, data.holdout, data.holdout_seed, "holdout"
        )[1]

    held = _read_or_draw(path, draw, write)
    rest = np.setdiff1d(everything, held)
    return rest, held, path


def pretraining_ids(data, directory, write=True):
    """What pretraining may read, and the record of what it may not.

    Returns:
        `(ids, record)`: indices of `--train_data` without the hold-out
        (None: all of it) and a dict for `summary.json`: `train_examples`
        (images pretraining could draw, None when unknown) and `holdout`
        (`count`, `file`, `seed`; None without a hold-out).
    """
    if not data.holdout:
        _, info = sources.load_source(
            data.train_data, data_dir=data.data_dir or None
        )
        return None, dict(train_examples=info.num_examples, holdout=None)
    rest, held, path = holdout_split(data, directory, write=write)
    return rest, dict(
        train_examples=len(rest),
        holdout=dict(count=len(held), file=path, seed=data.holdout_seed),
    )


def validation_split(data, directory, labels, pool, write=True):
    """`(validation ids, file)` drawn from `pool` (the images left after
    the hold-out), or `(None, None)` without `--validation`."""
    if not data.validation:
        return None, None
    path = os.path.join(
        directory,
        f"validation_{data.validation:g}_holdout{data.holdout:g}_"
        f"seed{data.holdout_seed}.txt",
    )

    def draw():
        return _draw(
            labels,
            pool,
            data.validation,
            data.holdout_seed + _VALIDATION_SALT,
            "validation",
        )[1]

    return _read_or_draw(path, draw, write), path


def label_split(data, seed, directory, write=True):
    """The `Split` of `data` for an evaluation run with `seed` (files
    written unless `write=False`)."""
    files = {}
    if data.label_fraction == 100 and not data.holdout:
        _, info = sources.load_source(
            data.train_data, data_dir=data.data_dir or None
        )
        return Split(None, None, None, None, info.num_examples, files)
    labels = _labels(data)
    pool, held, path = holdout_split(data, directory, labels, write)
    if pool is None:
        pool = np.arange(len(labels), dtype=np.int64)
    else:
        files["holdout"] = path
    validation, path = validation_split(data, directory, labels, pool, write)
    if validation is not None:
        pool = np.setdiff1d(pool, validation)
        files["validation"] = path
    path = os.path.join(
        directory,
        f"train_{data.label_fraction:g}pct_holdout{data.holdout:g}_"
        f"validation{data.validation:g}_hseed{data.holdout_seed}_"
        f"seed{seed}.txt",
    )
    pool_for_train = pool

    def draw_train():
        chosen = subsets.label_subset_ids(
            labels[pool_for_train], data.label_fraction, seed
        )
        return pool_for_train[chosen]

    train = _read_or_draw(path, draw_train, write)
    files["train"] = path
    if data.eval_data == HOLDOUT:
        val_ids, test_ids = validation, held
    else:
        val_ids, test_ids = held, None
    return Split(train, val_ids, test_ids, held, len(train), files)


def test_excluded_from_pretraining(split, data, pretrain_summary):
    """Whether pretraining could not have read the test images.

    True when the test set is another source than pretraining's, or the
    hold-out pretraining recorded in its `summary.json` contains every
    test index; False when it does not; None when it cannot be told (an
    older pretraining run without a record).
    """
    if data.eval_data != HOLDOUT:
        return True
    record = (pretrain_summary or {}).get("holdout")
    if not pretrain_summary or "holdout" not in pretrain_summary:
        return None
    if not record:
        return False
    excluded = subsets.load_subset(record["file"])
    return bool(np.isin(split.test_ids, excluded).all())
