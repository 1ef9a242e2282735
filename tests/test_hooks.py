import pytest
import tensorflow as tf

from cpc_tf.training import hooks, preemption


@pytest.mark.parametrize(
    "every, step, done, expected",
    [(3, 3, 1, True), (3, 4, 2, True), (3, 5, 1, False), (3, 7, 3, True)],
)
def test_due_when_a_multiple_lies_in_the_loop(every, step, done, expected):
    assert hooks.due(every, step, done) is expected


def test_runner_runs_due_and_final_hooks_and_keeps_history():
    calls = []

    def record(step):
        calls.append(step)
        return {"top1": step / 10}

    history = {}
    runner = hooks.HookRunner([hooks.Hook(4, record)], 10, history)
    shown = [runner.run(step, 2)[0] for step in (2, 4, 6, 8, 10)]
    assert calls == [4, 8, 10]
    assert history == {"top1": [[4, 0.4], [8, 0.8], [10, 1.0]]}
    assert shown[1] == {"top1": 0.4} and shown[0] == {}
    assert runner.seconds >= 0


def test_at_start_hooks_run_before_a_fresh_run_only():
    calls = []

    def record(step):
        calls.append(step)
        return {"top1": 0.1 + step}

    history = {}
    runner = hooks.HookRunner(
        [hooks.Hook(4, record, at_start=True), hooks.Hook(4, record)],
        8,
        history,
    )
    assert runner.start(0) == {"top1": 0.1} and calls == [0]
    assert runner.start(4) == {} and calls == [0]  # a resumed run
    runner.run(4, 4)
    assert history == {"top1": [[0, 0.1], [4, 4.1], [4, 4.1]]}


def test_runner_skips_at_end_false_and_reports_stop():
    final_only = hooks.Hook(100, lambda step: {"a": 1}, at_end=False)
    stopper = hooks.Hook(2, lambda step: {"b": step}, stop=lambda s: s >= 4)
    runner = hooks.HookRunner([final_only, stopper], 6, {})
    assert runner.run(2, 2) == ({"b": 2.0}, False)
    assert runner.run(4, 2) == ({"b": 4.0}, True)
    assert runner.run(6, 2) == ({"b": 6.0}, True)
    assert hooks.stop_requested([final_only, stopper], 4)
    assert not hooks.stop_requested([final_only, stopper], 3)


def test_a_preempted_hook_stops_without_scores():
    def preempted(step):
        raise preemption.Preempted()

    history = {}
    runner = hooks.HookRunner([hooks.Hook(1, preempted)], 5, history)
    assert runner.run(1, 1) == ({}, True)
    assert runner.preempted and history == {}


def test_runner_writes_scores_to_tensorboard(tmp_path):
    writer = tf.summary.create_file_writer(str(tmp_path))
    runner = hooks.HookRunner(
        [hooks.Hook(1, lambda step: {"knn_top1": 0.5})], 1, {}, writer
    )
    runner.run(1, 1)
    writer.flush()
    events = tf.io.gfile.glob(str(tmp_path / "events.*"))
    tags = {
        value.tag
        for event in tf.compat.v1.train.summary_iterator(events[0])
        for value in event.summary.value
    }
    assert tags == {"knn_top1"}
