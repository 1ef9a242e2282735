"""CPC v2 augmentation (appendix A), drawn independently for every patch.

Steps, each applied to every patch (or image) on its own:

1. RandAugment-style: `randaugment_num_ops` (2) operations drawn uniformly,
   with replacement, from `randaugment_ops` (default: the AutoAugment list of
   Cubuk et al. (2018), `RANDAUGMENT_OPS`): ShearX/Y, TranslateX/Y, Rotate,
   AutoContrast, Invert, Equalize, Solarize, Posterize, Contrast, Color,
   Brightness, Sharpness, Cutout (SamplePairing is left out: it mixes two
   images). "Default parameters": one magnitude M on the AutoAugment level
   scale [0, 10], default 9 (RandAugment's N=2, M=9 for ResNet-50 on
   ImageNet). At M the ranges are AutoAugment's maxima times M/10: shear 0.3,
   translate 45% of the side, rotate 30 degrees, enhance factor 1 +- 0.9,
   posterize to 8 - 4M/10 bits, solarize above 1 - M/10, cutout 36% of the
   side. Signed operations take a random sign per patch. Geometric fills are
   grey (0.5).
2. With p=0.2 an elastic deformation plus shear (De Fauw et al., 2018):
   a random 3x3 grid of control-point displacements (std 4% of the side),
   upsampled bicubically, combined with a shear of up to 0.2 on each axis,
   resampled bilinearly with edge replication. With p=0.2 a colour
   histogram augmentation: every channel goes through its own random
   monotone tone curve (4 linear pieces, slopes 0.3..1.7 before
   normalisation), which reshapes the channel histograms and the colour
   balance while keeping 0 -> 0 and 1 -> 1.
3. With p=0.8 the Inception colour distortion (Szegedy et al., 2014; the
   ranges of TF-slim's `distort_color`): brightness +-32/255, saturation
   0.5..1.5, hue +-0.2 turns, contrast 0.5..1.5 (about the per-channel
   mean), then clipped to [0, 1]. Saturation and hue act on the chroma
   plane of YIQ (the formulation of TF's former `adjust_hsv_in_yiq`), not
   through HSV: the four operations are then linear and commute, so slim's
   random order is moot and each patch gets one affine colour map, three
   times cheaper here than HSV round trips.
4. With p=0.25 conversion to grey (replicated to three channels).

Vectorization: every random choice (which RandAugment operations, their
signs, each gate, each deformation, curve and colour map) is drawn per
patch, for the whole batch at once, with stateless ops. A patch's choices
route it with `tf.dynamic_partition` to the branch that handles it and
`tf.dynamic_stitch` puts the results back, so each branch runs once on
just the patches that chose it; steps 3 and 4 use per-patch colour maps
and `tf.where`. Large batches of large patches are processed in chunks of
about `CHUNK_PIXELS` pixels, several at a time (`tf.map_fn` over chunks,
not patches): tensors of hundreds of MB make every elementwise pass go to
memory, and chunks are about twice as fast on 80x80 patches. Since the
draws are made before chunking, the output does not depend on it.
`sample_randaugment_ops` returns the per-patch operation indices that
`augment_patches` uses for a seed. This module draws and routes; the
pixel operations themselves are in `augment_ops`.

Why not the Keras layers: `keras.layers.RandAugment` draws its operations
once per batch; `Equalization` pools the histogram over the whole batch;
the random layers draw from a stateful `SeedGenerator`, which a tf.data
element seed cannot control, and `RandomElasticTransform` uses one
distortion strength per batch; `AutoContrast` fails on an empty
(sub-)batch. The geometric operations use `keras.ops.image.
affine_transform` with one transform per patch.

Determinism: the same `seed` (an int or an int [2] tensor) gives the same
output, eagerly and inside `tf.data`.
"""

import dataclasses

import tensorflow as tf

from cpc_tf.config.data import RANDAUGMENT_OPS
from cpc_tf.data import augment_ops

