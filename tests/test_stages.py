import os
import re
import sys
import threading

import pytest
from helpers import FAST, ROOT

from cpc_tf import reporting
from cpc_tf.reporting import stages


def _stage(name, protocol="no_such_protocol", args=()):
    return reporting.Stage(
        name, "linear_cpc", 100.0, 0, protocol, (*args, f"--model_dir={name}")
    )


class _FakeWorker:
    """Stands in for `stages.StageWorker`: runs `behaviour(stage)`."""

    behaviour = staticmethod(lambda stage: None)
    envs = []

    def __init__(self, env=None):
        _FakeWorker.envs.append(env)

    def run(self, stage, log_path):
        _FakeWorker.behaviour(stage)

    def close(self):
        pass


@pytest.fixture
def fake_worker(monkeypatch):
    _FakeWorker.envs = []
    monkeypatch.setattr(stages, "StageWorker", _FakeWorker)
    return _FakeWorker


def _run(stage_list, workers, tmp_path, needs=None):
    started, finished = [], []
    stages.run_side_by_side(
        stage_list,
        lambda stage: str(tmp_path / f"{stage.name}.log"),
        workers,
        lambda stage: started.append(stage.name),
        lambda stage, seconds: finished.append((stage.name, seconds)),
        needs=needs,
    )
    return started, finished


def test_thread_environment_shares_the_cores(monkeypatch):
    monkeypatch.setattr(stages, "available_cores", lambda: 8)
    env = stages.thread_environment(4)
    assert env["TF_NUM_INTRAOP_THREADS"] == "2"
    assert env["TF_NUM_INTEROP_THREADS"] == "2"
    assert stages.thread_environment(16)["TF_NUM_INTRAOP_THREADS"] == "1"


def test_side_by_side_runs_workers_at_once_and_reports_each(
    fake_worker, tmp_path
):
    # The first two stages meet at a barrier: it only opens if both run at
    # once (a timeout, not a sleep, fails the test otherwise).
    barrier = threading.Barrier(2, timeout=60)
    lock = threading.Lock()
    running, most = [0], [0]

    def behaviour(stage):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        if stage.name in ("a", "b"):
            barrier.wait()
        with lock:
            running[0] -= 1

    fake_worker.behaviour = behaviour
    started, finished = _run([_stage(n) for n in "abcde"], 2, tmp_path)
    assert started == list("abcde")
    assert sorted(name for name, _ in finished) == list("abcde")
    assert all(seconds >= 0 for _, seconds in finished)
    assert most[0] == 2
    # Two workers for five stages, each with its share of the threads.
    assert len(fake_worker.envs) == 2
    assert all(env["TF_NUM_INTRAOP_THREADS"] for env in fake_worker.envs)


def test_a_stage_starts_after_what_it_needs(fake_worker, tmp_path):
    # "needy" waits for "first"; "free" runs beside "first" (they meet at
    # a barrier), so "needy", though listed second, starts last.
    barrier = threading.Barrier(2, timeout=60)
    finished_names = []

    def behaviour(stage):
        if stage.name in ("first", "free"):
            barrier.wait()
        finished_names.append(stage.name)

    fake_worker.behaviour = behaviour
    started, _ = _run(
        [_stage("first"), _stage("needy"), _stage("free")],
        2,
        tmp_path,
        needs=lambda stage: ("first",) if stage.name == "needy" else (),
    )
    assert started == ["first", "free", "needy"]
    assert finished_names[-1] == "needy"


def test_stages_that_wait_on_each_other_fail(fake_worker, tmp_path):
    with pytest.raises(ValueError, match="wait on each other: a, b"):
        _run(
            [_stage("a"), _stage("b")],
            2,
            tmp_path,
            needs=lambda stage: ("b",) if stage.name == "a" else ("a",),
        )


@pytest.mark.slow
def test_a_worker_runs_its_stages_in_one_process(tmp_path):
    # Two tiny pretraining runs through the protocol registry.
    args = (f"--flagfile={ROOT}/flags/demo.cfg", *FAST, "--steps=1")
    names = [str(tmp_path / name) for name in ("one", "two")]
    _run([_stage(name, "pretrain", args) for name in names], 1, tmp_path)
    logs = [open(f"{name}.log").read() for name in names]
    pids = {re.search(r"\(in process (\d+)\)", log).group(1) for log in logs}
    assert len(pids) == 1 and pids != {str(os.getpid())}
    assert logs[1].startswith(f"{sys.executable} -m cpc_tf.pretrain")
    for name in names:
        assert os.path.exists(os.path.join(name, "summary.json"))


def test_side_by_side_stops_starting_after_a_failure(tmp_path):
    # A real worker: the unknown protocol fails; nothing after it starts.
    started = []
    with pytest.raises(RuntimeError, match="Stage a failed"):
        stages.run_side_by_side(
            [_stage("a"), _stage("b")],
            lambda stage: str(tmp_path / f"{stage.name}.log"),
            1,
            lambda stage: started.append(stage.name),
            lambda stage, seconds: None,
        )
    assert started == ["a"]
    log = (tmp_path / "a.log").read_text()
    assert log.startswith(sys.executable) and "unknown protocol" in log


def test_report_stages_need_pretraining_except_the_supervised_baseline():
    def stage(method):
        return reporting.Stage(method, method, 1.0, 0, "m", ("--model_dir=d",))

    assert reporting.stage_needs(stage("pretrain")) == ()
    assert reporting.stage_needs(stage("supervised")) == ()
    for method in ("linear_cpc", "linear_random", "finetune", "pixels"):
        assert reporting.stage_needs(stage(method)) == ("pretrain",)
