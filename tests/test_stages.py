import sys
import threading

import pytest

from cpc_tf import reporting, stages


def _stage(name, module="cpc_tf.no_such_module", args=()):
    return reporting.Stage(
        name, "linear_cpc", 100.0, 0, module, (*args, f"--model_dir={name}")
    )


def test_thread_environment_shares_the_cores(monkeypatch):
    monkeypatch.setattr(stages, "available_cores", lambda: 8)
    env = stages.thread_environment(4)
    assert env["TF_NUM_INTRAOP_THREADS"] == "2"
    assert env["TF_NUM_INTEROP_THREADS"] == "2"
    assert stages.thread_environment(16)["TF_NUM_INTRAOP_THREADS"] == "1"


def test_side_by_side_runs_workers_at_once_and_reports_each(
    monkeypatch, tmp_path
):
    # The first two stages meet at a barrier: it only opens if both run at
    # once (a timeout, not a sleep, fails the test otherwise).
    barrier = threading.Barrier(2, timeout=60)
    lock = threading.Lock()
    running, most, envs = [0], [0], []

    def fake(stage, log_path, env=None):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
            envs.append(env)
        if stage.name in ("a", "b"):
            barrier.wait()
        with lock:
            running[0] -= 1

    monkeypatch.setattr(stages, "run_in_subprocess", fake)
    started, finished = [], []
    stages.run_side_by_side(
        [_stage(n) for n in "abcde"],
        lambda stage: str(tmp_path / f"{stage.name}.log"),
        2,
        lambda stage: started.append(stage.name),
        lambda stage, seconds: finished.append((stage.name, seconds)),
    )
    assert started == list("abcde")
    assert sorted(name for name, _ in finished) == list("abcde")
    assert all(seconds >= 0 for _, seconds in finished)
    assert most[0] == 2
    assert all(env["TF_NUM_INTRAOP_THREADS"] for env in envs)


def test_side_by_side_stops_starting_after_a_failure(tmp_path):
    # A real subprocess: the unknown module fails; nothing after it starts.
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
    assert log.startswith(sys.executable) and "No module named" in log
