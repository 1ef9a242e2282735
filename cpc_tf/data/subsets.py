"""Label subsets and validation holdouts: class-balanced, reproducible.

Indices are positions in a source's fixed order, the order of
`sources.source_labels(spec)` (one pass over the labels, no image
decoding; for a large TFRecord source that pass reads every record once).
The usual recipe::

    labels = source_labels(spec)
    train_idx, val_idx = holdout_split(labels, 10_000, seed)
    ids = train_idx[label_subset_ids(labels[train_idx], 10, seed)]
    save_subset(path, ids)  # then every run uses load_subset(path)

Per class, the examples are taken in a fixed random order drawn from
`(seed, class)`, so a smaller fraction is a subset of a larger one.
"""

import os

import numpy as np
import tensorflow as tf

_SUBSET_SALT = 0
_HOLDOUT_SALT = 1


def label_subset_ids(labels, fraction_percent, seed):
    """Indices of a class-balanced `fraction_percent`% of `labels`.

    Every class gets the same number of examples, `round(n * fraction /
    100 / num_classes)` and at least 1, or all of its examples when it has
    fewer; 100% returns every index.

    Args:
        labels: int [n] class labels.
        fraction_percent: in (0, 100], e.g. one of `config.LABEL_FRACTIONS`.
        seed: int.

    Returns:
        Sorted int64 indices into `labels`.
    """
    labels = _as_labels(labels)
    if not 0 < fraction_percent <= 100:
        raise ValueError(
            f"fraction_percent must be in (0, 100], got {fraction_percent}."
        )
    if fraction_percent == 100:
        return np.arange(len(labels), dtype=np.int64)
    groups = _class_orders(labels, seed, _SUBSET_SALT)
    per_class = max(
        1,
        int(np.floor(len(labels) * fraction_percent / 100 / len(groups) + 0.5)),
    )
    ids = [members[:per_class] for members in groups.values()]
    return np.sort(np.concatenate(ids)).astype(np.int64)


def holdout_split(labels, holdout, seed):
    """Splits `labels` into class-balanced train and validation indices.

    Args:
        labels: int [n] class labels.
        holdout: validation size, a count (int >= 1) or a fraction (float in
            (0, 1)). It is spread as evenly as possible over the classes;
            every class keeps at least one training example.
        seed: int.

    Returns:
        `(train_idx, val_idx)`: sorted, disjoint int64 indices covering
        `labels`.
    """
    labels = _as_labels(labels)
    n = len(labels)
    if isinstance(holdout, bool) or not isinstance(
        holdout, (int, float, np.integer, np.floating)
    ):
        raise ValueError(f"holdout must be a count or a fraction: {holdout!r}")
    if isinstance(holdout, (float, np.floating)):
        if not 0.0 < holdout < 1.0:
            raise ValueError(
                f"A fractional holdout must be in (0, 1), got {holdout}."
            )
        count = max(1, int(np.floor(holdout * n + 0.5)))
    else:
        count = int(holdout)
    groups = _class_orders(labels, seed, _HOLDOUT_SALT)
    capacity = np.array([len(m) - 1 for m in groups.values()])
    if not 1 <= count <= capacity.sum():
        raise ValueError(
            f"holdout={holdout} asks for {count} of {n} examples; it must be "
            f"between 1 and {capacity.sum()} (each of the {len(groups)} "
            "classes keeps one training example)."
        )
    rng = np.random.default_rng([seed, _HOLDOUT_SALT])
    quota = _even_quota(capacity, count, rng)
    val = np.concatenate(
        [members[:k] for members, k in zip(groups.values(), quota)]
    )
    val = np.sort(val).astype(np.int64)
    train = np.setdiff1d(np.arange(n, dtype=np.int64), val)
    return train, val


def save_subset(path, ids):
    """Writes indices to a text file, one per line."""
    ids = as_ids(ids)
    directory = os.path.dirname(path)
    if directory:
        tf.io.gfile.makedirs(directory)
    with tf.io.gfile.GFile(path, "w") as f:
        f.write(f"# cpc_tf subset: {len(ids)} indices\n")
        f.write("".join(f"{i}\n" for i in ids))


def load_subset(path):
    """Reads indices written by `save_subset`: sorted int64 [k]."""
    if not tf.io.gfile.exists(path):
        raise ValueError(f"Subset file {path!r} does not exist.")
    with tf.io.gfile.GFile(path) as f:
        lines = [line.strip() for line in f]
    try:
        ids = [int(line) for line in lines if line and line[0] != "#"]
    except ValueError as e:
        raise ValueError(f"Subset file {path!r} is malformed: {e}") from e
    return as_ids(ids, where=path)


def apply_subset(dataset, ids):
    """Keeps the elements of `dataset` whose source index is in `ids`.

    The index is the element's `index` feature when it is a dict that has
    one (the pipeline's sources do), else its position in `dataset`, whose
    order must then be fixed.

    Args:
        dataset: a `tf.data.Dataset`.
        ids: int indices (any order; duplicates ignored).

    Returns:
        The filtered dataset, elements unchanged.
    """
    table = tf.constant(as_ids(ids))
    size = int(table.shape[0])

    def keep(index):
        position = tf.searchsorted(table, index[None])[0]
        found = tf.gather(table, tf.minimum(position, size - 1))
        return (position < size) & tf.equal(found, index)

    spec = dataset.element_spec
    if isinstance(spec, dict) and "index" in spec:
        return dataset.filter(lambda e: keep(tf.cast(e["index"], tf.int64)))
    return dataset.enumerate().filter(lambda i, _: keep(i)).map(lambda _, e: e)


def _as_labels(labels):
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.size == 0:
        raise ValueError(
            f"labels must be a non-empty 1-D array, got shape {labels.shape}."
        )
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integers, got {labels.dtype}.")
    return labels


def as_ids(ids, where="ids"):
    """Sorted unique int64 indices; a clear error if empty or negative."""
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    if ids.size == 0:
        raise ValueError(f"The subset {where} is empty.")
    if ids.min() < 0:
        raise ValueError(f"The subset {where} has negative indices.")
    return np.unique(ids)


def _class_orders(labels, seed, salt):
    """{class: its indices in a fixed random order drawn from seed, class}."""
    order = np.argsort(labels, kind="stable")
    classes, starts = np.unique(labels[order], return_index=True)
    groups = {}
    for c, members in zip(classes, np.split(order, starts[1:])):
        rng = np.random.default_rng([seed, salt, int(c)])
        groups[int(c)] = members[rng.permutation(len(members))]
    return groups


def _even_quota(capacity, total, rng):
    """Per-class counts summing to `total`, as equal as the capacities
    allow; leftover units go to randomly chosen classes."""
    quota = np.zeros_like(capacity)
    remaining = total
    while remaining:
        open_classes = np.flatnonzero(quota < capacity)
        share = remaining // len(open_classes)
        if share == 0:
            lucky = rng.choice(open_classes, remaining, replace=False)
            quota[lucky] += 1
            break
        add = np.minimum(share, capacity[open_classes] - quota[open_classes])
        quota[open_classes] += add
        remaining -= int(add.sum())
    return quota
