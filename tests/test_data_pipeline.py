"""Tests of cpc_tf.data.pipeline on mnist5k and TFDS mock data."""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from cpc_tf.data import augment, pipeline, sources, subsets

DEMO = dict(image_size=32, crop_size=28, patch_size=8, patch_stride=4)
# Small buffers keep the first batch quick.
FAST = dict(shuffle_buffer=32, **DEMO)


def _first(ds):
    x, y = next(iter(ds))
    return x.numpy(), y.numpy()


def test_pretrain_training_batches():
    ds, info = pipeline.pretrain_dataset("mnist5k:train", batch_size=4, **FAST)
    assert info.num_classes == 10
    x, y = _first(ds)
    assert x.shape == (4, 6, 6, 8, 8, 3) and x.dtype == np.float32
    assert y.shape == (4,) and y.dtype == np.int64
    assert x.min() >= -1.0 and x.max() <= 1.0 and x.min() < -0.9
    assert ds.element_spec[0].shape == [4, 6, 6, 8, 8, 3]
    # Same seed, same batches; another seed, other crops and augmentation.
    again = pipeline.pretrain_dataset("mnist5k:train", batch_size=4, **FAST)
    np.testing.assert_array_equal(_first(again[0])[0], x)
    other = pipeline.pretrain_dataset(
        "mnist5k:train", batch_size=4, seed=1, **FAST
    )
    assert not np.array_equal(_first(other[0])[0], x)


def test_pretrain_eval_is_serving_preprocessing():
    ds, info = pipeline.pretrain_dataset(
        "mnist5k:test", batch_size=64, training=False, repeat=False, **DEMO
    )
    batches = list(ds.as_numpy_iterator())
    # No drop_remainder: all 1000 test images, last batch smaller.
    assert sum(len(y) for _, y in batches) == info.num_examples == 1000
    assert len(batches[-1][1]) == 1000 % 64
    raw, _ = sources.load_source("mnist5k:test")
    images = np.stack([e["image"] for e in raw.take(64).as_numpy_iterator()])
    served = pipeline.eval_patches(images, **DEMO).numpy()
    np.testing.assert_array_equal(batches[0][0], served)
    # Centre crop: patch (0, 0) starts at offset (32 - 28) / 2 = 2.
    resized = tf.image.resize(
        images[:1].astype(np.float32), [32, 32], antialias=True
    )
    expected = np.clip(np.round(resized.numpy()), 0, 255)[0, 2:10, 2:10]
    np.testing.assert_allclose(served[0, 0, 0], expected / 127.5 - 1, atol=1e-6)


def test_pretrain_without_augmentation_keeps_pixels():
    ds, _ = pipeline.pretrain_dataset(
        "mnist5k:train", batch_size=2, augment=None, **FAST
    )
    x, _ = _first(ds)
    levels = (x + 1.0) * 127.5
    np.testing.assert_allclose(levels, np.round(levels), atol=1e-4)
    # MNIST is grey: no augmentation, so channels stay equal.
    np.testing.assert_array_equal(x[..., 0], x[..., 1])


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(batch_size=0), "batch_size"),
        (dict(batch_size=2, image_size=24), "crop_size"),
        (dict(batch_size=2, patch_stride=6), "patch_stride=6"),
        (dict(batch_size=2, shuffle_buffer=0), "shuffle_buffer"),
        (dict(batch_size=2, augment="yes"), "augment"),
    ],
)
def test_pretrain_validates_arguments_first(kwargs, name):
    geometry = {**DEMO, **kwargs}
    with pytest.raises(ValueError, match=name):
        pipeline.pretrain_dataset("no-such-spec", **geometry)


