"""The pixel operations of the CPC v2 augmentation (`augment`).

Each acts on a batch of patches `[n, H, W, 3]` in [0, 1] with per-patch
parameters `[n, ...]`: the RandAugment operations (`op_branch`), the
elastic deformation with shear and the colour-histogram tone curve
(step 2), the Inception colour distortion as one affine colour map per
patch (step 3) and grey conversion (step 4). `augment` draws the
parameters and routes every patch to the operations it chose.
"""

import math

import keras
import numpy as np
import tensorflow as tf

FILL = 0.5
_ELASTIC_STD = 0.04
_BRIGHTNESS_DELTA = 32.0 / 255.0
_SATURATION_RANGE = (0.5, 1.5)
_HUE_DELTA = 0.2
_CONTRAST_RANGE = (0.5, 1.5)

_RGB_TO_YIQ = np.array(
    [
        [0.299, 0.587, 0.114],
        [0.596, -0.274, -0.322],
        [0.211, -0.523, 0.312],
    ],
    np.float32,
)
_YIQ_TO_RGB = np.linalg.inv(_RGB_TO_YIQ).astype(np.float32)


# -- step 1: RandAugment operations -------------------------------------------


def op_branch(name, m):
    """A function (images [n, H, W, 3], uniforms [n, 3]) -> images."""

    def signed(u, scale):
        return tf.where(u[:, 0] < 0.5, -scale, scale)

    def factor(u):
        return (1.0 + signed(u, 0.9 * m))[:, None, None, None]

    ops = {
        "shear_x": lambda x, u: _affine(x, _shear(signed(u, 0.3 * m), x, 0)),
        "shear_y": lambda x, u: _affine(x, _shear(signed(u, 0.3 * m), x, 1)),
        "translate_x": lambda x, u: _affine(
            x, _translate(signed(u, 0.45 * m) * _side(x, 2), 0)
        ),
        "translate_y": lambda x, u: _affine(
            x, _translate(signed(u, 0.45 * m) * _side(x, 1), 1)
        ),
        "rotate": lambda x, u: _affine(
            x, _rotation(signed(u, math.radians(30.0) * m), x)
        ),
        "auto_contrast": lambda x, u: auto_contrast(x),
        "invert": lambda x, u: 1.0 - x,
        "equalize": lambda x, u: equalize(x),
        "solarize": lambda x, u: _solarize(x, m),
        "posterize": lambda x, u: _posterize(x, 8 - round(4 * m)),
        "contrast": lambda x, u: _blend(_gray_mean(x), x, factor(u)),
        "color": lambda x, u: _blend(_gray(x), x, factor(u)),
        "brightness": lambda x, u: _blend(0.0, x, factor(u)),
        "sharpness": lambda x, u: _blend(_smooth(x), x, factor(u)),
        "cutout": lambda x, u: _cutout(x, u, 0.18 * m),
    }
    return ops[name]


def _side(images, axis):
    return tf.cast(tf.shape(images)[axis], tf.float32)


def _affine(images, transforms):
    """images [n, H, W, C], transforms [n, 8] (output -> input pixel)."""
    return keras.ops.image.affine_transform(
        images,
        transforms,
        interpolation="bilinear",
        fill_mode="constant",
        fill_value=FILL,
    )


def _shear(s, images, axis):
    """Shear about the centre; axis 0 moves along x, 1 along y."""
    zeros, ones = tf.zeros_like(s), tf.ones_like(s)
    if axis == 0:
        c = (_side(images, 1) - 1.0) / 2.0
        rows = [ones, s, -s * c, zeros, ones, zeros]
    else:
        c = (_side(images, 2) - 1.0) / 2.0
        rows = [ones, zeros, zeros, s, ones, -s * c]
    return tf.stack(rows + [zeros, zeros], axis=1)


def _translate(shift, axis):
    zeros, ones = tf.zeros_like(shift), tf.ones_like(shift)
    dx, dy = (shift, zeros) if axis == 0 else (zeros, shift)
    return tf.stack([ones, zeros, dx, zeros, ones, dy, zeros, zeros], axis=1)


def _rotation(angle, images):
    cy = (_side(images, 1) - 1.0) / 2.0
    cx = (_side(images, 2) - 1.0) / 2.0
    cos, sin = tf.cos(angle), tf.sin(angle)
    zeros = tf.zeros_like(angle)
    return tf.stack(
        [
            cos,
            -sin,
            cx - cos * cx + sin * cy,
            sin,
            cos,
            cy - sin * cx - cos * cy,
            zeros,
            zeros,
        ],
        axis=1,
    )


def auto_contrast(images):
    """Stretches every channel of every image to [0, 1]."""
    low = tf.reduce_min(images, axis=[1, 2], keepdims=True)
    high = tf.reduce_max(images, axis=[1, 2], keepdims=True)
    scale = tf.math.divide_no_nan(1.0, high - low)
    return tf.where(high > low, (images - low) * scale, images)


