"""The encoders shipped in `results/` still load (their `.keras` files
name the classes' old modules; the registered names `cpc_tf>...` find
them in `cpc_tf.models`)."""

import json
import os

import numpy as np
import pytest
from helpers import ROOT

import cpc_tf

SHIPPED = [
    os.path.join(ROOT, "results", "report_cifar10", "pretrain"),
]


@pytest.mark.parametrize("run_dir", SHIPPED)
def test_a_shipped_encoder_loads_and_encodes(run_dir):
    with open(os.path.join(run_dir, "config.json")) as f:
        data = json.load(f)["data"]
    crop, patch, stride = (
        data["crop_size"],
        data["patch_size"],
        data["patch_stride"],
    )
    grid = (crop - patch) // stride + 1
    rng = np.random.default_rng(0)
    patches = rng.uniform(-1, 1, (2, grid, grid, patch, patch, 3))
    encoder = cpc_tf.load_encoder(run_dir, kind="patches")
    latents = np.asarray(encoder(patches.astype("float32")))
    assert latents.shape[:3] == (2, grid, grid) and np.isfinite(latents).all()
    image = cpc_tf.load_encoder(run_dir, kind="image")
    images = rng.uniform(-1, 1, (2, crop, crop, 3)).astype("float32")
    assert np.asarray(image(images)).shape == (2, latents.shape[-1])