def test_label_subset_and_sharding():
    labels = sources.source_labels("mnist5k:test")
    ids = subsets.label_subset_ids(labels, 5, seed=0)
    seen = []
    for i in range(2):
        ds, info = pipeline.pretrain_dataset(
            "mnist5k:test",
            batch_size=8,
            training=False,
            repeat=False,
            label_subset=ids,
            input_context=tf.distribute.InputContext(2, i),
            **DEMO,
        )
        seen.append(np.concatenate([y for _, y in ds.as_numpy_iterator()]))
    assert info.num_examples == len(ids) == 50
    assert [len(s) for s in seen] == [25, 25]
    assert np.bincount(np.concatenate(seen)).tolist() == [5] * 10
    assert sorted(np.concatenate(seen)) == sorted(labels[ids])


def test_image_dataset_train_and_eval():
    ds, _ = pipeline.image_dataset(
        "mnist5k:train", batch_size=3, image_size=20, shuffle_buffer=32
    )
    x, y = _first(ds)
    assert x.shape == (3, 20, 20, 3) and y.shape == (3,)
    assert x.min() >= -1.0 and x.max() <= 1.0
    ds, _ = pipeline.image_dataset(
        "mnist5k:test",
        batch_size=3,
        image_size=20,
        training=False,
        repeat=False,
    )
    x, _ = _first(ds)
    raw, _ = sources.load_source("mnist5k:test")
    images = np.stack([e["image"] for e in raw.take(3).as_numpy_iterator()])
    np.testing.assert_array_equal(
        x, pipeline.eval_image(images, image_size=20).numpy()
    )


def test_eval_image_keeps_aspect_and_centres():
    # Left half black, right half white, 40 x 80: the shorter side goes to
    # round(16 / 0.875) = 18, the width to 36; the centre 16 x 16 crop
    # straddles the edge in the middle.
    image = np.zeros([1, 40, 80, 3], np.uint8)
    image[:, :, 40:] = 255
    out = pipeline.eval_image(image, image_size=16).numpy()
    assert out.shape == (1, 16, 16, 3)
    np.testing.assert_allclose(out[0, :, :7], -1.0, atol=1e-5)
    np.testing.assert_allclose(out[0, :, 9:], 1.0, atol=1e-5)
    fn = tf.function(
        lambda im: pipeline.eval_image(im, image_size=16),
        input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8)],
    )
    np.testing.assert_allclose(fn(image), out, atol=1e-6)


def test_pipeline_on_tfds_mock_data(tmp_path):
    with tfds.testing.mock_data(num_examples=8):
        ds, _ = pipeline.pretrain_dataset(
            "tfds:cifar10:train",
            batch_size=4,
            data_dir=str(tmp_path),
            image_size=32,
            crop_size=24,
            patch_size=8,
            patch_stride=8,
            augment=augment.AugmentConfig(randaugment_num_ops=1),
        )
        x, y = _first(ds)
    assert x.shape == (4, 3, 3, 8, 8, 3) and y.shape == (4,)


@pytest.mark.slow
def test_distributed_pretrain_input_under_mirrored_strategy(tmp_path):
    """End to end: the trainer's `distribute_datasets_from_function` path,
    with a corrupt file among good ones, on two logical CPUs."""
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        for i in range(4):
            image = np.full([20, 24, 3], 60 * i, np.uint8)
            (tmp_path / name / f"{i}.png").write_bytes(
                tf.io.encode_png(image).numpy()
            )
    (tmp_path / "a" / "9.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    infos = []

    def dataset_fn(context):
        ds, info = pipeline.pretrain_dataset(
            f"folder:{tmp_path}",
            batch_size=context.get_per_replica_batch_size(4),
            input_context=context,
            **DEMO,
        )
        infos.append(info)
        return ds

    dist = strategy.distribute_datasets_from_function(dataset_fn)
    iterator = iter(dist)
    for _ in range(4):
        x, y = next(iterator)
        shards = strategy.experimental_local_results(x)
        assert [s.shape for s in shards] == [(2, 6, 6, 8, 8, 3)] * 2
    assert infos[0].skipped.value() >= 1
