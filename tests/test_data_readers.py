"""Tests of cpc_tf.data.readers: each kind of source, read through
`sources`."""

import os

import numpy as np
import pytest
import source_files
import tensorflow_datasets as tfds

from cpc_tf.data import sources


def test_mnist5k_is_a_fixed_balanced_split():
    for split, per_class in (("train", 400), ("test", 100)):
        ds, info = sources.load_source(f"mnist5k:{split}")
        source_files.check_spec(ds)
        assert ds.element_spec["image"].shape == [28, 28, 3]
        images, labels = source_files.read(ds)
        assert info.num_classes == 10
        assert info.num_examples == len(labels) == 10 * per_class
        assert np.bincount(labels).tolist() == [per_class] * 10
        assert labels == sources.source_labels(f"mnist5k:{split}").tolist()
        image = images[0]
        assert np.array_equal(image[..., 0], image[..., 2])
        assert image.max() > 200 and image.min() == 0
    train, _ = source_files.read(sources.load_source("mnist5k:train")[0])
    test, _ = source_files.read(sources.load_source("mnist5k:test")[0])
    train_bytes = {im.tobytes() for im in train}
    assert not any(im.tobytes() in train_bytes for im in test)


def test_mnist5k_subset_selects_in_memory_like_the_filter():
    full, _ = sources.open_indexed_source("mnist5k:train")
    full = list(full.as_numpy_iterator())
    ds, _ = sources.open_indexed_source("mnist5k:train", ids=[9, 2, 2, 9999])
    subset = list(ds.as_numpy_iterator())
    assert [int(e["index"]) for e in subset] == [2, 9]  # sorted, in range
    for element in subset:
        expected = full[int(element["index"])]
        assert np.array_equal(element["image"], expected["image"])
        assert element["label"] == expected["label"]


@pytest.mark.parametrize(
    "name, shape", [("cifar10", (32, 32, 3)), ("mnist", (28, 28, 3))]
)
def test_tfds_source_with_mock_data(tmp_path, name, shape):
    with tfds.testing.mock_data(num_examples=6):
        ds, info = sources.load_source(
            f"tfds:{name}:train", data_dir=str(tmp_path)
        )
        source_files.check_spec(ds)
        images, labels = source_files.read(ds)
        expected = sources.source_labels(
            f"tfds:{name}:train", data_dir=str(tmp_path)
        )
    assert info.num_classes == 10
    assert [im.shape for im in images] == [shape] * 6
    assert labels == expected.tolist()
    assert info.skipped.value() == 0


def test_tfds_without_data_explains_how_to_prepare(tmp_path):
    with pytest.raises(sources.SourceError) as info:
        sources.load_source("tfds:cifar10:train", data_dir=str(tmp_path))
    message = str(info.value)
    assert "tfds build cifar10" in message and str(tmp_path) in message


def test_folder_source_decodes_and_skips_corrupt(tmp_path):
    source_files.write_folder(tmp_path)
    ds, info = sources.load_source(f"folder:{tmp_path}")
    source_files.check_spec(ds)
    images, labels = source_files.read(ds)
    assert info.num_classes == 2 and info.num_examples == 7
    # Sorted class names: ant -> 0, cat -> 1; round-robin fixed order.
    assert labels == [0, 1, 0, 1, 0, 1]
    assert [im.shape for im in images[::2]] == [(6, 5, 3), (7, 5, 3), (8, 5, 3)]
    assert np.array_equal(images[0], source_files.random_image(0, 6))
    assert info.skipped.value() == 1
    # Labels come from paths: the corrupt file is in, matching `index`.
    expected = [0, 1] * 3 + [0]
    assert sources.source_labels(f"folder:{tmp_path}").tolist() == expected
    list(ds.repeat(2))
    assert info.skipped.value() == 3


def test_tfrecord_source_offset_skip_and_class_count(tmp_path):
    pattern = source_files.write_tfrecords(
        tmp_path, [[1, 2, 3], [3, 2, 1, 1]], corrupt_at=(1, 1)
    )
    ds, info = sources.load_source(
        f"tfrecord:{pattern}?label_offset=-1&num_classes=5"
    )
    source_files.check_spec(ds)
    images, labels = source_files.read(ds)
    assert info.num_classes == 5 and info.num_examples == 7
    # Files read round-robin; the corrupt record (file 1, #1) is skipped.
    assert labels == [0, 2, 1, 2, 0, 0]
    assert np.array_equal(images[0], source_files.random_image(0))
    assert info.skipped.value() == 1
    spec = f"tfrecord:{pattern}?label_offset=-1"
    assert sources.source_labels(spec).tolist() == [0, 2, 1, 1, 2, 0, 0]
    # Without the option: max label + 1 from the scan, then labels.txt.
    assert sources.load_source(spec)[1].num_classes == 3
    (tmp_path / "labels.txt").write_text("a\nb\nc\nd\n\n")
    assert sources.load_source(spec)[1].num_classes == 4


@pytest.mark.parametrize(
    "suffix, message",
    [
        ("?label_offset=-2", "outside"),
        ("?num_classes=2", "outside"),
        ("?colour=red", "Unknown tfrecord option"),
        ("?num_classes=x", "not an integer"),
    ],
)
def test_tfrecord_bad_options(tmp_path, suffix, message):
    pattern = source_files.write_tfrecords(tmp_path, [[1, 2]])
    with pytest.raises(sources.SourceError, match=message):
        sources.load_source(f"tfrecord:{pattern}{suffix}")


@pytest.mark.skipif(
    not os.path.isdir(source_files.CIFAR10_DIR),
    reason="shared cifar10 not present",
)
def test_real_cifar10_tfrecords():
    ds, info = sources.load_source(
        f"tfrecord:{source_files.CIFAR10_DIR}/train-*.tfrecord"
    )
    source_files.check_spec(ds)
    images, labels = source_files.read(ds.take(20))
    assert info.num_classes == 10 and info.num_examples == 50_000
    assert [im.shape for im in images] == [(32, 32, 3)] * 20
    # The shards hold one class each; the fixed order interleaves them.
    assert labels[:10] == list(range(10))
