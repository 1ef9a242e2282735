"""`python -m cpc_tf.linear_eval`: appendix B end to end on mnist5k."""

import dataclasses
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from absl import flags as absl_flags
from helpers import (
    ROOT,
    TWO_CPUS,
    check_results,
    make_pretrained_dir,
    tiny_run,
    weights_equal,
)

from cpc_tf import evaluation
from cpc_tf.config import DataConfig, OptimConfig
from cpc_tf.protocols import linear as linear_eval
from cpc_tf.rundir import artifacts
from cpc_tf.training import distribute


def linear_config(
    pretrained_dir,
    model_dir,
    random_init=False,
    augment=True,
    probe="augmented",
    probe_features="encoder",
    probe_views=0,
    **run,
):
    return evaluation.LinearEvalConfig(
        data=DataConfig(label_fraction=10, holdout=200, shuffle_buffer=64),
        optim=OptimConfig(learning_rate=5e-3, clip_global_norm=0, ema_decay=0),
        run=tiny_run(model_dir, **run),
        options=evaluation.ProbeOptions(
            pretrained_dir=pretrained_dir,
            random_init=random_init,
            eval_batch_size=500,
            augment=augment,
            probe=probe,
            probe_features=probe_features,
            probe_views=probe_views,
            probe_l2=(1e-4, 1e-2),
            probe_epochs=30,
            probe_patience=5,
            probe_min_steps=0,
        ),
    )


def classifier_encoder_weights(model_dir):
    model = keras.saving.load_model(
        os.path.join(model_dir, evaluation.CLASSIFIER_FILE)
    )
    return model, model.get_layer("cpc_encoder").get_weights()


@pytest.mark.slow
def test_linear_eval_two_replicas_frozen_encoder_and_results(tmp_path):
    pretrained = make_pretrained_dir(tmp_path / "pretrained")
    saved = keras.saving.load_model(
        os.path.join(pretrained, artifacts.ENCODER_FILE)
    ).get_weights()
    strategy = distribute.make_strategy("mirrored", devices=TWO_CPUS)
    model_dir = str(tmp_path / "linear")
    linear_eval.run(
        linear_config(pretrained, model_dir), strategy=strategy, verbose=False
    )
    results = check_results(model_dir, "linear")
    assert results["validation"]["examples"] == 200
    assert results["labelled_examples"] == 380  # 10% of 4,000 - 200
    assert results["steps"] == 3 and not results["random_init"]
    # Model selection: the best of the validation evaluations is tested.
    history = results["train"]["history"]["val_top1"]
    assert results["selected"]["val_top1"] == max(v for _, v in history)
    assert results["test_set"] == dict(source="mnist5k:test", examples=1000)
    assert results["pretrained_dir"] == os.path.abspath(pretrained)
    assert results["config"]["data"]["patch_size"] == 4  # pretraining's
    for path in results["subset_files"].values():
        assert os.path.isfile(path)
    model, encoder_weights = classifier_encoder_weights(model_dir)
    assert model.input_shape == (None, 3, 3, 4, 4, 3)
    assert model.output_shape == (None, 10)
    assert weights_equal(encoder_weights, saved)  # frozen: still pretrained
    patches = np.random.default_rng(0).uniform(-1, 1, (2, 3, 3, 4, 4, 3))
    assert np.all(np.isfinite(model.predict(patches, verbose=0)))

    random_dir = str(tmp_path / "random")
    linear_eval.run(
        linear_config(
            pretrained,
            random_dir,
            random_init=True,
            augment=False,
            steps=1,
            mixed_precision=True,
        ),
        verbose=False,
    )
    results = check_results(random_dir, "linear")
    assert (
        results["random_init"] and results["config"]["run"]["mixed_precision"]
    )
    assert keras.mixed_precision.dtype_policy().name == "float32"  # restored
    _, random_weights = classifier_encoder_weights(random_dir)
    assert not weights_equal(random_weights, saved)


def test_flagfile_gives_appendix_b_settings():
    values = absl_flags.FlagValues()
    linear_eval.define_flags(values)
    values(["linear_eval", f"--flagfile={ROOT}/flags/linear_demo.cfg"])
    config, explicit = linear_eval.parse_config(values)
    assert config.optim.optimizer == "adam"
    assert config.optim.learning_rate == 5e-4
    assert config.options.pretrained_dir == "runs/demo"
    assert config.options.probe == "cached"
    assert explicit == []
    values = absl_flags.FlagValues()
    linear_eval.define_flags(values)
    values(["linear_eval", "--pretrained_dir=x"])
    config, _ = linear_eval.parse_config(values)
    assert (config.run.batch_size, config.optim.ema_decay) == (512, 0.0)
    with open(f"{ROOT}/flags/linear_demo.cfg") as f:
        assert f.readline().startswith("# ")


def test_missing_encoder_fails_before_compute(tmp_path):
    pretrained = make_pretrained_dir(tmp_path / "pretrained")
    os.remove(os.path.join(pretrained, artifacts.ENCODER_FILE))
    model_dir = tmp_path / "linear"
    process = subprocess.run(
        [
            sys.executable,
            "-m",
            "cpc_tf.linear_eval",
            f"--pretrained_dir={pretrained}",
            f"--model_dir={model_dir}",
        ],
        cwd=ROOT,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert process.returncode != 0
    assert "--pretrained_dir" in process.stderr + process.stdout
    assert "encoder.keras" in process.stderr + process.stdout
    assert not model_dir.exists()


@pytest.mark.parametrize("probe", ["cached", "knn"])
def test_cached_and_knn_probes(tmp_path, probe):
    pretrained = make_pretrained_dir(tmp_path / "pretrained")
    model_dir = str(tmp_path / probe)
    results = linear_eval.run(
        linear_config(pretrained, model_dir, probe=probe, probe_views=0),
        verbose=False,
    )
    assert results["probe"]["kind"] == probe
    assert results["test"]["examples"] == 1000
    assert 0.1 < results["top1"] <= 1.0
    if probe == "knn":
        assert results["probe"]["memory"] == 380
        return
    assert results["probe"]["l2"] in (1e-4, 1e-2)
    assert results["validation"]["top1"] == results["probe"]["val_top1"]
    model = keras.saving.load_model(results["classifier"])
    assert model.input_shape == (None, 3, 3, 4, 4, 3)
    patches = np.random.default_rng(0).uniform(-1, 1, (2, 3, 3, 4, 4, 3))
    assert model.predict(patches, verbose=0).shape == (2, 10)


def test_cached_probe_views_and_pixels(tmp_path):
    pretrained = make_pretrained_dir(tmp_path / "pretrained")
    config = linear_config(
        pretrained, str(tmp_path / "views"), probe="cached", batch_size=20
    )
    config = dataclasses.replace(
        config,
        options=dataclasses.replace(config.options, probe_views=2),
    )
    results = linear_eval.run(config, verbose=False)
    # The plain pass plus two augmented views of every labelled image.
    assert results["probe"]["train_rows"] == 3 * 380
    pixels = linear_eval.run(
        linear_config(
            pretrained,
            str(tmp_path / "pixels"),
            probe="cached",
            probe_features="pixels",
        ),
        verbose=False,
    )
    assert pixels["probe_features"] == "pixels" and pixels["top1"] > 0.5
