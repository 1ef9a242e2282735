"""The shared trainer: clip after the sum, global negatives, EMA, NaN."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from cpc_tf import distribute, encoders, trainer
from cpc_tf.model import build_cpc
from cpc_tf.tasks import CPCTask

TWO_CPUS = ["/cpu:0", "/cpu:1"]


class RegressionTask(trainer.Task):
    """Mean squared error of a Dense layer: a per-example loss."""

    def __init__(self, optimizer):
        inputs = keras.Input((3,))
        self.model = keras.Model(inputs, keras.layers.Dense(2)(inputs))
        self.optimizer = optimizer

    def compute(self, batch, training):
        x, y = batch
        loss = tf.reduce_mean(tf.square(self.model(x) - y))
        return loss, {}

    def optimizer_groups(self):
        return [
            trainer.OptimizerGroup(
                self.optimizer, self.model.trainable_variables
            )
        ]


def run_steps(strategy, make_task, dataset, tmp_path, steps=1, **options):
    keras.utils.set_random_seed(0)
    with strategy.scope():
        task = make_task()
    initial = [v.numpy() for v in task.model.trainable_variables]
    loop = trainer.Trainer(
        strategy,
        task,
        trainer.TrainerOptions(
            model_dir=str(tmp_path), steps=steps, verbose=False, **options
        ),
    )
    per_replica = 8 // strategy.num_replicas_in_sync
    result = loop.fit(lambda ctx: dataset.batch(per_replica).repeat())
    final = [v.numpy() for v in task.model.trainable_variables]
    return initial, final, result, loop


def regression_data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 3)).astype("float32")
    y = 10.0 * rng.normal(size=(8, 2)).astype("float32")
    return tf.data.Dataset.from_tensor_slices((x, y))


def test_clip_after_sum_two_replicas_equals_one_device(tmp_path):
    make = lambda: RegressionTask(keras.optimizers.SGD(1.0))  # noqa: E731
    results = [
        run_steps(
            strategy,
            make,
            regression_data(),
            tmp_path / name,
            clip_global_norm=0.01,
        )
        for name, strategy in [
            ("one", tf.distribute.get_strategy()),
            ("two", distribute.make_strategy("mirrored", devices=TWO_CPUS)),
        ]
    ]
    (init1, final1, result1, _), (init2, final2, result2, _) = results
    for a, b in zip(init1, init2):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(final1, final2):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    # SGD with lr 1 moves the weights by exactly the clipped norm.
    moved = np.sqrt(sum(np.sum((f - i) ** 2) for f, i in zip(final2, init2)))
    np.testing.assert_allclose(moved, 0.01, rtol=1e-4)
    assert result2["metrics"] == {} and result1["first_loss"] > 1.0


def test_keras_global_clipnorm_alone_clips_per_replica():
    # What the trainer works around: Keras clips before the replica sum.
    strategy = tf.distribute.MirroredStrategy(TWO_CPUS)
    x, y = next(iter(regression_data().batch(8)))
    with strategy.scope():
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
        model.compile(keras.optimizers.SGD(1.0, global_clipnorm=0.01), "mse")
    before = [v.numpy() for v in model.trainable_variables]
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    after = [v.numpy() for v in model.trainable_variables]
    moved = np.sqrt(sum(np.sum((a - b) ** 2) for a, b in zip(after, before)))
    # Not the clipped norm: the per-replica clips do not add up to it.
    assert abs(moved - 0.01) > 5e-4


def tiny_cpc_task(negatives, optimizer=None):
    backbone = encoders.resnet_v2(
        blocks=(1,),
        widths=(4,),
        output_widths=(8,),
        stem_width=4,
        stem_kernel=3,
        stem_stride=2,
        stem_pool=False,
    )
    model = build_cpc(
        backbone,
        (8, 8, 3),
        (4, 4),
        directions=("down", "right"),
        steps_to_ignore=1,
        steps_to_predict=2,
        context_blocks=1,
        context_hidden=8,
        target_dim=8,
    )
    return CPCTask(model, optimizer or keras.optimizers.SGD(0.5), negatives)


def patch_data():
    rng = np.random.default_rng(1)
    patches = rng.uniform(-1, 1, size=(8, 4, 4, 8, 8, 3)).astype("float32")
    return tf.data.Dataset.from_tensor_slices(patches)


def test_global_negatives_two_replicas_equal_one_device(tmp_path):
    one = run_steps(
        tf.distribute.get_strategy(),
        lambda: tiny_cpc_task("local"),
        patch_data(),
        tmp_path / "one",
        steps=2,
        clip_global_norm=0.5,
    )
    two = run_steps(
        distribute.make_strategy("mirrored", devices=TWO_CPUS),
        lambda: tiny_cpc_task("global"),
        patch_data(),
        tmp_path / "two",
        steps=2,
        clip_global_norm=0.5,
    )
    np.testing.assert_allclose(
        two[2]["first_loss"], one[2]["first_loss"], rtol=1e-5
    )
    for a, b in zip(one[1], two[1]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    local = run_steps(
        distribute.make_strategy("mirrored", devices=TWO_CPUS),
        lambda: tiny_cpc_task("local"),
        patch_data(),
        tmp_path / "local",
        steps=1,
    )
    # Local negatives on 2 replicas see half the candidates: another loss.
    assert abs(local[2]["first_loss"] - one[2]["first_loss"]) > 0.1


def test_polyak_average_warm_up():
    variable = tf.Variable([0.0, 0.0])
    average = trainer.PolyakAverage([variable], decay=0.9999)
    expected = np.zeros(2)
    for n in range(5):
        variable.assign([float(n + 1), 2.0 * (n + 1)])
        decay = min(0.9999, (1 + n) / (10 + n))
        np.testing.assert_allclose(average.current_decay(), decay, rtol=1e-6)
        average.update()
        expected = decay * expected + (1 - decay) * variable.numpy()
    np.testing.assert_allclose(average.averages[0].numpy(), expected, 1e-5)
    with average.swapped():
        np.testing.assert_allclose(variable.numpy(), expected, 1e-5)
    np.testing.assert_array_equal(variable.numpy(), [5.0, 10.0])


def test_resume_continues_from_checkpoint(tmp_path):
    make = lambda: RegressionTask(keras.optimizers.Adam(0.1))  # noqa: E731
    strategy = tf.distribute.get_strategy()
    _, _, first, _ = run_steps(
        strategy, make, regression_data(), tmp_path, steps=3
    )
    assert first["steps"] == 3
    _, _, second, loop = run_steps(
        strategy, make, regression_data(), tmp_path, steps=5
    )
    assert second["start_step"] == 3 and second["steps"] == 5
    assert int(loop.step.numpy()) == 5


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    make = lambda: RegressionTask(keras.optimizers.SGD(0.01))  # noqa: E731
    strategy = tf.distribute.get_strategy()
    _, good, _, _ = run_steps(
        strategy,
        make,
        regression_data(),
        tmp_path,
        steps=2,
        ema_decay=0.9,
    )
    x = np.full((8, 3), np.nan, "float32")
    bad = tf.data.Dataset.from_tensor_slices((x, np.zeros((8, 2), "f4")))
    with pytest.raises(trainer.NonFiniteLossError, match="untouched"):
        run_steps(strategy, make, bad, tmp_path, steps=4, ema_decay=0.9)
    with strategy.scope():
        task = make()
    loop = trainer.Trainer(
        strategy,
        task,
        trainer.TrainerOptions(
            model_dir=str(tmp_path), steps=4, verbose=False, ema_decay=0.9
        ),
    )
    assert loop.restore() == 2
    for restored, expected in zip(task.model.trainable_variables, good):
        np.testing.assert_array_equal(restored.numpy(), expected)


def test_jit_compiled_step_matches_the_plain_step(tmp_path):
    make = lambda: RegressionTask(keras.optimizers.Adam(0.1))  # noqa: E731
    strategy = tf.distribute.get_strategy()
    plain = run_steps(strategy, make, regression_data(), tmp_path / "a", 3)
    jit = run_steps(
        strategy, make, regression_data(), tmp_path / "b", 3, jit_compile=True
    )
    for a, b in zip(plain[1], jit[1]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_learning_rate_schedules():
    from cpc_tf.config import OptimConfig
    from cpc_tf.optimizers import learning_rate_schedule, make_optimizer

    constant = make_optimizer(OptimConfig(), 100)
    assert float(constant.learning_rate) == pytest.approx(4e-4)
    assert constant.beta_1 == 0.8 and constant.global_clipnorm is None
    cosine = learning_rate_schedule(
        OptimConfig(lr_schedule="cosine", warmup_steps=10), 110
    )
    assert float(cosine(0)) == 0.0
    assert float(cosine(10)) == pytest.approx(4e-4)
    assert float(cosine(60)) == pytest.approx(2e-4, rel=1e-3)
    assert float(cosine(110)) == pytest.approx(0.0, abs=1e-9)
    warm = learning_rate_schedule(OptimConfig(warmup_steps=10), 110)
    assert float(warm(5)) == pytest.approx(2e-4)
    assert float(warm(100)) == pytest.approx(4e-4)


def test_images_per_second_counts_steps_not_checkpoints(tmp_path, monkeypatch):
    import time

    save = tf.train.CheckpointManager.save

    def slow_save(self, *args, **kwargs):
        time.sleep(0.3)
        return save(self, *args, **kwargs)

    monkeypatch.setattr(tf.train.CheckpointManager, "save", slow_save)
    make = lambda: RegressionTask(keras.optimizers.SGD(0.01))  # noqa: E731
    _, _, result, _ = run_steps(
        tf.distribute.get_strategy(),
        make,
        regression_data(),
        tmp_path,
        steps=5,
        checkpoint_every=1,
        images_per_step=8,
    )
    # Four timed steps of a Dense layer take milliseconds; five saves 1.5 s.
    assert result["seconds"] > 1.5
    assert result["images_per_s"] > 4 * 8 / 0.3
