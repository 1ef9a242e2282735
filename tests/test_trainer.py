"""The shared trainer: one all-reduce, clip after the sum, global
negatives, EMA in the step, steps per loop, float16, preemption, NaN."""

import collections
import json
import os
import signal
import time

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import (
    TWO_CPUS,
    RegressionTask,
    regression_data,
    run_steps,
    signalling_batches,
)

from cpc_tf.training import distribute, preemption, saving, trainer


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
    strategy = distribute.make_strategy("mirrored", devices=TWO_CPUS)
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


def patch_data():
    rng = np.random.default_rng(1)
    patches = rng.uniform(-1, 1, size=(8, 4, 4, 8, 8, 3)).astype("float32")
    return tf.data.Dataset.from_tensor_slices(patches)


@pytest.fixture(scope="module")
def one_device_cpc(tmp_path_factory):
    """Two steps of the tiny CPC task on one device (the reference)."""
    from helpers import make_tiny_cpc

    from cpc_tf.training.tasks import CPCTask

    return run_steps(
        tf.distribute.get_strategy(),
        lambda: CPCTask(make_tiny_cpc(), keras.optimizers.SGD(0.5)),
        patch_data(),
        tmp_path_factory.mktemp("one"),
        steps=2,
        clip_global_norm=0.5,
        ema_decay=0.9,
    )


@pytest.mark.parametrize("jit_compile", [False, True])
def test_global_negatives_two_replicas_equal_one_device(
    tmp_path, two_replicas, tiny_cpc_task, one_device_cpc, jit_compile
):
    # Under --jit_compile the pieces around the gather are XLA-compiled
    # with the replica id a tensor (static shapes only, as TPUs need).
    one = one_device_cpc
    two = run_steps(
        two_replicas,
        lambda: tiny_cpc_task("global"),
        patch_data(),
        tmp_path / "two",
        steps=2,
        clip_global_norm=0.5,
        ema_decay=0.9,
        jit_compile=jit_compile,
    )
    np.testing.assert_allclose(
        two[2]["first_loss"], one[2]["first_loss"], rtol=1e-5
    )
    for a, b in zip(one[1], two[1]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    # The Polyak average, updated inside the replicated step, too.
    for a, b in zip(one[3].ema.averages, two[3].ema.averages):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-5)
    if jit_compile:
        return
    local = run_steps(
        two_replicas,
        lambda: tiny_cpc_task("local"),
        patch_data(),
        tmp_path / "local",
        steps=1,
    )
    # Local negatives on 2 replicas see half the candidates: another loss.
    assert abs(local[2]["first_loss"] - one[2]["first_loss"]) > 0.1


def collective_ops(concrete_function):
    """Counts the all-reduce ops of a traced function's top-level graph
    (the first step of a loop; the while body holds the others)."""
    names = ("CollectiveReduce", "AllReduce", "NcclAllReduce")
    return collections.Counter(
        node.op
        for node in concrete_function.graph.as_graph_def().node
        if node.op.startswith(names)
    )


def step_collectives(strategy, make_task, data, model_dir, **options):
    """All-reduce ops of the first traced step of a 2-replica trainer."""
    _, _, _, loop = run_steps(
        strategy, make_task, data, model_dir, clip_global_norm=0.01, **options
    )
    dataset = strategy.distribute_datasets_from_function(
        lambda ctx: data.batch(4).repeat()
    )
    traced = loop._train_loop.get_concrete_function(
        iter(dataset), tf.constant(1, tf.int64)
    )
    return sum(collective_ops(traced).values())


@pytest.mark.parametrize("kind", ["regression", "cpc_global", "cpc_micro"])
def test_one_all_reduce_per_step(
    tmp_path, two_replicas, tiny_cpc_task, monkeypatch, kind
):
    if kind == "regression":
        make = lambda: RegressionTask(keras.optimizers.Adam(0.1))  # noqa: E731
        data = regression_data()
    else:
        # Micro-batches: the same collectives (the gather runs once, on
        # the whole replica batch's latents).
        microbatches = 2 if kind == "cpc_micro" else 1
        make = lambda: tiny_cpc_task("global", microbatches=microbatches)  # noqa: E731
        data = patch_data()
    # One packed all-reduce of every gradient (with the loss, metrics and
    # stop flag), launched once per replica; global negatives add the one
    # gather of targets and predictions in the forward pass.
    expected = 2 if kind == "regression" else 4
    assert step_collectives(two_replicas, make, data, tmp_path / "a") == (
        expected
    )
    if kind != "regression":
        return
    # Left to aggregate, Keras's optimizer would all-reduce a second time.
    monkeypatch.setattr(distribute, "skip_gradient_aggregation", lambda o: o)
    assert step_collectives(two_replicas, make, data, tmp_path / "b") > (
        expected
    )