MAX_LEVEL = 10.0
# Patches are augmented in chunks of about this many pixels (one image's
# 36 patches of 80x80 in the paper setting; a whole batch of small
# patches), in parallel: large tensors run out of cache (see
# BENCHMARKS.md, "Augmentation throughput").
CHUNK_PIXELS = 36 * 80 * 80
CHUNK_PARALLELISM = 4
_ELASTIC_GRID = 3
_ELASTIC_SHEAR = 0.2
_CURVE_PIECES = 4
_CURVE_SLOPES = (0.3, 1.7)


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Switches and strengths of the four augmentation steps.

    A step is off when its probability is 0 (or `randaugment=False`).
    """

    randaugment: bool = True
    randaugment_num_ops: int = 2
    randaugment_magnitude: float = 9.0
    randaugment_ops: tuple = RANDAUGMENT_OPS
    elastic_shear_prob: float = 0.2
    color_histogram_prob: float = 0.2
    color_jitter_prob: float = 0.8
    grayscale_prob: float = 0.25

    def __post_init__(self):
        for name in (
            "elastic_shear_prob",
            "color_histogram_prob",
            "color_jitter_prob",
            "grayscale_prob",
        ):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}.")
        num_ops = self.randaugment_num_ops
        if isinstance(num_ops, bool) or not isinstance(num_ops, int):
            raise ValueError(
                f"randaugment_num_ops must be an int, got {num_ops!r}."
            )
        if num_ops < 0:
            raise ValueError(
                f"randaugment_num_ops must be >= 0, got {num_ops}."
            )
        unknown = set(self.randaugment_ops) - set(RANDAUGMENT_OPS)
        if unknown or not self.randaugment_ops:
            raise ValueError(
                f"randaugment_ops: unknown {sorted(unknown) or 'empty list'}; "
                f"choose from {RANDAUGMENT_OPS}."
            )
        if not 0.0 <= self.randaugment_magnitude <= MAX_LEVEL:
            raise ValueError(
                f"randaugment_magnitude must be in [0, {MAX_LEVEL:g}], got "
                f"{self.randaugment_magnitude}."
            )


def augment_patches(patches, config, seed):
    """Augments every patch independently (steps 1-4).

    Args:
        patches: float [N, p, p, 3] in [0, 1].
        config: an `AugmentConfig`.
        seed: int or int [2] tensor (stateless seed).

    Returns:
        float32 [N, p, p, 3] in [0, 1].
    """
    return _augment(patches, config, seed)


def augment_images(images, config, seed):
    """Augments whole images (steps 1-4), each independently.

    Args:
        images: float [B, H, W, 3] in [0, 1].
        config: an `AugmentConfig`.
        seed: int or int [2] tensor.

    Returns:
        float32 [B, H, W, 3] in [0, 1].
    """
    return _augment(images, config, seed)


def sample_randaugment_ops(num_patches, config, seed):
    """Operation indices into `config.randaugment_ops` that `augment_patches`
    applies for `seed`: int32 [num_patches, randaugment_num_ops]."""
    step_seed = _step_seeds(seed)[0]
    return _randaugment_draws(num_patches, config, step_seed)[0]


def inception_crop(
    image,
    size,
    seed,
    area_range=(0.08, 1.0),
    aspect_range=(3 / 4, 4 / 3),
):
    """Inception-style random-sized crop, resized to `size` x `size`.

    Args:
        image: uint8 [h, w, 3] (or float in [0, 1]).
        size: output side.
        seed: int or int [2] tensor.
        area_range: crop area as a fraction of the image area.
        aspect_range: crop width / height.

    Returns:
        float32 [size, size, 3] in [0, 1].
    """
    image = tf.convert_to_tensor(image)
    begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(image),
        bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
        seed=_as_seed(seed),
        min_object_covered=0.0,
        aspect_ratio_range=aspect_range,
        area_range=area_range,
        max_attempts=10,
        use_image_if_no_bounding_boxes=True,
    )
    crop = tf.slice(image, begin, crop_size)
    crop = tf.image.resize(to_unit_float(crop)[None], [size, size])[0]
    crop = tf.ensure_shape(crop, [size, size, image.shape[-1]])
    return tf.clip_by_value(crop, 0.0, 1.0)


def to_unit_float(images):
    """uint8 in [0, 255] -> float32 in [0, 1]; floats are cast only."""
    images = tf.convert_to_tensor(images)
    if images.dtype == tf.uint8:
        return tf.cast(images, tf.float32) / 255.0
    return tf.cast(images, tf.float32)


# -- seeds and routing --------------------------------------------------------


def _as_seed(seed):
    """int or int tensor ([] or [2]) -> int64 [2] stateless seed."""
    seed = tf.cast(tf.convert_to_tensor(seed), tf.int64)
    if seed.shape.rank == 0:
        return tf.stack([seed, tf.constant(0, tf.int64)])
    return tf.reshape(seed, [2])


def _step_seeds(seed):
    """One independent seed per step: int64 [5, 2]."""
    return tf.random.experimental.stateless_split(_as_seed(seed), 5)


def _split2(seed):
    return tf.unstack(tf.random.experimental.stateless_split(seed, 2))


def _dispatch(images, choice, branches, *args):
    """Applies `branches[choice[i]]` to patch i, each branch once.

    images: [N, H, W, C]; choice: int32 [N] in [0, len(branches));
    args: per-patch tensors [N, ...] handed to the branches alongside.
    """
    n = len(branches)
    positions = tf.dynamic_partition(tf.range(tf.shape(images)[0]), choice, n)
    parts = tf.dynamic_partition(images, choice, n)
    arg_parts = [tf.dynamic_partition(a, choice, n) for a in args]
    outputs = [
        branch(parts[k], *(a[k] for a in arg_parts))
        for k, branch in enumerate(branches)
    ]
    out = tf.dynamic_stitch(positions, outputs)
    return tf.ensure_shape(out, images.shape)


def _identity(images, *_):
    return images


def _augment(images, config, seed):
    images = to_unit_float(images)
    if images.shape.rank != 4 or images.shape[-1] != 3:
        raise ValueError(
            f"Expected images [N, H, W, 3], got shape {images.shape}."
        )
    draws = _draw(tf.shape(images)[0], config, seed)
    height, width = images.shape[1:3]
    if height is None or width is None:
        return _apply(images, draws, config)
    chunk = max(1, CHUNK_PIXELS // (height * width))
    if images.shape[0] is not None and images.shape[0] <= chunk:
        return _apply(images, draws, config)
    return _apply_in_chunks(images, draws, config, chunk)


def _draw(n, config, seed):
    """Every random choice for `n` patches: {name: per-patch [n, ...]}."""
    seeds = _step_seeds(seed)
    draws = {}
    if config.randaugment and config.randaugment_num_ops:
        draws["ops"], draws["op_uniforms"] = _randaugment_draws(
            n, config, seeds[0]
        )
    if config.elastic_shear_prob > 0:
        gate, control, shear = tf.unstack(
            tf.random.experimental.stateless_split(seeds[1], 3)
        )
        draws["elastic"] = _coin(n, config.elastic_shear_prob, gate)
        draws["elastic_control"] = tf.random.stateless_normal(
            [n, _ELASTIC_GRID, _ELASTIC_GRID, 2], control
        )
        draws["elastic_shear"] = tf.random.stateless_uniform(
            [n, 2], shear, -_ELASTIC_SHEAR, _ELASTIC_SHEAR
        )
    if config.color_histogram_prob > 0:
        gate, slopes = _split2(seeds[2])
        draws["curve"] = _coin(n, config.color_histogram_prob, gate)
        draws["curve_slopes"] = tf.random.stateless_uniform(
            [n, 3, _CURVE_PIECES], slopes, *_CURVE_SLOPES
        )
    if config.color_jitter_prob > 0:
        gate, params = _split2(seeds[3])
        draws["jitter"] = _coin(n, config.color_jitter_prob, gate)
        draws["jitter_params"] = tf.random.stateless_uniform([n, 4], params)
    if config.grayscale_prob > 0:
        draws["gray"] = _coin(n, config.grayscale_prob, seeds[4])
    return draws


def _coin(n, prob, seed):
    """int32 [n]: 1 with probability `prob`."""
    return tf.cast(tf.random.stateless_uniform([n], seed) < prob, tf.int32)


def _apply(images, draws, config):
    """Steps 1-4 on images [n, H, W, 3] with their draws."""
    if "ops" in draws:
        m = config.randaugment_magnitude / MAX_LEVEL
        branches = [
            augment_ops.op_branch(name, m) for name in config.randaugment_ops
        ]
        for slot in range(config.randaugment_num_ops):
            images = _dispatch(
                images,
                draws["ops"][:, slot],
                branches,
                draws["op_uniforms"][:, slot],
            )
    if "elastic" in draws:
        images = _dispatch(
            images,
            draws["elastic"],
            (_identity, augment_ops.elastic_shear),
            draws["elastic_control"],
            draws["elastic_shear"],
        )
    if "curve" in draws:
        images = _dispatch(
            images,
            draws["curve"],
            (_identity, augment_ops.tone_curve),
            draws["curve_slopes"],
        )
    if "jitter" in draws:
        images = augment_ops.color_jitter(
            images, draws["jitter"], draws["jitter_params"]
        )
    if "gray" in draws:
        gate = draws["gray"][:, None, None, None] > 0
        images = tf.where(gate, augment_ops.gray3(images), images)
    return images


def _apply_in_chunks(images, draws, config, chunk):
    """`_apply` on consecutive chunks of `chunk` patches (the last one
    padded), run in parallel by `tf.map_fn`; same result as one call."""
    n = tf.shape(images)[0]
    pad = (chunk - n % chunk) % chunk

    def split(t):
        t = tf.pad(t, [[0, pad]] + [[0, 0]] * (t.shape.rank - 1))
        return tf.reshape(t, [-1, chunk, *t.shape[1:]])

    shape = images.shape[1:]
    out = tf.map_fn(
        lambda args: _apply(args[0], args[1], config),
        (split(images), {k: split(v) for k, v in draws.items()}),
        fn_output_signature=tf.TensorSpec([chunk, *shape], tf.float32),
        parallel_iterations=CHUNK_PARALLELISM,
    )
    return tf.reshape(out, [-1, *shape])[:n]


# -- step 1: RandAugment draws ------------------------------------------------


def _randaugment_draws(n, config, seed):
    """(ops int32 [n, k], uniforms float32 [n, k, 3]) for k slots."""
    op_seed, param_seed = _split2(seed)
    k = config.randaugment_num_ops
    ops = tf.random.stateless_uniform(
        [n, k], op_seed, 0, len(config.randaugment_ops), dtype=tf.int32
    )
    uniforms = tf.random.stateless_uniform([n, k, 3], param_seed)
    return ops, uniforms
