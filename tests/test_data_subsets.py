"""Tests of cpc_tf.data.subsets: balanced, reproducible label subsets."""

import numpy as np
import pytest
import tensorflow as tf

from cpc_tf.config import LABEL_FRACTIONS
from cpc_tf.data import subsets


def _labels(per_class=(300, 300, 300, 300, 200), seed=0):
    labels = np.concatenate([np.full(n, c) for c, n in enumerate(per_class)])
    return np.random.default_rng(seed).permutation(labels)


@pytest.mark.parametrize("fraction", LABEL_FRACTIONS)
def test_label_subsets_are_class_balanced(fraction):
    labels = _labels()
    ids = subsets.label_subset_ids(labels, fraction, seed=0)
    assert ids.dtype == np.int64
    assert np.all(np.diff(ids) > 0) and ids[-1] < len(labels)
    counts = np.bincount(labels[ids], minlength=5)
    if fraction == 100:
        assert len(ids) == len(labels)
    else:
        per_class = max(1, round(1400 * fraction / 100 / 5))
        assert counts.tolist() == [
            min(per_class, n) for n in (300,) * 4 + (200,)
        ]


def test_label_subsets_are_reproducible_and_nested():
    labels = _labels()
    a = subsets.label_subset_ids(labels, 10, seed=1)
    np.testing.assert_array_equal(a, subsets.label_subset_ids(labels, 10, 1))
    assert not np.array_equal(a, subsets.label_subset_ids(labels, 10, 2))
    for small, large in zip(LABEL_FRACTIONS, LABEL_FRACTIONS[1:]):
        s = subsets.label_subset_ids(labels, small, seed=1)
        l_ = subsets.label_subset_ids(labels, large, seed=1)
        assert np.isin(s, l_).all()


def test_tiny_fraction_keeps_one_per_class():
    labels = _labels((50, 3, 7))
    ids = subsets.label_subset_ids(labels, 1, seed=0)
    assert np.bincount(labels[ids]).tolist() == [1, 1, 1]


@pytest.mark.parametrize("fraction", [0, -5, 101])
def test_label_subset_rejects_bad_fraction(fraction):
    with pytest.raises(ValueError, match="fraction_percent"):
        subsets.label_subset_ids(_labels(), fraction, seed=0)


@pytest.mark.parametrize("holdout, size", [(100, 100), (0.1, 140), (7, 7)])
def test_holdout_split_is_balanced_and_partitions(holdout, size):
    labels = _labels()
    train, val = subsets.holdout_split(labels, holdout, seed=3)
    assert len(val) == size
    assert len(np.intersect1d(train, val)) == 0
    np.testing.assert_array_equal(
        np.sort(np.concatenate([train, val])), np.arange(len(labels))
    )
    counts = np.bincount(labels[val], minlength=5)
    assert counts.max() - counts.min() <= 1
    again = subsets.holdout_split(labels, holdout, seed=3)
    np.testing.assert_array_equal(again[1], val)


def test_holdout_fills_up_from_larger_classes():
    labels = _labels((10, 2, 10))
    train, val = subsets.holdout_split(labels, 12, seed=0)
    # The 2-image class gives 1 (it keeps one); the others share the rest.
    counts = np.bincount(labels[val])
    assert counts[1] == 1 and sorted(counts) == [1, 5, 6]
    assert np.bincount(labels[train]).min() >= 1


@pytest.mark.parametrize("holdout", [0, 1.0, 1400, -0.5, "10"])
def test_holdout_rejects_bad_sizes(holdout):
    with pytest.raises(ValueError, match="holdout"):
        subsets.holdout_split(_labels(), holdout, seed=0)


def test_save_load_round_trip(tmp_path):
    ids = np.array([5, 1, 9, 1])
    path = str(tmp_path / "sub" / "ids.txt")
    subsets.save_subset(path, ids)
    np.testing.assert_array_equal(subsets.load_subset(path), [1, 5, 9])
    (tmp_path / "bad.txt").write_text("1\nx\n")
    with pytest.raises(ValueError, match="malformed"):
        subsets.load_subset(str(tmp_path / "bad.txt"))
    with pytest.raises(ValueError, match="does not exist"):
        subsets.load_subset(str(tmp_path / "missing.txt"))


def test_apply_subset_by_position_and_by_index_feature():
    ds = tf.data.Dataset.range(100, 110)
    kept = list(subsets.apply_subset(ds, [0, 3, 9, 42]).as_numpy_iterator())
    assert kept == [100, 103, 109]
    pairs = ds.map(lambda x: (x, 2 * x))
    kept = list(subsets.apply_subset(pairs, [1]).as_numpy_iterator())
    assert kept == [(101, 202)]
    # Elements with an `index` feature are selected by it, not position.
    indexed = tf.data.Dataset.from_tensor_slices(
        {"index": np.array([4, 7, 9, 12]), "x": np.arange(4)}
    )
    kept = [
        int(e["x"])
        for e in subsets.apply_subset(indexed, [7, 12]).as_numpy_iterator()
    ]
    assert kept == [1, 3]
    with pytest.raises(ValueError, match="empty"):
        subsets.apply_subset(ds, [])
