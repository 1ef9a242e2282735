"""tools/sweep.py: trials run once, resume, and the table's order."""

import importlib.util
import json
import os
import sys
import types

import pytest

SWEEP_PATH = os.path.join(
    os.path.dirname(os.path.dirname(__file__)), "tools", "sweep.py"
)


@pytest.fixture(scope="module")
def sweep():
    spec = importlib.util.spec_from_file_location("sweep_tool", SWEEP_PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sweep_runs_each_trial_once_and_resumes(sweep, tmp_path):
    trials = [{"name": "a"}, {"name": "b", "flags": {"stem_stride": 2}}]
    probes = {"a": 0.40, "b": 0.55}
    ran = []

    def run_one(trial):
        ran.append(trial["name"])
        return dict(
            name=trial["name"],
            flags=trial.get("flags", {}),
            steps=10,
            images_per_s=100.0,
            knn_top1=None,
            probe_val_top1=probes[trial["name"]],
        )

    sweep_dir = str(tmp_path / "sweep")
    sweep.run_sweep(trials, sweep_dir, run_one, only=["a"], base="x.cfg")
    assert ran == ["a"]
    scores = sweep.run_sweep(trials, sweep_dir, run_one, base="x.cfg")
    assert ran == ["a", "b"]
    assert [s["name"] for s in scores] == ["a", "b"]
    sweep.run_sweep(trials, sweep_dir, run_one, base="x.cfg")
    assert ran == ["a", "b"]

    with open(os.path.join(sweep_dir, "sweep.json")) as f:
        record = json.load(f)
    assert record["base"] == "x.cfg"
    assert [s["probe_val_top1"] for s in record["trials"]] == [0.40, 0.55]
    with open(os.path.join(sweep_dir, "sweep.md")) as f:
        rows = f.read().splitlines()[2:]
    assert rows[0].startswith("| b | --stem_stride=2 | 10 | 100.0 | - | 55.0")
    assert rows[1].startswith("| a | (base) |")


def test_a_damaged_score_is_run_again_and_kept(sweep, tmp_path):
    sweep_dir = tmp_path / "sweep"
    (sweep_dir / "a").mkdir(parents=True)
    (sweep_dir / "a" / "score.json").write_text('{"name": "a", "probe')
    ran = []

    def run_one(trial):
        ran.append(trial["name"])
        return dict(
            name="a",
            flags={},
            steps=1,
            images_per_s=1.0,
            knn_top1=None,
            probe_val_top1=0.5,
        )

    (score,) = sweep.run_sweep([{"name": "a"}], str(sweep_dir), run_one)
    assert ran == ["a"] and score["probe_val_top1"] == 0.5
    damaged = sweep_dir / "a" / "score.json.damaged"
    assert damaged.read_text() == '{"name": "a", "probe'


def test_run_trial_reads_pretraining_and_probe(sweep, tmp_path, monkeypatch):
    commands = []

    def fake_run(command, log_path):
        commands.append(command)
        model_dir = next(
            arg.split("=", 1)[1] for arg in command if "--model_dir=" in arg
        )
        os.makedirs(model_dir, exist_ok=True)
        if command[2] == "cpc_tf.pretrain":
            record = dict(
                steps=7,
                images_per_s=50.0,
                accuracy=0.01,
                last_loss=3.0,
                knn_top1=0.3,
                history={"knn_top1": [[7, 0.3]]},
                parameters=123,
            )
            name = "summary.json"
        else:
            record = dict(validation={"top1": 0.45}, probe={"l2": 1e-4})
            name = "results.json"
        with open(os.path.join(model_dir, name), "w") as f:
            json.dump(record, f)

    monkeypatch.setattr(sweep, "_run", fake_run)
    values = types.SimpleNamespace(
        sweep_dir=str(tmp_path),
        steps=400,
        base="flags/cifar10.cfg",
        pretrain_args=["knn_memory=100"],
        probe_flagfile="flags/linear_cifar10.cfg",
        probe_fraction=10.0,
    )
    trial = {"name": "t", "flags": {"randaugment": False}, "steps": 7}
    score = sweep.run_trial(trial, values)

    pretrain, probe = commands
    assert "--knn_memory=100" in pretrain
    assert "--randaugment=false" in pretrain
    assert "--steps=7" in pretrain
    assert "--label_fraction=10" in probe
    assert score["knn_history"] == [[7, 0.3]]
    assert score["probe_val_top1"] == 0.45
    assert score["parameters"] == 123


def test_sweep_writes_through_gfile(sweep):
    import tensorflow as tf

    sweep_dir = "ram://sweep_test"
    score = dict(name="a", flags={}, steps=1, images_per_s=1.0)
    score.update(knn_top1=0.2, probe_val_top1=0.3)
    sweep.run_sweep([{"name": "a"}], sweep_dir, lambda trial: score)
    assert tf.io.gfile.exists(f"{sweep_dir}/a/score.json")
    with tf.io.gfile.GFile(f"{sweep_dir}/sweep.md") as f:
        assert "| a | (base) | 1 | 1.0 | 20.0 | 30.0 |" in f.read()


def test_run_streams_the_log_and_raises_with_its_tail(sweep, tmp_path):
    log = str(tmp_path / "ok.log")
    sweep._run([sys.executable, "-c", "print('hello')"], log)
    with open(log) as f:
        assert f.read().splitlines()[1] == "hello"
    failing = [sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"]
    with pytest.raises(RuntimeError, match="boom"):
        sweep._run(failing, str(tmp_path / "bad.log"))
