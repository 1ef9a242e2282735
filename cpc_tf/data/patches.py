"""The CPC patch grid: a crop cut into overlapping square patches.

Paper setting: a 260x260 crop, 80x80 patches, stride 36 -> a 6x6 grid.
"""

import tensorflow as tf


def grid_size(crop_size, patch_size, patch_stride):
    """Patches per side: `(crop_size - patch_size) / patch_stride + 1`.

    Raises:
        ValueError: when a size is not positive, the patch is larger than
            the crop, or the patches do not tile the crop exactly.
    """
    numbers = (
        f"crop_size={crop_size}, patch_size={patch_size}, "
        f"patch_stride={patch_stride}"
    )
    if min(crop_size, patch_size, patch_stride) <= 0:
        raise ValueError(f"Patch geometry must be positive: {numbers}.")
    if patch_size > crop_size:
        raise ValueError(f"patch_size exceeds crop_size: {numbers}.")
    if (crop_size - patch_size) % patch_stride:
        raise ValueError(
            "Patches do not tile the crop exactly: (crop_size - patch_size) "
            f"must be a multiple of patch_stride; {numbers}."
        )
    return (crop_size - patch_size) // patch_stride + 1


def extract_patches(images, patch_size, patch_stride):
    """Cuts images into their patch grid.

    Patch `(i, j)` is `image[i*s : i*s + p, j*s : j*s + p]`.

    Args:
        images: `[B, H, W, C]` or unbatched `[H, W, C]`, any dtype.
        patch_size: patch side `p`.
        patch_stride: stride `s` between patches.

    Returns:
        `[B, gh, gw, p, p, C]` (or `[gh, gw, p, p, C]`), same dtype.
    """
    images = tf.convert_to_tensor(images)
    if images.shape.rank == 3:
        return extract_patches(images[None], patch_size, patch_stride)[0]
    if images.shape.rank != 4:
        raise ValueError(
            f"extract_patches expects [B, H, W, C] or [H, W, C], got shape "
            f"{images.shape}."
        )
    height, width, channels = images.shape[1:]
    for side in (height, width):
        if side is not None:
            grid_size(side, patch_size, patch_stride)
    if channels is None:
        raise ValueError("extract_patches needs a static channel count.")
    # extract_patches flattens each patch as (row, column, channel).
    flat = tf.image.extract_patches(
        images,
        sizes=[1, patch_size, patch_size, 1],
        strides=[1, patch_stride, patch_stride, 1],
        rates=[1, 1, 1, 1],
        padding="VALID",
    )
    grid = [
        tf.shape(flat)[axis] if flat.shape[axis] is None else flat.shape[axis]
        for axis in (1, 2)
    ]
    return tf.reshape(flat, [-1, *grid, patch_size, patch_size, channels])
