"""What entry points build from a config: steps, patch streams, models."""

import numpy as np
import pytest
from helpers import FAST, ROOT, parse

from cpc_tf.config import RunConfig
from cpc_tf.training import builders


def test_total_steps_from_epochs():
    run = RunConfig(steps=0, epochs=2.0, batch_size=64)
    assert builders.total_steps(run, 1000) == 32
    floored = RunConfig(steps=0, epochs=2.0, batch_size=64, min_steps=100)
    assert builders.total_steps(floored, 1000) == 100
    with pytest.raises(ValueError, match="--steps"):
        builders.total_steps(run, None)


def test_augment_config_follows_the_data_flags():
    config = parse(
        f"--flagfile={ROOT}/flags/demo.cfg",
        "--randaugment_magnitude=5",
        "--grayscale_prob=0",
    )
    augment = builders.augment_config(config.data)
    assert augment.randaugment_magnitude == 5
    assert augment.grayscale_prob == 0
    assert augment.randaugment_ops == tuple(config.data.randaugment_ops)


def test_pretrain_patches_are_seeded_grids_of_the_chosen_images():
    config = parse(f"--flagfile={ROOT}/flags/demo.cfg", *FAST)
    data, grid = config.data, config.data.grid_size

    def first_batch(seed, ids=None):
        dataset, info = builders.pretrain_patches(
            data, 4, seed, ids=ids, shuffle_buffer=8
        )
        return next(iter(dataset)).numpy(), info

    patches, info = first_batch(0)
    assert patches.shape == (4, grid, grid, 8, 8, 3)
    assert info.num_classes == 10
    np.testing.assert_array_equal(patches, first_batch(0)[0])
    assert not np.array_equal(patches, first_batch(1)[0])
    # A subset of one image: every element of the batch comes from it.
    single, _ = first_batch(0, ids=[3])
    assert single.shape[0] == 4


def test_cpc_model_is_built_for_the_patch_grid():
    config = parse(f"--flagfile={ROOT}/flags/demo.cfg", *FAST)
    model = builders.build_cpc_model(config)
    grid, size = config.data.grid_size, config.data.patch_size
    assert model.built
    latents = model.encoder(np.zeros((2, grid, grid, size, size, 3), "float32"))
    # The mean-pooled latent grid, FAST's 8-wide encoder output.
    assert tuple(latents.shape) == (2, grid, grid, 8)
