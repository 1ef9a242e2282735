"""Input pipelines for pretraining, linear evaluation and classifiers.

Pretraining (and linear evaluation, appendix B: "the same pipeline"):
decode -> resize to `image_size` squared (antialiased, kept as uint8) ->
[cache] -> shuffle -> repeat -> random `crop_size` crop (per element) ->
batch -> patch grid and per-patch augmentation on the whole batch (one
`augment_patches` call on all B * g * g patches; it chunks large patches
itself) -> scale to [-1, 1] -> prefetch. Evaluation: resize, centre
crop, grid, no augmentation, no shuffle; `eval_patches` is exactly that on
a batch, for serving.

Whole images (supervised baseline, fine-tuning; appendix C): training is
an Inception random-sized crop (smallest area `crop_min_area`) and a
random left-right flip (unless `flip=False`) per element,
then augmentation steps 1-4 per batch; evaluation resizes the shorter side
to `image_size / 0.875` and takes the centre `image_size` crop
(`eval_image`).

Randomness is stateless: element and batch seeds are folded from `seed`,
the input pipeline id and the element or batch counter, so a run is
reproducible and input pipelines draw differently.

Label subsets: with `label_subset` (indices into the source's fixed order,
see `subsets`), the source is read in that order, filtered by each
element's source index, then sharded by element across input pipelines.
"""

import dataclasses

import numpy as np
import tensorflow as tf

from cpc_tf.data import augment as augment_lib
from cpc_tf.data import patches as patches_lib
from cpc_tf.data import sources

EVAL_CROP_FRACTION = 0.875


