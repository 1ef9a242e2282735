"""Shared evaluation pieces: heads, task, evaluation loop, splits, search."""

import contextlib
import dataclasses
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from absl import flags as absl_flags
from helpers import (
    TINY_ENCODER,
    TINY_GEOMETRY,
    TWO_CPUS,
    make_pretrained_dir,
    weights_equal,
)

from cpc_tf import evaluation
from cpc_tf.config import (
    DataConfig,
    ModelConfig,
    OptimConfig,
    RunConfig,
)
from cpc_tf.config import flags as cpc_flags
from cpc_tf.data import sources
from cpc_tf.models import encoders
from cpc_tf.rundir import artifacts, splits
from cpc_tf.training import distribute, trainer


def test_linear_head_has_no_scale_and_averages_per_position_logits():
    head = evaluation.linear_head((3, 3, 8), 5)
    norm = head.get_layer("norm")
    assert norm.gamma is None and norm.beta is not None
    # The 1x1 convolution makes per-position logits; the mean comes after.
    assert tuple(head.get_layer("logits").output.shape) == (None, 3, 3, 5)
    rng = np.random.default_rng(0)
    norm.moving_mean.assign(rng.normal(size=8))
    norm.moving_variance.assign(rng.uniform(0.5, 2, size=8))
    norm.beta.assign(rng.normal(size=8))
    features = rng.normal(size=(2, 3, 3, 8)).astype("float32")
    kernel, bias = head.get_layer("logits").get_weights()
    normed = (features - norm.moving_mean.numpy()) / np.sqrt(
        norm.moving_variance.numpy() + norm.epsilon
    ) + norm.beta.numpy()
    per_position = normed @ kernel + bias
    np.testing.assert_allclose(
        head(features, training=False),
        per_position.mean(axis=(1, 2)),
        rtol=1e-5,
        atol=1e-5,
    )


def test_classifier_head_pools_then_dropout_then_linear():
    head = evaluation.classifier_head((5, 5, 8), 3, dropout=0.4)
    names = [layer.name for layer in head.layers[1:]]
    assert names == ["mean", "dropout", "logits"]
    assert head.get_layer("dropout").rate == 0.4
    residual = evaluation.classifier_head(
        (5, 5, 8), 3, dropout=0.1, blocks=2, hidden=16, bottleneck=4
    )
    assert residual.get_layer("head_block2_add").output.shape[-1] == 16
    assert residual.get_layer("head_block1_conv2").output.shape[-1] == 4
    names = [layer.name for layer in residual.layers]
    assert names[-3:] == ["mean", "dropout", "logits"]
    assert residual(np.zeros((2, 5, 5, 8))).shape == (2, 3)


# -- the task with the shared trainer ------------------------------------------


def _batch_norm_encoder():
    """A patch encoder with batch normalization (whose statistics move in
    training mode, so a frozen encoder must run in inference mode)."""
    kwargs = ModelConfig(**TINY_ENCODER).backbone_kwargs()
    backbone = encoders.resnet_v2(**dict(kwargs, norm="batch"))
    inputs = keras.Input((3, 3, 4, 4, 3))
    return keras.Model(inputs, encoders.PatchEncoder(backbone)(inputs))


def _patch_data(count=16, classes=3):
    rng = np.random.default_rng(0)
    patches = rng.uniform(-1, 1, (count, 3, 3, 4, 4, 3)).astype("float32")
    labels = rng.integers(0, classes, count)
    return tf.data.Dataset.from_tensor_slices((patches, labels))


def test_frozen_encoder_stays_fixed_and_the_head_learns(tmp_path):
    keras.utils.set_random_seed(0)
    encoder = _batch_norm_encoder()
    head = evaluation.linear_head(encoder.output_shape[1:], 3)
    model = evaluation.classifier(encoder, head, (3, 3, 4, 4, 3))
    task = evaluation.ClassifierTask(
        model, encoder, head, keras.optimizers.Adam(0.1)
    )
    before = [w.copy() for w in encoder.get_weights()]  # incl. BN statistics
    head_before = [w.numpy() for w in head.trainable_weights]
    loop = trainer.Trainer(
        tf.distribute.get_strategy(),
        task,
        trainer.TrainerOptions(str(tmp_path), steps=3, verbose=False),
    )
    loop.fit(lambda ctx: _patch_data().batch(8).repeat())
    assert weights_equal(before, encoder.get_weights())
    assert not any(
        np.array_equal(a, b.numpy())
        for a, b in zip(head_before, head.trainable_weights)
    )
    assert len(model.trainable_variables) == len(head.trainable_variables)


