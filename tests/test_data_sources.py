"""Tests of cpc_tf.data.sources: specs, decoding, skipping, sharding."""

import pytest
import source_files
import tensorflow as tf

from cpc_tf.data import sources


@pytest.mark.parametrize(
    "spec",
    ["mnist5k:val", "imagenet", "foo:bar", "tfds:cifar10", "mnist5k:"],
)
def test_unknown_spec_names_spec_and_forms(spec):
    with pytest.raises(sources.SourceError) as info:
        sources.load_source(spec)
    assert repr(spec) in str(info.value)
    assert "tfrecord:GLOB" in str(info.value)


def test_subset_is_selected_before_decoding(tmp_path):
    pattern = source_files.write_tfrecords(
        tmp_path, [[1, 2, 3], [3, 2, 1, 1]], corrupt_at=(1, 1)
    )
    spec = f"tfrecord:{pattern}?label_offset=-1"
    ds, info = sources.open_indexed_source(spec, ids=[0, 2, 5])
    elements = list(ds)
    assert [int(e["index"]) for e in elements] == [0, 2, 5]
    assert [int(e["label"]) for e in elements] == [0, 1, 0]
    # The corrupt record (index 3) is outside the subset: never decoded.
    assert info.skipped.value() == 0
    subset, info = sources.open_indexed_source(spec, ids=[3, 4])
    assert len(list(subset)) == 1 and info.skipped.value() == 1


def test_empty_or_missing_sources_fail_with_path(tmp_path):
    with pytest.raises(sources.SourceError, match=str(tmp_path)):
        sources.load_source(f"folder:{tmp_path}")
    with pytest.raises(sources.SourceError, match="does not exist"):
        sources.load_source(f"folder:{tmp_path / 'missing'}")
    pattern = str(tmp_path / "*.tfrecord")
    with pytest.raises(sources.SourceError, match="No TFRecord files match"):
        sources.load_source(f"tfrecord:{pattern}")
    (tmp_path / "empty.tfrecord").write_bytes(b"")
    with pytest.raises(sources.SourceError, match="empty"):
        sources.load_source(f"tfrecord:{pattern}")


def test_sharding_partitions_files_or_elements(tmp_path):
    pattern = source_files.write_tfrecords(tmp_path, [[0, 0, 0], [1, 1]])
    source_files.write_folder(tmp_path / "folder")
    for spec, expected in (
        (f"tfrecord:{pattern}", [[0, 0, 0], [1, 1]]),  # by file
        (f"folder:{tmp_path / 'folder'}", [[0, 0, 0], [1, 1, 1]]),
    ):
        shards = []
        for i in range(2):
            context = tf.distribute.InputContext(2, i)
            ds, _ = sources.load_source(spec, input_context=context)
            shards.append(source_files.read(ds)[1])
        assert shards == expected
    context = tf.distribute.InputContext(3, 2)
    ds, _ = sources.load_source("mnist5k:test", input_context=context)
    assert len(list(ds)) == 333


def test_shuffle_files_is_seeded(tmp_path):
    pattern = source_files.write_tfrecords(
        tmp_path, [[i] * 2 for i in range(6)]
    )
    spec = f"tfrecord:{pattern}"

    def labels(seed):
        ds, _ = sources.load_source(spec, shuffle_files=True, seed=seed)
        return source_files.read(ds)[1]

    assert labels(1) == labels(1)
    assert sorted(labels(1)) == sorted(labels(2))
    assert labels(1) != source_files.read(sources.load_source(spec)[0])[1]


def test_small_label_subset_is_read_once(tmp_path):
    pattern = source_files.write_tfrecords(tmp_path, [[0, 1, 2], [3, 4]])
    ds, _ = sources.open_indexed_source(f"tfrecord:{pattern}", ids=[4, 1])
    epochs = iter(ds.repeat(2))
    first = [int(next(epochs)["index"]) for _ in range(2)]
    for path in tmp_path.glob("part-*.tfrecord"):
        path.unlink()  # the second epoch can only come from memory
    second = [int(e["index"]) for e in epochs]
    assert first == second and sorted(first) == [1, 4]