def pretrain_dataset(
    spec,
    *,
    batch_size,
    training=True,
    image_size=300,
    crop_size=260,
    patch_size=80,
    patch_stride=36,
    augment=augment_lib.AugmentConfig(),  # noqa: B008 (frozen dataclass)
    seed=0,
    data_dir=None,
    input_context=None,
    label_subset=None,
    repeat=True,
    shuffle_buffer=4096,
    cache=False,
):
    """Batches of CPC patch grids.

    Args:
        spec: source spec (see `sources`).
        batch_size: images per batch of this input pipeline (the trainer
            passes `input_context.get_per_replica_batch_size(global)`).
        training: random crop, per-patch augmentation and shuffling (and
            full batches only, when repeating); else centre crop, none of
            those, and a smaller last batch.
        image_size: side the image is resized to (aspect not kept).
        crop_size: side of the (random or centre) crop.
        patch_size, patch_stride: patch grid geometry.
        augment: `AugmentConfig`, or None for no augmentation.
        seed: int seed of the shuffle, crops and augmentation.
        data_dir: TFDS data directory.
        input_context: `tf.distribute.InputContext` or None.
        label_subset: int indices into the source's fixed order, or None.
        repeat: repeat forever.
        shuffle_buffer: shuffle buffer in images (resized, uint8).
        cache: cache the resized images in memory.

    Returns:
        `(dataset, info)`; elements `(patches, labels)`: float32
        [B, g, g, patch_size, patch_size, 3] in [-1, 1] and int64 [B].
    """
    _check_positive(
        batch_size=batch_size,
        image_size=image_size,
        shuffle_buffer=shuffle_buffer,
    )
    _check_augment(augment)
    if crop_size > image_size:
        raise ValueError(
            f"crop_size={crop_size} must not exceed image_size={image_size}."
        )
    patches_lib.grid_size(crop_size, patch_size, patch_stride)
    ds, info = _open(
        spec, data_dir, input_context, label_subset, training, seed
    )
    shuffle_seed, crop_seed, augment_seed = _seeds(seed, input_context)
    geometry = dict(
        image_size=image_size,
        crop_size=crop_size,
        patch_size=patch_size,
        patch_stride=patch_stride,
    )
    if not training:
        ds = _finish_source(ds, cache, None, repeat)
        ds = ds.map(
            lambda image, label: (
                eval_patches(image[None], **geometry)[0],
                label,
            ),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
        return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE), info

    ds = ds.map(
        lambda image, label: (_resize_uint8(image[None], image_size)[0], label),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    ds = _finish_source(ds, cache, (shuffle_buffer, shuffle_seed), repeat)

    def crop(i, element):
        image, label = element
        image = tf.image.stateless_random_crop(
            image, [crop_size, crop_size, 3], _fold(crop_seed, i)
        )
        return image, label

    ds = ds.enumerate().map(crop, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(batch_size, drop_remainder=repeat)

    def to_patches(i, element):
        images, labels = element
        grid = patches_lib.extract_patches(images, patch_size, patch_stride)
        shape = tf.shape(grid)
        flat = augment_lib.to_unit_float(
            tf.reshape(grid, [-1, patch_size, patch_size, 3])
        )
        if augment is not None:
            flat = augment_lib.augment_patches(
                flat, augment, _fold(augment_seed, i)
            )
        return tf.reshape(flat * 2.0 - 1.0, shape), labels

    ds = ds.enumerate().map(to_patches, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE), info


def image_dataset(
    spec,
    *,
    batch_size,
    training=True,
    image_size=224,
    augment=augment_lib.AugmentConfig(),  # noqa: B008 (frozen dataclass)
    seed=0,
    data_dir=None,
    input_context=None,
    label_subset=None,
    repeat=True,
    shuffle_buffer=4096,
    cache=False,
    crop_min_area=0.08,
    flip=True,
):
    """Batches of whole images for the supervised baseline and fine-tuning.

    Arguments as in `pretrain_dataset`; `cache` keeps the decoded images;
    `crop_min_area` is the smallest area fraction of the training crop
    (Inception's 0.08); `flip` the random left-right flip.

    Returns:
        `(dataset, info)`; elements `(images, labels)`: float32
        [B, image_size, image_size, 3] in [-1, 1] and int64 [B].
    """
    _check_positive(
        batch_size=batch_size,
        image_size=image_size,
        shuffle_buffer=shuffle_buffer,
    )
    _check_augment(augment)
    ds, info = _open(
        spec, data_dir, input_context, label_subset, training, seed
    )
    shuffle_seed, crop_seed, augment_seed = _seeds(seed, input_context)
    shuffle = (shuffle_buffer, shuffle_seed) if training else None
    ds = _finish_source(ds, cache, shuffle, repeat)
    if not training:
        ds = ds.map(
            lambda image, label: (
                eval_image(image[None], image_size=image_size)[0],
                label,
            ),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
        return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE), info

    def crop(i, element):
        image, label = element
        crop_i, flip_i = _split(_fold(crop_seed, i))
        image = augment_lib.inception_crop(
            image, image_size, crop_i, area_range=(crop_min_area, 1.0)
        )
        if flip:
            image = tf.image.stateless_random_flip_left_right(image, flip_i)
        return image, label

    ds = ds.enumerate().map(crop, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(batch_size, drop_remainder=repeat)

    def finish(i, element):
        images, labels = element
        if augment is not None:
            images = augment_lib.augment_images(
                images, augment, _fold(augment_seed, i)
            )
        return images * 2.0 - 1.0, labels

    ds = ds.enumerate().map(finish, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE), info


def eval_patches(
    images_uint8, *, image_size, crop_size, patch_size, patch_stride
):
    """The evaluation patch preprocessing, as a pure TF function.

    Args:
        images_uint8: uint8 [B, h, w, 3].

    Returns:
        float32 [B, g, g, patch_size, patch_size, 3] in [-1, 1].
    """
    patches_lib.grid_size(crop_size, patch_size, patch_stride)
    images = _resize_uint8(images_uint8, image_size)
    offset = (image_size - crop_size) // 2
    images = images[:, offset : offset + crop_size, offset : offset + crop_size]
    grid = patches_lib.extract_patches(images, patch_size, patch_stride)
    return augment_lib.to_unit_float(grid) * 2.0 - 1.0


def eval_image(images_uint8, *, image_size):
    """The evaluation whole-image preprocessing, as a pure TF function.

    Resizes the shorter side to `image_size / 0.875` (aspect kept) and
    takes the centre `image_size` square.

    Args:
        images_uint8: uint8 [B, h, w, 3].

    Returns:
        float32 [B, image_size, image_size, 3] in [-1, 1].
    """
    images = augment_lib.to_unit_float(images_uint8)
    shape = tf.shape(images)
    height = tf.cast(shape[1], tf.float32)
    width = tf.cast(shape[2], tf.float32)
    scale = round(image_size / EVAL_CROP_FRACTION) / tf.minimum(height, width)
    new_height = tf.maximum(
        image_size, tf.cast(tf.round(height * scale), tf.int32)
    )
    new_width = tf.maximum(
        image_size, tf.cast(tf.round(width * scale), tf.int32)
    )
    images = tf.image.resize(
        images, tf.stack([new_height, new_width]), antialias=True
    )
    top = (new_height - image_size) // 2
    left = (new_width - image_size) // 2
    images = images[:, top : top + image_size, left : left + image_size]
    images = tf.ensure_shape(images, [None, image_size, image_size, 3])
    return tf.clip_by_value(images, 0.0, 1.0) * 2.0 - 1.0


def _check_augment(augment):
    if augment is not None and not isinstance(
        augment, augment_lib.AugmentConfig
    ):
        raise ValueError(
            f"augment must be an AugmentConfig or None, got {augment!r}."
        )


def _check_positive(**values):
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}.")


def _resize_uint8(images, size):
    """[B, h, w, 3] -> uint8 [B, size, size, 3], antialiased bilinear."""
    resized = tf.image.resize(
        tf.cast(images, tf.float32), [size, size], antialias=True
    )
    return tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8)


def _open(spec, data_dir, input_context, label_subset, training, seed):
    """(dataset of (image uint8 [h, w, 3], label int64 []), info)."""
    if label_subset is None:
        ds, info = sources.open_indexed_source(
            spec,
            data_dir=data_dir,
            input_context=input_context,
            shuffle_files=training,
            seed=seed,
        )
    else:
        ids = np.unique(np.asarray(label_subset, np.int64))
        ds, info = sources.open_indexed_source(spec, data_dir=data_dir, ids=ids)
        if input_context is not None:
            ds = ds.shard(
                input_context.num_input_pipelines,
                input_context.input_pipeline_id,
            )
        info = dataclasses.replace(info, num_examples=len(ids))
    ds = ds.map(
        lambda e: (e["image"], e["label"]), num_parallel_calls=tf.data.AUTOTUNE
    )
    return ds, info


def _seeds(seed, input_context):
    """(shuffle seed int, crop seed int64 [2], augment seed int64 [2]) for
    this input pipeline."""
    pipeline_id = (
        0 if input_context is None else input_context.input_pipeline_id
    )
    state = np.random.SeedSequence([seed, pipeline_id]).generate_state(5)
    state = state.astype(np.int64)
    return int(state[0]), tf.constant(state[1:3]), tf.constant(state[3:5])


def _finish_source(ds, cache, shuffle, repeat):
    """Cache, shuffle (`(buffer, seed)` or None) and repeat."""
    if cache:
        ds = ds.cache()
    if shuffle is not None:
        buffer, seed = shuffle
        ds = ds.shuffle(buffer, seed=seed)
    if repeat:
        ds = ds.repeat()
    return ds


def _fold(seed, i):
    return tf.random.experimental.stateless_fold_in(seed, tf.cast(i, tf.int64))


def _split(seed):
    return tf.unstack(tf.random.experimental.stateless_split(seed, 2))