def test_evaluate_counts_top1_top5_over_replicas_and_partial_batches():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(11, 7)).astype("float32")
    logits[0] = 0.0  # a tie: class 0 wins, so label 3 is wrong at top-1
    labels = rng.integers(0, 7, 11)
    labels[0] = 3
    rank = (-logits).argsort(axis=1, kind="stable")
    expected1 = np.mean(rank[:, 0] == labels)
    expected5 = np.mean([labels[i] in rank[i, :5] for i in range(11)])
    for strategy in (
        tf.distribute.get_strategy(),
        distribute.make_strategy("mirrored", devices=TWO_CPUS),
    ):
        with strategy.scope():
            inputs = keras.Input((7,))
            model = keras.Model(inputs, keras.layers.Identity()(inputs))

        def dataset_fn(ctx):
            ds = tf.data.Dataset.from_tensor_slices((logits, labels))
            ds = ds.shard(ctx.num_input_pipelines, ctx.input_pipeline_id)
            return ds.batch(ctx.get_per_replica_batch_size(4))

        metrics = evaluation.evaluate(strategy, model, dataset_fn)
        assert metrics["examples"] == 11
        assert metrics["top1"] == pytest.approx(expected1)
        assert metrics["top5"] == pytest.approx(expected5)


def test_evaluator_traces_once_and_reads_a_cached_set_once():
    """Repeated validation passes (model selection) reuse one traced step
    and one dataset: no retracing, a cached set is read once."""
    reads = []

    def record(x):
        reads.append(1)
        return x

    with tf.distribute.get_strategy().scope():
        inputs = keras.Input((3,))
        model = keras.Model(inputs, keras.layers.Dense(4)(inputs))

    def dataset_fn(ctx):
        ds = tf.data.Dataset.from_tensor_slices(
            (np.eye(3, dtype="float32")[[0, 1, 2, 0, 1]], [0, 1, 2, 3, 1])
        )
        ds = ds.map(
            lambda x, y: (tf.numpy_function(record, [x], tf.float32), y)
        )
        ds = ds.map(lambda x, y: (tf.ensure_shape(x, (3,)), y)).cache()
        return ds.batch(ctx.get_per_replica_batch_size(2))

    evaluator = evaluation.Evaluator(
        tf.distribute.get_strategy(), model, dataset_fn
    )
    first = evaluator()
    traces = evaluator.step.experimental_get_tracing_count()
    model.layers[-1].kernel.assign(model.layers[-1].kernel * 2.0)
    second = evaluator()
    assert evaluator.step.experimental_get_tracing_count() == traces
    assert len(reads) == 5
    assert first["examples"] == second["examples"] == 5
    assert first["loss"] != second["loss"]  # the new weights were used


# -- splits, pretrained directories, flags -------------------------------------


def test_read_pretrained_names_the_flag(tmp_path):
    with pytest.raises(evaluation.FlagError, match="--pretrained_dir"):
        evaluation.read_pretrained(str(tmp_path / "nope"), "x", False)
    path = make_pretrained_dir(tmp_path / "run")
    os.remove(os.path.join(path, artifacts.ENCODER_FILE))
    with pytest.raises(evaluation.FlagError, match="no encoder.keras"):
        evaluation.read_pretrained(path, artifacts.ENCODER_FILE, False)
    config = evaluation.read_pretrained(path, artifacts.ENCODER_FILE, True)
    assert config.data.grid_size == 3


def test_pretrained_encoder_weights_or_random_init(tmp_path):
    path = make_pretrained_dir(tmp_path)
    config = evaluation.read_pretrained(path, artifacts.ENCODER_FILE, False)
    saved = keras.saving.load_model(
        os.path.join(path, artifacts.ENCODER_FILE)
    ).get_weights()
    keras.utils.set_random_seed(0)
    loaded = evaluation.load_patch_encoder(path, config, random_init=False)
    assert weights_equal(loaded.get_weights(), saved)
    random = evaluation.load_patch_encoder(path, config, random_init=True)
    assert [w.shape for w in random.get_weights()] == [w.shape for w in saved]
    assert not weights_equal(random.get_weights(), saved)
    backbone = evaluation.load_backbone(path, config, random_init=False)
    assert backbone.compute_output_shape((None, 16, 16, 3)) == (
        None,
        16,
        16,
        8,
    )