def test_a_packed_all_reduce_sums_alike(tmp_path, two_replicas, monkeypatch):
    # Packs of 4 bytes: every tensor travels in its own collective, and
    # the step is still one logical all-reduce, with the same sums.
    make = lambda: RegressionTask(keras.optimizers.Adam(0.1))  # noqa: E731
    calls = []
    all_reduce = tf.distribute.ReplicaContext.all_reduce

    def counted(self, *args, **kwargs):
        calls.append(kwargs.get("options"))
        return all_reduce(self, *args, **kwargs)

    monkeypatch.setattr(tf.distribute.ReplicaContext, "all_reduce", counted)
    whole = run_steps(
        two_replicas, make, regression_data(), tmp_path / "whole", steps=3
    )
    packed = run_steps(
        two_replicas,
        make,
        regression_data(),
        tmp_path / "packed",
        steps=3,
        allreduce_pack_mb=4 / 2**20,
    )
    assert any(not np.array_equal(a, b) for a, b in zip(packed[0], packed[1]))
    for a, b in zip(packed[1], whole[1]):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    calls.clear()
    ops = step_collectives(
        two_replicas,
        make,
        regression_data(),
        tmp_path / "count",
        allreduce_pack_mb=4 / 2**20,
    )
    # Traced once per replica: one logical all-reduce each, 4-byte packs.
    assert len(calls) == 2
    assert {c.bytes_per_pack for c in calls} == {4}
    # Kernel, bias, the loss and the stop flag in several packs (TF's
    # grouping decides how many; one without packing).
    assert 2 < ops <= 2 * 4


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
    from cpc_tf.training.optimizers import (
        learning_rate_schedule,
        make_optimizer,
    )

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

    save = tf.train.CheckpointManager.save

    def slow_save(self, *args, **kwargs):
        time.sleep(0.2)
        return save(self, *args, **kwargs)

    monkeypatch.setattr(tf.train.CheckpointManager, "save", slow_save)
    keras.utils.set_random_seed(0)
    loop = trainer.Trainer(
        tf.distribute.get_strategy(),
        RegressionTask(keras.optimizers.SGD(0.01)),
        trainer.TrainerOptions(
            str(tmp_path),
            steps=5,
            checkpoint_every=1,
            images_per_step=8,
            verbose=False,
        ),
    )
    calls, compiled = [], loop._train_loop

    def timed(*args):
        start = time.perf_counter()
        outputs = compiled(*args)
        float(outputs[0])
        calls.append(time.perf_counter() - start)
        return outputs

    loop._train_loop = timed
    result = loop.fit(lambda ctx: regression_data().batch(8).repeat())
    # The rate of the step calls after the first (tracing), whatever the
    # machine's speed; the five saves are not in it.
    expected = 8 * 4 / sum(calls[1:])
    assert result["images_per_s"] == pytest.approx(expected, rel=0.25)
    assert result["seconds"] > sum(calls) + 5 * 0.2


def test_polyak_averages_are_per_replica_copies(two_replicas, tiny_cpc_task):
    # Mirrored, no aggregation: each replica averages its own copy inside
    # the step, with no broadcast.
    with two_replicas.scope():
        task = tiny_cpc_task()
        average = trainer.PolyakAverage(task.model.trainable_variables, 0.99)
    assert average.averages[0].aggregation == tf.VariableAggregation.NONE
    assert len(average.averages[0].values) == 2


@pytest.mark.parametrize("steps_per_loop", [2, 3])
def test_steps_per_loop_equals_single_steps(tmp_path, steps_per_loop):
    make = lambda: RegressionTask(keras.optimizers.Adam(0.1))  # noqa: E731
    strategy = tf.distribute.get_strategy()
    single = run_steps(
        strategy, make, regression_data(), tmp_path / "one", steps=5
    )
    looped = run_steps(
        strategy,
        make,
        regression_data(),
        tmp_path / "loop",
        steps=5,
        steps_per_loop=steps_per_loop,
        checkpoint_every=2,
    )
    for a, b in zip(single[1], looped[1]):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert looped[2]["steps"] == 5 and int(looped[3].step.numpy()) == 5
    assert looped[2]["last_loss"] == pytest.approx(single[2]["last_loss"])
    # A checkpoint whenever a loop crosses a multiple of 2, and at the end.
    saved = tf.train.get_checkpoint_state(tmp_path / "loop" / "checkpoints")
    steps = sorted(
        int(p.rsplit("-", 1)[1]) for p in saved.all_model_checkpoint_paths
    )
    assert steps == {2: [2, 4, 5], 3: [3, 5]}[steps_per_loop]