def equalize(images):
    """PIL-style histogram equalization per image and channel."""
    shape = tf.shape(images)
    levels = tf.cast(
        tf.round(tf.clip_by_value(images, 0.0, 1.0) * 255), tf.int32
    )
    # [n, H, W, C] -> [n, C, H*W]
    levels = tf.reshape(
        tf.transpose(levels, [0, 3, 1, 2]), [shape[0], shape[3], -1]
    )
    hist = tf.math.bincount(
        tf.reshape(levels, [-1, shape[1] * shape[2]]),
        minlength=256,
        maxlength=256,
        axis=-1,
    )
    hist = tf.reshape(hist, [shape[0], shape[3], 256])
    # Count in the highest occupied bin (PIL leaves it out of the step).
    last = 255 - tf.argmax(
        tf.reverse(tf.cast(hist > 0, tf.int32), axis=[-1]),
        axis=-1,
        output_type=tf.int32,
    )
    last_count = tf.gather(hist, last, batch_dims=2)
    step = (tf.reduce_sum(hist, axis=-1) - last_count) // 255
    safe_step = tf.maximum(step, 1)[..., None]
    lut = (tf.cumsum(hist, axis=-1, exclusive=True) + safe_step // 2) // (
        safe_step
    )
    lut = tf.clip_by_value(lut, 0, 255)
    mapped = tf.gather(lut, levels, batch_dims=2)
    mapped = tf.where((step > 0)[..., None], mapped, levels)
    mapped = tf.transpose(
        tf.reshape(mapped, [shape[0], shape[3], shape[1], shape[2]]),
        [0, 2, 3, 1],
    )
    return tf.cast(mapped, tf.float32) / 255.0


def _solarize(images, m):
    """Inverts the pixels at or above 1 - m (on the 0..256 level scale)."""
    return tf.where(images * 255.0 >= 256.0 * (1.0 - m), 1.0 - images, images)


def _posterize(images, bits):
    if bits >= 8:
        return images
    step = 2.0 ** (8 - bits)
    levels = tf.round(images * 255.0)
    return tf.floor(levels / step) * step / 255.0


def _blend(degenerate, images, factor):
    """PIL ImageEnhance: degenerate + factor * (image - degenerate)."""
    return tf.clip_by_value(
        degenerate + factor * (images - degenerate), 0.0, 1.0
    )


def _gray(images):
    return tf.image.rgb_to_grayscale(images)


def gray3(images):
    return tf.tile(_gray(images), [1, 1, 1, 3])


def _gray_mean(images):
    return tf.reduce_mean(_gray(images), axis=[1, 2, 3], keepdims=True)


def _smooth(images):
    """PIL's SMOOTH filter inside, the original pixels on the border."""
    # Kernel [[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13 = (9 * mean + 4 * centre).
    mean = tf.nn.avg_pool2d(images, 3, 1, "VALID")
    inner = (9.0 * mean + 4.0 * images[:, 1:-1, 1:-1]) / 13.0
    inner = tf.pad(inner, [[0, 0], [1, 1], [1, 1], [0, 0]])
    shape = tf.shape(images)
    rows = tf.range(shape[1])[:, None]
    cols = tf.range(shape[2])[None, :]
    border = (
        (rows == 0)
        | (rows == shape[1] - 1)
        | (cols == 0)
        | (cols == shape[2] - 1)
    )
    return tf.where(border[None, :, :, None], images, inner)


def _cutout(images, u, half_fraction):
    """Grey square of half-side `half_fraction * min(H, W)` at u[:, 1:]."""
    shape = tf.shape(images)
    height, width = _side(images, 1), _side(images, 2)
    half = tf.round(half_fraction * tf.minimum(height, width))
    cy = tf.floor(u[:, 1] * height)[:, None, None]
    cx = tf.floor(u[:, 2] * width)[:, None, None]
    rows = tf.cast(tf.range(shape[1]), tf.float32)[None, :, None]
    cols = tf.cast(tf.range(shape[2]), tf.float32)[None, None, :]
    inside = (
        (rows >= cy - half)
        & (rows < cy + half)
        & (cols >= cx - half)
        & (cols < cx + half)
    )
    return tf.where(inside[..., None], FILL, images)


# -- step 2: elastic deformation + shear, colour histogram --------------------


def elastic_shear(images, control, shear):
    """Elastic deformation and shear in one bilinear resampling.

    control: float32 [n, g, g, 2] standard normal control-point
    displacements (y, x); shear: float32 [n, 2] shear factors (x, y).
    """
    shape = tf.shape(images)
    height, width = _side(images, 1), _side(images, 2)
    control *= _ELASTIC_STD * tf.stack([height, width])
    field = tf.image.resize(control, shape[1:3], method="bicubic")
    rows = tf.cast(tf.range(shape[1]), tf.float32)[None, :, None]
    cols = tf.cast(tf.range(shape[2]), tf.float32)[None, None, :]
    cy, cx = (height - 1.0) / 2.0, (width - 1.0) / 2.0
    src_y = rows + shear[:, 1, None, None] * (cols - cx) + field[..., 0]
    src_x = cols + shear[:, 0, None, None] * (rows - cy) + field[..., 1]
    return _sample_bilinear(images, src_y, src_x)


