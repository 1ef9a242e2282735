"""Writes a PNG showing one image, its patch grid and augmented patches.

    python tools/preview_augment.py --data=mnist5k:train --output=preview.png

Panels: the resized image with the centre crop and the patch outlines; the
patches as the model sees them at evaluation; the same patches after the
per-patch augmentation, each captioned with its two RandAugment operations.
The default geometry is the small demo one (32 -> 28, 8px patches, stride
4); pass `--image_size=300 --crop_size=260 --patch_size=80
--patch_stride=36` for the paper's.
"""

import argparse
import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import matplotlib  # noqa: E402

matplotlib.use("Agg")

import matplotlib.patches as mpatches  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from cpc_tf import data  # noqa: E402


def _parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="mnist5k:train", help="source spec")
    parser.add_argument("--data_dir", default=None, help="TFDS data_dir")
    parser.add_argument("--output", default="preview.png")
    parser.add_argument("--index", type=int, default=0, help="image index")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image_size", type=int, default=32)
    parser.add_argument("--crop_size", type=int, default=28)
    parser.add_argument("--patch_size", type=int, default=8)
    parser.add_argument("--patch_stride", type=int, default=4)
    return parser.parse_args()


def _grid_axes(fig, spec, grid):
    sub = spec.subgridspec(grid, grid, wspace=0.08, hspace=0.25)
    return [
        [fig.add_subplot(sub[i, j]) for j in range(grid)] for i in range(grid)
    ]


def main():
    args = _parse_args()
    grid = data.grid_size(args.crop_size, args.patch_size, args.patch_stride)
    ds, info = data.load_source(args.data, data_dir=args.data_dir)
    element = next(iter(ds.skip(args.index)))
    image = element["image"].numpy()
    label = int(element["label"])

    resized = tf.image.resize(
        image[None].astype(np.float32),
        [args.image_size] * 2,
        antialias=True,
    )[0].numpy()
    patches = data.eval_patches(
        image[None],
        image_size=args.image_size,
        crop_size=args.crop_size,
        patch_size=args.patch_size,
        patch_stride=args.patch_stride,
    )[0]
    flat = tf.reshape(
        (patches + 1.0) / 2.0, [-1, args.patch_size, args.patch_size, 3]
    )
    config = data.AugmentConfig()
    augmented = data.augment_patches(flat, config, args.seed).numpy()
    ops = data.sample_randaugment_ops(grid * grid, config, args.seed).numpy()

    fig = plt.figure(figsize=(15, 5.4))
    outer = fig.add_gridspec(1, 3, wspace=0.12)
    ax = fig.add_subplot(outer[0])
    ax.imshow(np.clip(resized / 255.0, 0, 1), interpolation="nearest")
    offset = (args.image_size - args.crop_size) / 2 - 0.5
    ax.add_patch(
        mpatches.Rectangle(
            (offset, offset),
            args.crop_size,
            args.crop_size,
            fill=False,
            edgecolor="yellow",
            linewidth=2,
        )
    )
    colours = plt.cm.viridis(np.linspace(0, 1, grid * grid))
    for i in range(grid):
        for j in range(grid):
            ax.add_patch(
                mpatches.Rectangle(
                    (
                        offset + j * args.patch_stride,
                        offset + i * args.patch_stride,
                    ),
                    args.patch_size,
                    args.patch_size,
                    fill=False,
                    edgecolor=colours[i * grid + j],
                    linewidth=0.6,
                )
            )
    ax.set_title(
        f"{info.spec}\nimage #{args.index}, label {label}: resized to "
        f"{args.image_size}px, centre crop {args.crop_size}",
        fontsize=9,
    )
    ax.axis("off")

    names = data.RANDAUGMENT_OPS
    for panel, images, title in (
        (1, (patches.numpy() + 1.0) / 2.0, "patch grid (evaluation)"),
        (2, augmented.reshape(patches.shape), "augmented, per patch"),
    ):
        axes = _grid_axes(fig, outer[panel], grid)
        for i in range(grid):
            for j in range(grid):
                a = axes[i][j]
                a.imshow(np.clip(images[i, j], 0, 1), interpolation="nearest")
                a.set_xticks([])
                a.set_yticks([])
                if panel == 2:
                    pair = ops[i * grid + j]
                    a.set_title(
                        "+".join(names[k].replace("_", "")[:6] for k in pair),
                        fontsize=5,
                        pad=1,
                    )
        axes[0][grid // 2].text(
            0.5,
            1.6,
            title,
            transform=axes[0][grid // 2].transAxes,
            ha="center",
            fontsize=11,
        )
    fig.savefig(args.output, dpi=130, bbox_inches="tight")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
