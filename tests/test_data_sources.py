"""Tests of cpc_tf.data.sources: specs, decoding, skipping, sharding."""

import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from cpc_tf.data import sources

# The shared/ folder beside the checkout (as in CI).
CIFAR10_DIR = os.path.join(
    os.path.dirname(__file__), "..", "..", "shared", "data", "cifar10"
)
ELEMENT_KEYS = {"image", "label"}


def _check_spec(ds):
    spec = ds.element_spec
    assert set(spec) == ELEMENT_KEYS
    assert spec["image"].dtype == tf.uint8
    assert spec["image"].shape.rank == 3 and spec["image"].shape[-1] == 3
    assert spec["label"].dtype == tf.int64 and spec["label"].shape == []


def _read(ds):
    elements = list(ds.as_numpy_iterator())
    return [e["image"] for e in elements], [int(e["label"]) for e in elements]


def _image(value, height=6, width=5):
    rng = np.random.default_rng(value)
    return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


def _write_folder(root):
    """Two classes, three good images each (PNG and JPEG), one corrupt."""
    for name in ("cat", "ant"):  # written unsorted on purpose
        os.makedirs(root / name)
        for i in range(3):
            image = _image(i, 6 + i)
            if i == 1:
                data = tf.io.encode_jpeg(image).numpy()
                (root / name / f"{i}.JPG").write_bytes(data)
            else:
                data = tf.io.encode_png(image).numpy()
                (root / name / f"{i}.png").write_bytes(data)
    (root / "ant" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    (root / "ant" / "notes.txt").write_text("ignored")


def _example(encoded, label):
    return tf.train.Example(
        features=tf.train.Features(
            feature={
                "image/encoded": tf.train.Feature(
                    bytes_list=tf.train.BytesList(value=[encoded])
                ),
                "image/class/label": tf.train.Feature(
                    int64_list=tf.train.Int64List(value=[label])
                ),
            }
        )
    ).SerializeToString()


def _write_tfrecords(directory, labels_per_file, corrupt_at=None):
    """One file per list of labels; returns the glob."""
    for f, labels in enumerate(labels_per_file):
        path = str(directory / f"part-{f:02d}.tfrecord")
        with tf.io.TFRecordWriter(path) as writer:
            for i, label in enumerate(labels):
                encoded = tf.io.encode_png(_image(10 * f + i)).numpy()
                if (f, i) == corrupt_at:
                    encoded = b"\x89PNG\r\n\x1a\n truncated"
                writer.write(_example(encoded, label))
    return str(directory / "part-*.tfrecord")


def test_mnist5k_is_a_fixed_balanced_split():
    for split, per_class in (("train", 400), ("test", 100)):
        ds, info = sources.load_source(f"mnist5k:{split}")
        _check_spec(ds)
        assert ds.element_spec["image"].shape == [28, 28, 3]
        images, labels = _read(ds)
        assert info.num_classes == 10
        assert info.num_examples == len(labels) == 10 * per_class
        assert np.bincount(labels).tolist() == [per_class] * 10
        assert labels == sources.source_labels(f"mnist5k:{split}").tolist()
        image = images[0]
        assert np.array_equal(image[..., 0], image[..., 2])
        assert image.max() > 200 and image.min() == 0
    train, _ = _read(sources.load_source("mnist5k:train")[0])
    test, _ = _read(sources.load_source("mnist5k:test")[0])
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
    "spec",
    ["mnist5k:val", "imagenet", "foo:bar", "tfds:cifar10", "mnist5k:"],
)
def test_unknown_spec_names_spec_and_forms(spec):
    with pytest.raises(sources.SourceError) as info:
        sources.load_source(spec)
    assert repr(spec) in str(info.value)
    assert "tfrecord:GLOB" in str(info.value)


@pytest.mark.parametrize(
    "name, shape", [("cifar10", (32, 32, 3)), ("mnist", (28, 28, 3))]
)
def test_tfds_source_with_mock_data(tmp_path, name, shape):
    with tfds.testing.mock_data(num_examples=6):
        ds, info = sources.load_source(
            f"tfds:{name}:train", data_dir=str(tmp_path)
        )
        _check_spec(ds)
        images, labels = _read(ds)
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
    _write_folder(tmp_path)
    ds, info = sources.load_source(f"folder:{tmp_path}")
    _check_spec(ds)
    images, labels = _read(ds)
    assert info.num_classes == 2 and info.num_examples == 7
    # Sorted class names: ant -> 0, cat -> 1; round-robin fixed order.
    assert labels == [0, 1, 0, 1, 0, 1]
    assert [im.shape for im in images[::2]] == [(6, 5, 3), (7, 5, 3), (8, 5, 3)]
    assert np.array_equal(images[0], _image(0, 6))
    assert info.skipped.value() == 1
    # Labels come from paths: the corrupt file is in, matching `index`.
    expected = [0, 1] * 3 + [0]
    assert sources.source_labels(f"folder:{tmp_path}").tolist() == expected
    list(ds.repeat(2))
    assert info.skipped.value() == 3


