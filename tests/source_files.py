"""Small image sources written for the source and reader tests."""

import os

import numpy as np
import tensorflow as tf

# The shared/ folder beside the checkout (as in CI).
CIFAR10_DIR = os.path.join(
    os.path.dirname(__file__), "..", "..", "shared", "data", "cifar10"
)
ELEMENT_KEYS = {"image", "label"}


def check_spec(ds):
    """Asserts the element spec every source yields."""
    spec = ds.element_spec
    assert set(spec) == ELEMENT_KEYS
    assert spec["image"].dtype == tf.uint8
    assert spec["image"].shape.rank == 3 and spec["image"].shape[-1] == 3
    assert spec["label"].dtype == tf.int64 and spec["label"].shape == []


def read(ds):
    """(images, labels) of a whole dataset."""
    elements = list(ds.as_numpy_iterator())
    return [e["image"] for e in elements], [int(e["label"]) for e in elements]


def random_image(value, height=6, width=5):
    """A random uint8 image [height, width, 3] seeded by `value`."""
    rng = np.random.default_rng(value)
    return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


def write_folder(root):
    """Two classes, three good images each (PNG and JPEG), one corrupt."""
    for name in ("cat", "ant"):  # written unsorted on purpose
        os.makedirs(root / name)
        for i in range(3):
            image = random_image(i, 6 + i)
            if i == 1:
                data = tf.io.encode_jpeg(image).numpy()
                (root / name / f"{i}.JPG").write_bytes(data)
            else:
                data = tf.io.encode_png(image).numpy()
                (root / name / f"{i}.png").write_bytes(data)
    (root / "ant" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    (root / "ant" / "notes.txt").write_text("ignored")


def example(encoded, label):
    """A serialized `tf.train.Example` of an encoded image and label."""
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


def write_tfrecords(directory, labels_per_file, corrupt_at=None):
    """One file per list of labels; returns the glob."""
    for f, labels in enumerate(labels_per_file):
        path = str(directory / f"part-{f:02d}.tfrecord")
        with tf.io.TFRecordWriter(path) as writer:
            for i, label in enumerate(labels):
                encoded = tf.io.encode_png(random_image(10 * f + i)).numpy()
                if (f, i) == corrupt_at:
                    encoded = b"\x89PNG\r\n\x1a\n truncated"
                writer.write(example(encoded, label))
    return str(directory / "part-*.tfrecord")