def test_geometry_and_config_errors_name_the_flag():
    pretrain_data = DataConfig(**TINY_GEOMETRY)
    data = evaluation.pretrained_geometry(DataConfig(), pretrain_data)
    assert data.grid_size == 3 and data.image_size == 16
    with pytest.raises(evaluation.FlagError, match="--patch_size"):
        evaluation.pretrained_geometry(
            DataConfig(patch_size=20, patch_stride=20, crop_size=260),
            pretrain_data,
            explicit=("patch_size",),
        )
    with pytest.raises(ValueError, match="--search"):
        evaluation.SupervisedConfig(search=evaluation.SearchConfig(search=True))
    with pytest.raises(ValueError, match="--dropout"):
        evaluation.SupervisedOptions(dropout=1.0)
    with pytest.raises(ValueError, match="--steps"):
        evaluation.FinetuneConfig(run=RunConfig(steps=5))
    for config in (
        evaluation.SupervisedConfig,
        evaluation.FinetuneConfig,
        evaluation.LinearEvalConfig,
    ):
        options = config().options
        with pytest.raises(ValueError, match="--patience: needs validation"):
            config(options=dataclasses.replace(options, patience=3))
    with pytest.raises(ValueError, match="--patience"):
        evaluation.SupervisedOptions(patience=-1)
    with pytest.raises(ValueError, match="--search_weight_decay"):
        evaluation.SearchConfig(search_weight_decay=(0.0, 1e-2))


def test_whole_image_protocols_reject_patch_flags():
    values = absl_flags.FlagValues()
    cpc_flags.define_config_flags(DataConfig, flag_values=values)
    values(["prog", "--image_size=20"])
    data = cpc_flags.whole_image_config(values, "supervised", DataConfig)
    assert data.crop_size == data.patch_size == data.patch_stride == 20
    values = absl_flags.FlagValues()
    cpc_flags.define_config_flags(DataConfig, flag_values=values)
    values(["prog", "--crop_size=20"])
    with pytest.raises(evaluation.FlagError, match="--crop_size"):
        cpc_flags.whole_image_config(values, "supervised", DataConfig)


# -- the search ----------------------------------------------------------------


def test_search_picks_the_trial_with_the_best_validation_accuracy(tmp_path):
    search = evaluation.SearchConfig(search=True, search_trials=6)
    scores = {}

    def trial_fn(values, trial_dir):
        # A stubbed objective peaking at lr 0.1 and weight decay 1e-3.
        score = -abs(values["learning_rate"] - 0.1) - abs(
            np.log10(values["weight_decay"]) + 3
        )
        scores[trial_dir] = (score, dict(values))
        return score

    tuner = evaluation.run_search(search, trial_fn, str(tmp_path), seed=0)
    trials = list(tuner.oracle.trials.values())
    assert len(trials) == len(scores) == 6
    for values in (v for _, v in scores.values()):
        assert values["learning_rate"] in (0.05, 0.1, 0.2)
        assert 1e-5 <= values["weight_decay"] <= 1e-2
        assert 0.0 <= values["dropout"] <= 0.9
        assert values["batch_per_worker"] in (16, 32)
    best = tuner.oracle.get_best_trials(1)[0]
    best_dir = tuner.get_trial_dir(best.trial_id)
    assert scores[best_dir][0] == max(s for s, _ in scores.values())
    assert best.score == max(t.score for t in trials)
    assert best.hyperparameters.values == scores[best_dir][1]


def test_trial_config_uses_per_worker_batch_and_shared_subsets():
    config = evaluation.SupervisedConfig(
        data=DataConfig(holdout=100),
        run=RunConfig(model_dir="runs/x"),
        search=evaluation.SearchConfig(search=True),
    )
    values = dict(
        learning_rate=0.2, weight_decay=1e-4, dropout=0.3, batch_per_worker=16
    )
    trial = evaluation.with_hyperparameters(config, values, 2, "runs/x/t1")
    assert trial.run.batch_size == 32 and trial.run.model_dir == "runs/x/t1"
    assert trial.optim.learning_rate == 0.2
    assert trial.optim.weight_decay == 1e-4
    assert trial.options.dropout == 0.3
    assert trial.data.subset_dir == "runs/x"
    assert not trial.search.search


def test_eval_data_holdout_tests_on_the_held_out_images(tmp_path):
    data = DataConfig(
        train_data="mnist5k:train",
        eval_data="holdout",
        holdout=50,
        validation=30,
        image_size=32,
        crop_size=28,
        patch_size=8,
        patch_stride=4,
    )
    split = splits.label_split(data, 0, str(tmp_path))
    assert evaluation.num_classes(data) == 10
    inputs = evaluation.Inputs(data, patches=True, augment=False)
    labels = sources.source_labels("mnist5k:train")
    for make, ids in (
        (evaluation.test_fn, split.test_ids),
        (evaluation.validation_fn, split.val_ids),
    ):
        dataset = make(inputs, data, split, 25)(tf.distribute.InputContext())
        seen = np.concatenate([y.numpy() for _, y in dataset])
        np.testing.assert_array_equal(np.sort(seen), np.sort(labels[ids]))
    assert len(split.test_ids) == 50 and len(split.val_ids) == 30
    with pytest.raises(ValueError, match="--eval_data"):
        DataConfig(eval_data="holdout")


