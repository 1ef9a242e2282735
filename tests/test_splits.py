"""Hold-out, validation and labelled subsets: disjoint, fixed, shared."""

import numpy as np
import pytest

from cpc_tf.config import DataConfig, FlagError
from cpc_tf.data import sources, subsets
from cpc_tf.rundir import splits


def test_label_split_is_balanced_disjoint_and_read_back(tmp_path):
    data = DataConfig(label_fraction=10, holdout=500)
    split = splits.label_split(data, seed=3, directory=str(tmp_path))
    labels = sources.source_labels("mnist5k:train")
    # 10% of the 3,500 examples left after the hold-out, class-balanced;
    # with a separate --eval_data the hold-out is the validation set.
    assert len(split.val_ids) == 500 and split.num_train == 350
    assert split.test_ids is None
    np.testing.assert_array_equal(split.val_ids, split.holdout_ids)
    assert not set(split.train_ids) & set(split.val_ids)
    assert np.all(np.bincount(labels[split.train_ids]) == 35)
    assert sorted(split.files) == ["holdout", "train"]
    # Later runs read the files: change one and it is what they get.
    with open(split.files["train"], "w") as f:
        f.write("1\n2\n3\n")
    again = splits.label_split(data, seed=3, directory=str(tmp_path))
    assert again.train_ids.tolist() == [1, 2, 3]
    np.testing.assert_array_equal(again.val_ids, split.val_ids)
    everything = splits.label_split(
        DataConfig(), seed=3, directory=str(tmp_path)
    )
    assert everything.train_ids is None and everything.num_train == 4000


def test_seeds_share_the_hold_out_and_validation(tmp_path):
    data = DataConfig(
        eval_data="holdout", holdout=400, validation=300, label_fraction=10
    )
    first = splits.label_split(data, seed=0, directory=str(tmp_path))
    second = splits.label_split(data, seed=1, directory=str(tmp_path))
    np.testing.assert_array_equal(first.test_ids, second.test_ids)
    np.testing.assert_array_equal(first.val_ids, second.val_ids)
    assert not np.array_equal(first.train_ids, second.train_ids)
    for split in (first, second):
        parts = [split.train_ids, split.val_ids, split.test_ids]
        together = np.concatenate(parts)
        assert len(np.unique(together)) == len(together)  # disjoint
        assert len(split.test_ids) == 400 and len(split.val_ids) == 300
    assert sorted(first.files) == ["holdout", "train", "validation"]


def test_pretraining_ids_exclude_the_hold_out(tmp_path):
    data = DataConfig(holdout=0.1, holdout_seed=5)
    ids, record = splits.pretraining_ids(data, str(tmp_path))
    held = subsets.load_subset(record["holdout"]["file"])
    assert record["train_examples"] == len(ids) == 3600
    assert record["holdout"]["count"] == len(held) == 400
    assert not set(ids) & set(held)
    assert len(ids) + len(held) == 4000
    # An evaluation with the same hold-out tests on exactly those images.
    split = splits.label_split(
        DataConfig(eval_data="holdout", holdout=0.1, holdout_seed=5),
        seed=9,
        directory=str(tmp_path / "eval"),
    )
    np.testing.assert_array_equal(split.test_ids, held)
    summary = dict(holdout=record["holdout"])
    assert splits.test_excluded_from_pretraining(
        split, DataConfig(eval_data="holdout", holdout=0.1), summary
    )
    assert not splits.test_excluded_from_pretraining(
        split, DataConfig(eval_data="holdout", holdout=0.1), {"holdout": None}
    )
    assert (
        splits.test_excluded_from_pretraining(
            split, DataConfig(eval_data="holdout", holdout=0.1), {}
        )
        is None
    )
    nothing, record = splits.pretraining_ids(DataConfig(), str(tmp_path))
    assert nothing is None and record == dict(train_examples=4000, holdout=None)


def test_bad_sizes_name_the_flag(tmp_path):
    with pytest.raises(FlagError, match="--holdout"):
        splits.pretraining_ids(DataConfig(holdout=5000), str(tmp_path))
    with pytest.raises(FlagError, match="--validation"):
        splits.label_split(
            DataConfig(eval_data="holdout", holdout=100, validation=4000),
            0,
            str(tmp_path),
        )