def test_tfrecord_source_offset_skip_and_class_count(tmp_path):
    pattern = _write_tfrecords(
        tmp_path, [[1, 2, 3], [3, 2, 1, 1]], corrupt_at=(1, 1)
    )
    ds, info = sources.load_source(
        f"tfrecord:{pattern}?label_offset=-1&num_classes=5"
    )
    _check_spec(ds)
    images, labels = _read(ds)
    assert info.num_classes == 5 and info.num_examples == 7
    # Files read round-robin; the corrupt record (file 1, #1) is skipped.
    assert labels == [0, 2, 1, 2, 0, 0]
    assert np.array_equal(images[0], _image(0))
    assert info.skipped.value() == 1
    spec = f"tfrecord:{pattern}?label_offset=-1"
    assert sources.source_labels(spec).tolist() == [0, 2, 1, 1, 2, 0, 0]
    # Without the option: max label + 1 from the scan, then labels.txt.
    assert sources.load_source(spec)[1].num_classes == 3
    (tmp_path / "labels.txt").write_text("a\nb\nc\nd\n\n")
    assert sources.load_source(spec)[1].num_classes == 4


def test_subset_is_selected_before_decoding(tmp_path):
    pattern = _write_tfrecords(
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
    pattern = _write_tfrecords(tmp_path, [[1, 2]])
    with pytest.raises(sources.SourceError, match=message):
        sources.load_source(f"tfrecord:{pattern}{suffix}")


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
    pattern = _write_tfrecords(tmp_path, [[0, 0, 0], [1, 1]])
    _write_folder(tmp_path / "folder")
    for spec, expected in (
        (f"tfrecord:{pattern}", [[0, 0, 0], [1, 1]]),  # by file
        (f"folder:{tmp_path / 'folder'}", [[0, 0, 0], [1, 1, 1]]),
    ):
        shards = []
        for i in range(2):
            context = tf.distribute.InputContext(2, i)
            ds, _ = sources.load_source(spec, input_context=context)
            shards.append(_read(ds)[1])
        assert shards == expected
    context = tf.distribute.InputContext(3, 2)
    ds, _ = sources.load_source("mnist5k:test", input_context=context)
    assert len(list(ds)) == 333


def test_shuffle_files_is_seeded(tmp_path):
    pattern = _write_tfrecords(tmp_path, [[i] * 2 for i in range(6)])
    spec = f"tfrecord:{pattern}"

    def labels(seed):
        ds, _ = sources.load_source(spec, shuffle_files=True, seed=seed)
        return _read(ds)[1]

    assert labels(1) == labels(1)
    assert sorted(labels(1)) == sorted(labels(2))
    assert labels(1) != _read(sources.load_source(spec)[0])[1]


@pytest.mark.skipif(
    not os.path.isdir(CIFAR10_DIR), reason="shared cifar10 not present"
)
def test_real_cifar10_tfrecords():
    ds, info = sources.load_source(f"tfrecord:{CIFAR10_DIR}/train-*.tfrecord")
    _check_spec(ds)
    images, labels = _read(ds.take(20))
    assert info.num_classes == 10 and info.num_examples == 50_000
    assert [im.shape for im in images] == [(32, 32, 3)] * 20
    # The shards hold one class each; the fixed order interleaves them.
    assert labels[:10] == list(range(10))


def test_small_label_subset_is_read_once(tmp_path):
    pattern = _write_tfrecords(tmp_path, [[0, 1, 2], [3, 4]])
    ds, _ = sources.open_indexed_source(f"tfrecord:{pattern}", ids=[4, 1])
    epochs = iter(ds.repeat(2))
    first = [int(next(epochs)["index"]) for _ in range(2)]
    for path in tmp_path.glob("part-*.tfrecord"):
        path.unlink()  # the second epoch can only come from memory
    second = [int(e["index"]) for e in epochs]
    assert first == second and sorted(first) == [1, 4]