class TwoGroupTask(trainer.Task):
    """Two Dense layers, each with its own SGD optimizer."""

    def __init__(self):
        inputs = keras.Input((3,))
        self.first = keras.layers.Dense(4, use_bias=False)
        self.second = keras.layers.Dense(2, use_bias=False)
        self.model = keras.Model(inputs, self.second(self.first(inputs)))
        self.optimizers = [keras.optimizers.SGD(1.0), keras.optimizers.SGD(1.0)]

    def compute(self, batch, training):
        x, y = batch
        return tf.reduce_mean(tf.square(self.model(x) - y)), {}

    def optimizer_groups(self):
        return [
            trainer.OptimizerGroup(opt, layer.trainable_variables)
            for opt, layer in zip(self.optimizers, (self.first, self.second))
        ]


def test_each_optimizer_group_is_clipped_on_its_own(tmp_path, two_replicas):
    init, final, _, loop = run_steps(
        two_replicas,
        TwoGroupTask,
        regression_data(),
        tmp_path,
        clip_global_norm=0.01,
    )
    # SGD with lr 1 moves each group by exactly the clip norm.
    assert len(loop.groups) == len(init) == 2  # one kernel per group
    for before, after in zip(init, final):
        moved = np.sqrt(np.sum((after - before) ** 2))
        np.testing.assert_allclose(moved, 0.01, rtol=1e-4)


class Float16Task(RegressionTask):
    """The regression in float16 compute, with a huge loss: the scaled
    gradient overflows until the loss scale has come down."""

    def __init__(self, optimizer):
        inputs = keras.Input((3,))
        layer = keras.layers.Dense(2, dtype="mixed_float16")
        self.model = keras.Model(inputs, layer(inputs))
        self.optimizer = optimizer

    def compute(self, batch, training):
        x, y = batch
        prediction = tf.cast(self.model(x), tf.float32)
        return 1e3 * tf.reduce_mean(tf.square(prediction - y)), {}


def test_float16_overflow_skips_the_step_without_the_nan_guard(tmp_path):
    make = lambda: Float16Task(  # noqa: E731
        keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(1e-5))
    )
    init, final, result, loop = run_steps(
        tf.distribute.get_strategy(),
        make,
        regression_data(),
        tmp_path,
        steps=20,
        loss_scaling=True,
    )
    scale = float(loop.groups[0].optimizer.dynamic_scale.numpy())
    assert scale < 32768.0  # halved on every overflowing step
    assert result["steps"] == 20
    assert any(not np.array_equal(a, b) for a, b in zip(init, final))
    assert result["last_loss"] < result["first_loss"]


def test_sigterm_stops_after_one_more_step_and_saves(tmp_path, two_replicas):
    def preempt(step):
        os.kill(os.getpid(), signal.SIGTERM)
        return {}

    make = lambda: RegressionTask(keras.optimizers.SGD(0.01))  # noqa: E731
    keras.utils.set_random_seed(0)
    with two_replicas.scope():
        task = make()
    loop = trainer.Trainer(
        two_replicas,
        task,
        trainer.TrainerOptions(str(tmp_path), steps=50, verbose=False),
    )
    hook = trainer.Hook(3, preempt, at_end=False)
    result = loop.fit(lambda ctx: regression_data().batch(4).repeat(), [hook])
    # The signal arrives after step 3; step 4 carries the stop flag to
    # every replica in its all-reduce, then all save and stop.
    assert result["stopped_early"] and result["steps"] == 4
    assert result["preempted"]
    assert loop.latest_checkpoint().endswith("ckpt-4")
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_hooks_run_every_n_steps_and_at_the_end(tmp_path):
    calls = []

    def hook(step):
        calls.append(step)
        return {"probe": step / 10}

    make = lambda: RegressionTask(keras.optimizers.SGD(0.01))  # noqa: E731
    keras.utils.set_random_seed(0)
    task = make()
    loop = trainer.Trainer(
        tf.distribute.get_strategy(),
        task,
        trainer.TrainerOptions(
            str(tmp_path), steps=7, verbose=False, steps_per_loop=2
        ),
    )
    result = loop.fit(
        lambda ctx: regression_data().batch(8).repeat(),
        [trainer.Hook(3, hook)],
    )
    # Loops end at 2, 4, 6, 7: multiples of 3 are crossed at 4 and 6.
    assert calls == [4, 6, 7]
    assert result["history"]["probe"] == [[4, 0.4], [6, 0.6], [7, 0.7]]


