"""Augmentation and input-pipeline throughput, written as Markdown.

    python tools/benchmark_augment.py --output=BENCHMARKS_data.md

1. Patches/s of the per-patch augmentation (`augment_patches`, all steps,
   vectorized over the batch) against a naive version that augments one
   patch at a time with `tf.map_fn`, on the same patches and both inside a
   `tf.function`; the first (tracing) call is excluded.
2. Images/s of `pretrain_dataset` (training: decode, resize, crop, patch
   grid, augmentation, batching) on the listed sources, after a warm-up
   window.

Every figure is the best of `--repeats` timings (the naive one of half as
many), which is the most stable statistic on a shared machine.
"""

import argparse
import os
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import tensorflow as tf  # noqa: E402

from cpc_tf import data  # noqa: E402
from cpc_tf.training import machine

CIFAR10 = "tfrecord:/work/shared/data/cifar10/train-*.tfrecord"
DEMO = dict(image_size=32, crop_size=28, patch_size=8, patch_stride=4)
# (name, images, patches per image, patch side)
AUGMENT_CASES = (("paper", 64, 36, 80), ("demo", 64, 36, 8))


def _parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default=None, help="Markdown file")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--pipeline_batches", type=int, default=40)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument(
        "--sources", default=f"mnist5k:train,{CIFAR10}", help="comma list"
    )
    return parser.parse_args()


def _timed(fn, repeats):
    """Fastest of `repeats` calls after one warm-up call, in seconds."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def _augment_rates(num_images, per_image, size, repeats):
    """(vectorized, naive) patches per second."""
    config = data.AugmentConfig()
    n = num_images * per_image
    patches = tf.random.stateless_uniform([n, size, size, 3], [0, 1])
    seed = tf.constant([7, 0], tf.int64)

    @tf.function
    def vectorized(x, seed):
        return data.augment_patches(x, config, seed)

    @tf.function
    def naive(x, seed):
        seeds = tf.random.experimental.stateless_split(seed, n)
        return tf.map_fn(
            lambda args: data.augment_patches(args[0][None], config, args[1])[
                0
            ],
            (x, seeds),
            fn_output_signature=tf.float32,
        )

    fast = _timed(lambda: vectorized(patches, seed).numpy(), repeats)
    slow = _timed(lambda: naive(patches, seed).numpy(), max(1, repeats // 2))
    return n / fast, n / slow


def _pipeline_rate(spec, batch_size, batches, repeats):
    """Best images/s over `repeats` windows of `batches` batches."""
    ds, _ = data.pretrain_dataset(spec, batch_size=batch_size, **DEMO)
    iterator = iter(ds)

    def window():
        for _ in range(batches):
            next(iterator)

    return batches * batch_size / _timed(window, repeats)


def _machine():
    model = machine.cpu_model()
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (
        f"{os.cpu_count()} CPU cores ({model}), no GPU; "
        f"TensorFlow {tf.__version__}; load average at start {load}"
    )


def main():
    args = _parse_args()
    lines = [
        "## Augmentation throughput",
        "",
        f"Command: `python tools/benchmark_augment.py --repeats={args.repeats}"
        f" --pipeline_batches={args.pipeline_batches}"
        f" --batch_size={args.batch_size}`",
        f"Machine: {_machine()}.",
        "",
        "Full per-patch augmentation (`augment_patches`, default "
        "`AugmentConfig`), vectorized over the batch vs. a naive "
        "`tf.map_fn` over single patches; both in `tf.function`, tracing "
        f"call excluded; best of {args.repeats} calls "
        f"({max(1, args.repeats // 2)} for map_fn).",
        "",
        "| case | patches | vectorized patches/s | map_fn patches/s | ratio |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, images, per_image, size in AUGMENT_CASES:
        fast, slow = _augment_rates(images, per_image, size, args.repeats)
        lines.append(
            f"| {name} | {images} x {per_image} of {size}x{size} | "
            f"{fast:,.0f} | {slow:,.0f} | {fast / slow:.1f}x |"
        )
        print(lines[-1], flush=True)
    lines += [
        "",
        "`pretrain_dataset` training input (decode, resize 32, random crop "
        "28, 6x6 grid of 8px patches at stride 4, per-patch augmentation, "
        f"batch {args.batch_size}); best of {args.repeats} windows of "
        f"{args.pipeline_batches} batches after a warm-up window:",
        "",
        "| source | images/s |",
        "| --- | --- |",
    ]
    for spec in args.sources.split(","):
        rate = _pipeline_rate(
            spec, args.batch_size, args.pipeline_batches, args.repeats
        )
        lines.append(f"| `{spec}` | {rate:,.0f} |")
        print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.output:
        with tf.io.gfile.GFile(args.output, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
