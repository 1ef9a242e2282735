"""`python -m cpc_tf.supervised`: appendix C.1, with and without search."""

import dataclasses
import json
import os
import signal

import keras
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from absl import flags as absl_flags
from helpers import ROOT, TINY_ENCODER, check_results, tiny_run

from cpc_tf import evaluation
from cpc_tf.config import DataConfig, ModelConfig, OptimConfig
from cpc_tf.evaluation import training
from cpc_tf.protocols import supervised
from cpc_tf.training import preemption


def supervised_config(model_dir, data, search=None, augment=True, **run):
    return evaluation.SupervisedConfig(
        data=data,
        model=ModelConfig(**TINY_ENCODER, norm="batch"),
        optim=OptimConfig(
            optimizer="sgd",
            learning_rate=0.1,
            beta1=0.9,
            weight_decay=1e-4,
            clip_global_norm=0,
            ema_decay=0,
        ),
        run=tiny_run(model_dir, **run),
        options=evaluation.SupervisedOptions(
            dropout=0.2, eval_batch_size=500, augment=augment
        ),
        search=search or evaluation.SearchConfig(),
    )


def whole_images(**values):
    geometry = dict(image_size=16, crop_size=16, patch_size=16, patch_stride=16)
    return DataConfig(**geometry, shuffle_buffer=64, **values)


def test_model_is_a_batch_norm_resnet_with_dropout_before_the_linear_layer():
    config = supervised_config("unused", whole_images())
    model, backbone, head = supervised.build_model(config, 10)
    assert model.input_shape == (None, 16, 16, 3)
    assert model.output_shape == (None, 10)
    norms = [layer for layer in backbone.layers if "norm" in layer.name]
    assert norms and all(
        isinstance(layer, keras.layers.BatchNormalization) for layer in norms
    )
    assert [layer.name for layer in head.layers[1:]] == [
        "mean",
        "dropout",
        "logits",
    ]
    assert head.get_layer("dropout").rate == 0.2


@pytest.mark.slow
def test_supervised_on_tfds_mock_data(tmp_path):
    model_dir = str(tmp_path / "supervised")
    data = whole_images(
        train_data="tfds:mnist:train", eval_data="tfds:mnist:test"
    )
    with tfds.testing.mock_data(num_examples=24):
        supervised.run(supervised_config(model_dir, data), verbose=False)
    results = check_results(model_dir, "supervised", test_examples=24)
    assert results["validation"] is None and results["steps"] == 3
    assert results["labelled_examples"] is None  # TFDS mock: size unknown
    model = keras.saving.load_model(results["classifier"])
    assert model.input_shape == (None, 16, 16, 3)


@pytest.mark.slow
def test_search_tests_the_best_validation_trial_once(tmp_path):
    model_dir = str(tmp_path / "search")
    search = evaluation.SearchConfig(
        search=True, search_trials=2, search_batch_sizes=(4, 8)
    )
    data = whole_images(label_fraction=1, holdout=100)
    supervised.run(
        supervised_config(
            model_dir, data, search=search, augment=False, steps=2
        ),
        verbose=False,
    )
    results = check_results(model_dir, "supervised")
    trials = results["search"]["trials"]
    assert len(trials) == 2
    best = max(trials, key=lambda t: t["val_top1"])
    assert results["search"]["best_trial"] == best["trial_id"]
    assert results["search"]["best_values"] == best["values"]
    for trial in trials:
        trial_dir = os.path.join(
            model_dir, "search", f"trial_{trial['trial_id']}"
        )
        with open(os.path.join(trial_dir, evaluation.RESULTS_FILE)) as f:
            trial_results = json.load(f)
        assert trial_results["test"] is None  # only the best is tested
        assert trial_results["validation"]["top1"] == trial["val_top1"]
        assert trial_results["validation"]["examples"] == 100
        assert (
            trial_results["config"]["run"]["batch_size"]
            == (trial["values"]["batch_per_worker"])
        )
    # The search's label subset is shared by every trial.
    assert results["labelled_examples"] == 40
    assert sorted(os.listdir(model_dir)) == [
        "classifier.keras",
        "holdout_100_seed0.txt",
        "results.json",
        "search",
        "train_1pct_holdout100_validation0_hseed0_seed0.txt",
    ]


def test_flags_default_to_appendix_c1_and_reject_patch_flags():
    values = absl_flags.FlagValues()
    supervised.define_flags(values)
    values(["supervised", f"--flagfile={ROOT}/flags/supervised_demo.cfg"])
    config = supervised.parse_config(values)
    assert config.model.norm == "batch"
    assert config.optim.optimizer == "sgd"
    assert config.optim.weight_decay_type == "l2"
    assert config.run.epochs == 8 and config.run.min_steps == 1800
    assert config.data.crop_min_area == 0.5 and not config.data.random_flip
    assert config.data.crop_size == config.data.image_size
    values = absl_flags.FlagValues()
    supervised.define_flags(values)
    values(["supervised"])
    config = supervised.parse_config(values)
    assert (config.model.encoder_depth, config.data.image_size) == (50, 224)
    assert config.optim.learning_rate == 0.1
    for args, flag in [
        (["--patch_size=8"], "--patch_size"),
        (["--search", "--holdout=0"], "--search"),
    ]:
        values = absl_flags.FlagValues()
        supervised.define_flags(values)
        values(["supervised", *args])
        with pytest.raises(evaluation.FlagError, match=flag):
            supervised.parse_config(values)


@pytest.mark.slow
def test_sigterm_leaves_no_results_and_the_same_call_resumes(
    tmp_path, monkeypatch
):
    # SIGTERM during validation at step 2 of 6: the trainer stops after one
    # more step (all workers together) with a checkpoint, and tests nothing.
    model_dir = str(tmp_path / "preempted")
    data = whole_images(
        train_data="mnist5k:train",
        eval_data="holdout",
        holdout=40,
        validation=16,
    )
    config = supervised_config(model_dir, data, steps=6, checkpoint_every=100)
    config = dataclasses.replace(
        config,
        options=dataclasses.replace(config.options, eval_every=2),
    )
    evaluated = []
    validate = training.BestCheckpoint.__call__

    def validate_then_sigterm(self, step):
        evaluated.append(step)
        scores = validate(self, step)
        if step == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return scores

    monkeypatch.setattr(
        training.BestCheckpoint, "__call__", validate_then_sigterm
    )
    with pytest.raises(preemption.Preempted, match="at step 3"):
        supervised.run(config, verbose=False)
    assert not os.path.exists(os.path.join(model_dir, evaluation.RESULTS_FILE))
    checkpoint = tf.train.latest_checkpoint(
        os.path.join(model_dir, "checkpoints")
    )
    assert checkpoint and checkpoint.endswith("-3")
    results = supervised.run(config, verbose=False)
    # Resumed at step 3: validation at 4 and 6 only, all 6 steps counted.
    assert evaluated == [2, 4, 6]
    assert results["steps"] == 6
    check_results(model_dir, "supervised", test_examples=40)