def test_a_stop_hook_ends_training_and_a_resumed_run_stays_stopped(tmp_path):
    asked = []

    def stop(step):
        asked.append(step)
        return step >= 6

    def fit():
        keras.utils.set_random_seed(0)
        loop = trainer.Trainer(
            tf.distribute.get_strategy(),
            RegressionTask(keras.optimizers.SGD(0.01)),
            trainer.TrainerOptions(str(tmp_path), steps=50, verbose=False),
        )
        hook = trainer.Hook(3, lambda step: {"val": step}, stop=stop)
        data = lambda ctx: regression_data().batch(8).repeat()  # noqa: E731
        return loop, loop.fit(data, [hook])

    loop, result = fit()
    assert asked == [0, 3, 6]
    assert result["stopped_early"] and result["steps"] == 6
    assert not result["preempted"]
    assert loop.latest_checkpoint().endswith("ckpt-6")
    assert result["history"]["val"] == [[3, 3.0], [6, 6.0]]
    # Resuming restores step 6, where the hook still says stop: no step.
    loop, result = fit()
    assert asked[3:] == [6]
    assert result["steps"] == 6 and result["first_loss"] is None
    assert loop.latest_checkpoint().endswith("ckpt-6")


def test_only_the_chief_writes_the_model_directory(monkeypatch, tmp_path):
    cluster = {"chief": ["a:1"], "worker": ["b:1", "c:1"]}
    config = {"cluster": cluster, "task": {"type": "worker", "index": 0}}
    monkeypatch.setenv("TF_CONFIG", json.dumps(config))
    # With a chief task, worker 0 is an ordinary worker.
    assert distribute.cluster_task() == ("worker", 0, False, 3)
    # Its required checkpoints go to the local disk, not the bucket.
    scratch = saving.write_directory(str(tmp_path), None)
    assert os.path.isdir(scratch) and not scratch.startswith(str(tmp_path))
    assert os.path.basename(scratch).startswith("cpc_tf_worker0_")
    os.rmdir(scratch)
    config["task"] = {"type": "chief", "index": 0}
    monkeypatch.setenv("TF_CONFIG", json.dumps(config))
    assert distribute.cluster_task()[2]
    assert saving.write_directory(str(tmp_path), None) == str(tmp_path)
    del cluster["chief"]
    config["task"] = {"type": "worker", "index": 0}
    monkeypatch.setenv("TF_CONFIG", json.dumps(config))
    assert distribute.cluster_task() == ("worker", 0, True, 2)


def test_sigterm_inside_a_hook_saves_the_steps_done(tmp_path):
    # A long hook (the k-NN monitor's embedding) stops at its next safe
    # point; the trainer saves the steps already done and stops.

    def interrupted(step):
        os.kill(os.getpid(), signal.SIGTERM)
        preemption.check()
        return {"never": 1.0}

    keras.utils.set_random_seed(0)
    task = RegressionTask(keras.optimizers.SGD(0.01))
    loop = trainer.Trainer(
        tf.distribute.get_strategy(),
        task,
        trainer.TrainerOptions(str(tmp_path), steps=50, verbose=False),
    )
    result = loop.fit(
        lambda ctx: regression_data().batch(8).repeat(),
        [trainer.Hook(4, interrupted, at_end=False)],
    )
    assert result["stopped_early"] and result["steps"] == 4
    assert loop.latest_checkpoint().endswith("ckpt-4")
    assert "never" not in result["history"]


def test_sigterm_inside_a_long_loop_stops_after_the_step_in_flight(tmp_path):
    # 50 steps per compiled call: the flag is read before every step, so
    # the run stops at most one step past the one in flight when the
    # signal came, not at the end of the call; it resumes exactly.
    make = lambda: RegressionTask(keras.optimizers.Adam(0.1))  # noqa: E731
    strategy = tf.distribute.get_strategy()
    uninterrupted = run_steps(
        strategy,
        make,
        regression_data(),
        tmp_path / "whole",
        steps=50,
        steps_per_loop=50,
    )
    keras.utils.set_random_seed(0)
    task = make()
    options = trainer.TrainerOptions(
        str(tmp_path / "run"), steps=50, steps_per_loop=50, verbose=False
    )
    loop = trainer.Trainer(strategy, task, options)
    seen = {}
    batches = regression_data().batch(8).repeat()
    result = loop.fit(
        lambda ctx: signalling_batches(
            batches, loop, 3, lambda step: seen.update(step=step)
        )
    )
    assert result["preempted"] and result["stopped_early"]
    assert seen["step"] <= result["steps"] <= seen["step"] + 2 < 50
    state = tf.train.get_checkpoint_state(tmp_path / "run" / "checkpoints")
    assert state.model_checkpoint_path.endswith(f"ckpt-{result['steps']}")
    task = make()
    resumed = trainer.Trainer(strategy, task, options)
    assert (
        resumed.fit(lambda ctx: regression_data().batch(8).repeat())["steps"]
        == 50
    )
    for a, b in zip(task.model.trainable_variables, uninterrupted[1]):
        np.testing.assert_allclose(a.numpy(), b, rtol=1e-6, atol=1e-7)
