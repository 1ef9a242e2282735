"""The pretraining entry point: flags, flagfiles, resume, SIGTERM, v2."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from absl import app
from helpers import FAST, ROOT, parse

from cpc_tf import artifacts, pretrain
from cpc_tf.config import RunConfig


def cli(*args, program=("-m", "cpc_tf.pretrain")):
    return subprocess.Popen(
        [sys.executable, *program, *args],
        cwd=ROOT,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_flagfiles_resolve_to_the_paper():
    config = parse(f"--flagfile={ROOT}/flags/v2.cfg")
    assert config.data.grid_size == 6
    assert config.model.encoder_depth == 161
    assert config.model.directions == ("down", "up", "left", "right")
    assert (config.optim.learning_rate, config.optim.beta1) == (4e-4, 0.8)
    assert config.optim.clip_global_norm == 0.01
    assert config.optim.ema_decay == 0.9999
    assert config.run.batch_size == 512 and config.run.epochs == 200
    for name in ("demo", "cifar10", "v2_resnet50"):
        parsed = parse(f"--flagfile={ROOT}/flags/{name}.cfg")
        assert parsed.data.grid_size >= parsed.model.steps_to_predict + 1
    with open(f"{ROOT}/flags/v2.cfg") as f:
        assert f.readline().startswith("#")


@pytest.mark.parametrize(
    "args,flag",
    [
        (["--patch_stride=7"], "--patch_stride"),
        (["--crop_size=400"], "--crop_size"),
        (["--steps_to_predict=6"], "--steps_to_predict"),
        (["--directions=down,diagonal"], "--directions"),
        (["--norm=instance"], "--norm"),
        (["--strategy=tpu"], "--tpu"),
        (["--negatives=all"], "--negatives"),
        (["--color_jitter_prob=1.5"], "--color_jitter_prob"),
        (["--label_fraction=3"], "--label_fraction"),
    ],
)
def test_invalid_flags_name_the_flag(args, flag):
    with pytest.raises(app.UsageError, match=flag):
        parse(f"--flagfile={ROOT}/flags/v2.cfg", *args)


def test_bad_flag_fails_before_compute(tmp_path):
    start = time.perf_counter()
    process = cli(
        "--flagfile=flags/demo.cfg",
        "--patch_stride=7",
        f"--model_dir={tmp_path}",
    )
    output = process.communicate(timeout=120)[0]
    assert process.returncode != 0
    assert "--patch_stride" in output
    assert not os.listdir(tmp_path)
    assert time.perf_counter() - start < 60


def test_v2_without_imagenet_fails_clearly(tmp_path):
    process = cli(
        "--flagfile=flags/v2.cfg",
        f"--data_dir={tmp_path}/tfds",
        f"--model_dir={tmp_path}/run",
    )
    output = process.communicate(timeout=120)[0]
    assert process.returncode != 0
    assert "imagenet2012" in output
    assert "manual" in output.lower()
    assert "Traceback" not in output
    assert not os.path.exists(f"{tmp_path}/run/checkpoints")


def wait_for_checkpoint(directory, step, process, timeout=240):
    index = os.path.join(directory, "checkpoints", f"ckpt-{step}.index")
    deadline = time.time() + timeout
    while time.time() < deadline:
        if os.path.exists(index):
            return
        if process.poll() is not None:
            raise AssertionError(process.stdout.read()[-3000:])
        time.sleep(0.2)
    raise AssertionError(f"no checkpoint {index} after {timeout} s")


@pytest.mark.slow
def test_killed_run_resumes_and_finishes(tmp_path):
    args = [
        "--flagfile=flags/demo.cfg",
        *FAST,
        "--steps=24",
        "--checkpoint_every=4",
        f"--model_dir={tmp_path}",
    ]
    process = cli(*args)
    wait_for_checkpoint(tmp_path, 8, process)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert not os.path.exists(tmp_path / artifacts.SUMMARY_FILE)
    resumed = cli(*args)
    output = resumed.communicate(timeout=300)[0]
    assert resumed.returncode == 0, output[-3000:]
    with open(tmp_path / artifacts.SUMMARY_FILE) as f:
        summary = json.load(f)
    assert summary["start_step"] >= 8 and summary["steps"] == 24
    assert summary["skipped_images"] == 0
    for name in (artifacts.CONFIG_FILE, artifacts.ENCODER_FILE):
        assert (tmp_path / name).exists()
    assert os.listdir(tmp_path / artifacts.LOG_DIR)
    assert (tmp_path / "checkpoints" / "ckpt-24.index").exists()


@pytest.mark.slow
def test_sigterm_saves_then_exits(tmp_path):
    process = cli(
        "--flagfile=flags/demo.cfg",
        *FAST,
        "--steps=100000",
        "--checkpoint_every=1000",
        f"--model_dir={tmp_path}",
    )
    log_dir = tmp_path / artifacts.LOG_DIR
    deadline = time.time() + 240
    while not (log_dir.exists() and os.listdir(log_dir)):
        assert time.time() < deadline and process.poll() is None
        time.sleep(0.2)
    time.sleep(8)
    process.send_signal(signal.SIGTERM)
    output = process.communicate(timeout=120)[0]
    assert process.returncode == 0, output[-3000:]
    assert "preempted" in output
    saved = [
        name
        for name in os.listdir(tmp_path / "checkpoints")
        if name.endswith(".index")
    ]
    assert len(saved) == 1 and saved[0] != "ckpt-100000.index"


def test_finished_run_keeps_its_summary_and_encoder(tmp_path):
    config = parse(
        f"--flagfile={ROOT}/flags/demo.cfg",
        *FAST,
        "--steps=2",
        f"--model_dir={tmp_path}",
    )
    first = pretrain.run(config, verbose=False)
    encoder = tmp_path / artifacts.ENCODER_FILE
    saved_at = encoder.stat().st_mtime_ns
    again = pretrain.run(config, verbose=False)
    assert again["first_loss"] == first["first_loss"] is not None
    assert again["steps"] == 2 and again["start_step"] == 0
    assert encoder.stat().st_mtime_ns == saved_at


def test_total_steps_from_epochs():
    run = RunConfig(steps=0, epochs=2.0, batch_size=64)
    assert pretrain.total_steps(run, 1000) == 32
    with pytest.raises(ValueError, match="--steps"):
        pretrain.total_steps(run, None)


@pytest.mark.slow
def test_v2_flagfile_two_steps_on_mock_imagenet(tmp_path):
    # The paper's flagfile as it is (ResNet-161, TFDS imagenet2012, 300/260/
    # 80/36, four directions, Adam + clip + EMA), two steps of two images on
    # mock ImageNet, in a process of its own: ~16 GB and 7.6 GB of files.
    model_dir = tmp_path / "v2"
    process = cli(
        "--flagfile=flags/v2.cfg",
        "--steps=2",
        "--batch_size=2",
        f"--model_dir={model_dir}",
        program=("tests/scripts/pretrain_mock_tfds.py",),
    )
    output = process.communicate(timeout=1200)[0]
    try:
        assert process.returncode == 0, output[-3000:]
        with open(model_dir / artifacts.SUMMARY_FILE) as f:
            summary = json.load(f)
        assert summary["steps"] == 2 and summary["replicas"] == 1
        assert 300e6 <= summary["parameters"] <= 310e6
        assert summary["first_loss"] > 0 and summary["skipped_images"] == 0
        with open(model_dir / artifacts.CONFIG_FILE) as f:
            config = json.load(f)
        assert config["model"]["encoder_depth"] == 161
        assert config["data"]["train_data"] == "tfds:imagenet2012:train"
        assert (model_dir / artifacts.ENCODER_FILE).exists()
        assert (model_dir / "checkpoints" / "ckpt-2.index").exists()
    finally:
        shutil.rmtree(model_dir, ignore_errors=True)