def _sample_bilinear(images, y, x):
    """images [n, H, W, C] at float coordinates y, x [n, H, W]; the edge
    pixels extend outwards."""
    shape = tf.shape(images)
    y = tf.clip_by_value(y, 0.0, tf.cast(shape[1] - 1, tf.float32))
    x = tf.clip_by_value(x, 0.0, tf.cast(shape[2] - 1, tf.float32))
    y0, x0 = tf.floor(y), tf.floor(x)
    wy, wx = (y - y0)[..., None], (x - x0)[..., None]
    y0, x0 = tf.cast(y0, tf.int32), tf.cast(x0, tf.int32)
    y1 = tf.minimum(y0 + 1, shape[1] - 1)
    x1 = tf.minimum(x0 + 1, shape[2] - 1)

    def at(yi, xi):
        return tf.gather_nd(images, tf.stack([yi, xi], axis=-1), batch_dims=1)

    top = at(y0, x0) * (1.0 - wx) + at(y0, x1) * wx
    bottom = at(y1, x0) * (1.0 - wx) + at(y1, x1) * wx
    return top * (1.0 - wy) + bottom * wy


def tone_curve(images, slopes):
    """Monotone piecewise-linear curve per image and channel.

    slopes: float32 [n, 3, pieces] positive relative slopes.
    """
    shape = tf.shape(images)
    pieces = slopes.shape[-1]
    knots = tf.cumsum(slopes, axis=-1) / tf.reduce_sum(
        slopes, axis=-1, keepdims=True
    )
    knots = tf.concat([tf.zeros_like(knots[..., :1]), knots], axis=-1)
    # [n, H, W, 3] -> [n, 3, H*W]
    values = tf.reshape(
        tf.transpose(images, [0, 3, 1, 2]), [shape[0], shape[3], -1]
    )
    scaled = tf.clip_by_value(values, 0.0, 1.0) * pieces
    piece = tf.minimum(tf.cast(tf.floor(scaled), tf.int32), pieces - 1)
    t = scaled - tf.cast(piece, tf.float32)
    low = tf.gather(knots, piece, batch_dims=2)
    high = tf.gather(knots, piece + 1, batch_dims=2)
    out = tf.reshape(
        low + t * (high - low), [shape[0], shape[3], shape[1], shape[2]]
    )
    return tf.transpose(out, [0, 2, 3, 1])


# -- step 3: Inception colour distortion --------------------------------------


def color_jitter(images, gate, u):
    """Slim's colour distortion as one affine colour map per patch.

    gate: int32 [n] (1 = distort); u: float32 [n, 4] uniform draws.
    Brightness adds to luma, saturation and hue scale and rotate the YIQ
    chroma plane, contrast scales about the per-channel mean: all linear,
    so they commute and every patch needs one 3x3 map and one offset.
    """
    brightness = _BRIGHTNESS_DELTA * (2.0 * u[:, 0] - 1.0)
    saturation = _lerp(_SATURATION_RANGE, u[:, 1])
    hue = _HUE_DELTA * (2.0 * u[:, 2] - 1.0)
    contrast = _lerp(_CONTRAST_RANGE, u[:, 3])
    chroma = chroma_maps(saturation, hue)
    means = tf.reduce_mean(images, axis=[1, 2])
    # out = f * C x + (1 - f) * C mean + brightness
    matrix = contrast[:, None, None] * chroma
    offset = (1.0 - contrast[:, None]) * tf.einsum(
        "nij,nj->ni", chroma, means
    ) + brightness[:, None]
    on = gate > 0
    matrix = tf.where(on[:, None, None], matrix, tf.eye(3))
    offset = tf.where(on[:, None], offset, 0.0)
    out = tf.einsum("nij,nhwj->nhwi", matrix, images)
    return tf.clip_by_value(out + offset[:, None, None, :], 0.0, 1.0)


def _lerp(bounds, t):
    return bounds[0] + (bounds[1] - bounds[0]) * t


def chroma_maps(saturation, hue):
    """RGB maps [n, 3, 3] that scale the YIQ chroma plane by `saturation`
    and rotate it by `hue` turns, keeping luma."""
    angle = 2.0 * math.pi * hue
    cos, sin = saturation * tf.cos(angle), saturation * tf.sin(angle)
    ones, zeros = tf.ones_like(cos), tf.zeros_like(cos)
    yiq_map = tf.reshape(
        tf.stack([ones, zeros, zeros, zeros, cos, -sin, zeros, sin, cos], 1),
        [-1, 3, 3],
    )
    return _YIQ_TO_RGB @ yiq_map @ _RGB_TO_YIQ