# -- weight decay and model selection -----------------------------------------


def test_l2_penalty_spares_normalization_and_biases():
    from cpc_tf.training.optimizers import l2_strength, make_optimizer

    keras.utils.set_random_seed(0)
    backbone = encoders.resnet_v2(
        **dict(ModelConfig(**TINY_ENCODER).backbone_kwargs(), norm="batch")
    )
    head = evaluation.classifier_head((16, 16, 8), 3, blocks=1, hidden=8)
    variables = backbone.trainable_variables + head.trainable_variables
    kernels = evaluation.decayed(variables)
    assert kernels and all(v.name == "kernel" for v in kernels)
    others = {v.name for v in variables} - {"kernel"}
    assert {"gamma", "beta", "bias"} <= others  # all left out
    expected = 0.5 * 1e-3 * sum(np.sum(v.numpy() ** 2) for v in kernels)
    np.testing.assert_allclose(
        evaluation.l2_penalty(variables, 1e-3).numpy(), expected, rtol=1e-5
    )
    assert l2_strength(OptimConfig(weight_decay=1e-3)) == 1e-3
    decoupled = OptimConfig(weight_decay=1e-3, weight_decay_type="decoupled")
    assert l2_strength(decoupled) == 0.0
    optimizer = make_optimizer(decoupled, 10)
    optimizer.build(variables)
    assert all(optimizer._use_weight_decay(v) for v in kernels)
    assert not any(
        optimizer._use_weight_decay(v) for v in variables if v.name != "kernel"
    )


def test_classifier_task_adds_the_penalty_of_its_own_group():
    keras.utils.set_random_seed(0)
    encoder = _batch_norm_encoder()
    head = evaluation.linear_head(encoder.output_shape[1:], 3)
    model = evaluation.classifier(encoder, head, (3, 3, 4, 4, 3))
    batch = next(iter(_patch_data().batch(8)))
    plain = evaluation.ClassifierTask(
        model, encoder, head, keras.optimizers.SGD(0.1)
    )
    decayed = evaluation.ClassifierTask(
        model, encoder, head, keras.optimizers.SGD(0.1), l2=0.5
    )
    loss, metrics = plain.compute(batch, training=False)
    penalised, _ = decayed.compute(batch, training=False)
    kernel = head.get_layer("logits").kernel.numpy()
    np.testing.assert_allclose(
        penalised - loss, 0.25 * np.sum(kernel**2), rtol=1e-5
    )
    assert float(metrics["cross_entropy"]) == pytest.approx(float(loss))


def test_model_selection_keeps_the_best_evaluation(tmp_path):
    # Validation accuracy rises, then falls: the best weights come back.
    keras.utils.set_random_seed(0)
    inputs = keras.Input((7,))
    layer = keras.layers.Dense(7, use_bias=False)
    model = keras.Model(inputs, layer(inputs))
    labels = np.arange(7) % 7
    features = np.eye(7, dtype="float32")

    def dataset_fn(ctx):
        return tf.data.Dataset.from_tensor_slices((features, labels)).batch(7)

    class Loop:
        strategy = tf.distribute.get_strategy()
        write_dir = str(tmp_path)

        def evaluation_weights(self, use_ema):
            return contextlib.nullcontext()

        def is_chief(self):
            return True

    selection = evaluation.BestCheckpoint(
        Loop(),
        model,
        dataset_fn,
        str(tmp_path),
        use_ema=False,
        patience=2,
        interval=10,
    )
    scores = {}
    for step, correct in ((10, 3), (20, 6), (30, 2)):
        kernel = np.zeros((7, 7), "float32")
        for i in range(7):
            kernel[i, i if i < correct else (i + 1) % 7] = 1.0
        layer.kernel.assign(kernel)
        scores[step] = selection(step)["val_top1"]
        if correct == 6:
            best = kernel.copy()
        # Early stopping: two evaluations after the best, not one.
        assert not selection.exhausted(step)
    assert selection.exhausted(40)
    assert scores[20] == max(scores.values())
    assert selection.record()["step"] == 20
    assert selection.restore()
    np.testing.assert_array_equal(layer.kernel.numpy(), best)
    # A new run in the same directory resumes with the record.
    again = evaluation.BestCheckpoint(
        Loop(), model, dataset_fn, str(tmp_path), use_ema=False
    )
    assert again.record()["val_top1"] == pytest.approx(6 / 7)
    assert not again.exhausted(1000)  # no patience: never
