"""The pretraining entry point: flags, flagfiles, resume, SIGTERM, v2."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf
from helpers import FAST, ROOT, parse

from cpc_tf.config import FlagError
from cpc_tf.data import readers
from cpc_tf.protocols import pretrain
from cpc_tf.rundir import artifacts, splits
from cpc_tf.training import builders

# How long a subprocess may take to start and fail or finish: generous, so
# that a machine 3x slower than the reference passes.
START_TIMEOUT = 600


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
    for name in ("demo", "cifar10", "cifar10_1h", "v2_resnet50"):
        parsed = parse(f"--flagfile={ROOT}/flags/{name}.cfg")
        assert parsed.data.grid_size >= parsed.model.steps_to_predict + 1
    two_hours = parse(f"--flagfile={ROOT}/flags/cifar10.cfg")
    one_hour = parse(f"--flagfile={ROOT}/flags/cifar10_1h.cfg")
    assert one_hour.run.steps < two_hours.run.steps
    assert one_hour.model == two_hours.model
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
    with pytest.raises(FlagError, match=flag):
        parse(f"--flagfile={ROOT}/flags/v2.cfg", *args)


def fails_in_a_line(output, flag):
    """The error names the flag in a line or two: no traceback, no usage
    (the module docstring)."""
    lines = [line for line in output.splitlines() if line.startswith("error:")]
    assert lines and flag in lines[0], output[-2000:]
    assert "Traceback" not in output and "USAGE" not in output
    assert "Parses flags into" not in output  # the module docstring


def test_bad_flag_fails_before_compute(tmp_path):
    process = cli(
        "--flagfile=flags/demo.cfg",
        "--patch_stride=7",
        f"--model_dir={tmp_path}",
    )
    output = process.communicate(timeout=START_TIMEOUT)[0]
    assert process.returncode == 1
    fails_in_a_line(output, "--patch_stride")
    assert not os.listdir(tmp_path)


@pytest.mark.parametrize(
    "args,flag",
    [
        # Each kind of bad source: test_runtime, in process.
        (["--train_data=tfrecord:/no/such/*.tfrecord"], "--train_data"),
        (["--model_dir=README.md"], "--model_dir"),
    ],
)
def test_bad_sources_and_directories_fail_in_a_line(tmp_path, args, flag):
    process = cli(
        "--flagfile=flags/demo.cfg", f"--model_dir={tmp_path}/run", *args
    )
    output = process.communicate(timeout=START_TIMEOUT)[0]
    assert process.returncode == 1
    fails_in_a_line(output, flag)
    assert not os.path.exists(f"{tmp_path}/run/checkpoints")


def test_the_knn_monitor_needs_a_readable_eval_data(tmp_path):
    config = parse(
        f"--flagfile={ROOT}/flags/demo.cfg",
        *FAST,
        "--knn_every=5",
        "--eval_data=folder:/no/such",
        f"--model_dir={tmp_path}/run",
    )
    with pytest.raises(FlagError, match="^--eval_data: "):
        pretrain.run(config, verbose=False)
    assert not os.path.exists(f"{tmp_path}/run/checkpoints")


def test_v2_without_imagenet_fails_clearly(tmp_path):
    process = cli(
        "--flagfile=flags/v2.cfg",
        f"--data_dir={tmp_path}/tfds",
        f"--model_dir={tmp_path}/run",
    )
    output = process.communicate(timeout=START_TIMEOUT)[0]
    assert process.returncode != 0
    assert "imagenet2012" in output
    assert "manual" in output.lower()
    assert "Traceback" not in output
    assert not os.path.exists(f"{tmp_path}/run/checkpoints")


def wait_for(path, process, timeout=START_TIMEOUT, ready=os.path.exists):
    """Waits until `ready(path)` (an event, not a time)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if ready(path):
            return
        if process.poll() is not None:
            raise AssertionError(process.stdout.read()[-3000:])
        time.sleep(0.05)
    raise AssertionError(f"{path} not ready after {timeout} s")


def wait_for_checkpoint(directory, step, process):
    """Waits until a checkpoint at `step` or later is recorded in the
    `checkpoint` state file (the `.index` is written before it: a run
    killed in between resumes from the one before)."""

    def recorded(checkpoints):
        state = tf.train.get_checkpoint_state(checkpoints)
        latest = state.model_checkpoint_path if state else "ckpt-0"
        return int(latest.rsplit("-", 1)[1]) >= step

    wait_for(os.path.join(directory, "checkpoints"), process, ready=recorded)


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
    process.wait(timeout=START_TIMEOUT)
    assert not os.path.exists(tmp_path / artifacts.SUMMARY_FILE)
    resumed = cli(*args)
    output = resumed.communicate(timeout=START_TIMEOUT)[0]
    assert resumed.returncode == 0, output[-3000:]
    with open(tmp_path / artifacts.SUMMARY_FILE) as f:
        summary = json.load(f)
    assert summary["start_step"] >= 8 and summary["steps"] == 24
    assert summary["skipped_images"] == 0
    for name in (artifacts.CONFIG_FILE, artifacts.ENCODER_FILE):
        assert (tmp_path / name).exists()
    assert os.listdir(tmp_path / artifacts.LOG_DIR)
    assert (tmp_path / "checkpoints" / "ckpt-24.index").exists()


def checkpoint_steps(model_dir):
    directory = os.path.join(model_dir, "checkpoints")
    if not os.path.isdir(directory):
        return []
    return sorted(
        int(name[5:-6])
        for name in os.listdir(directory)
        if name.startswith("ckpt-") and name.endswith(".index")
    )


@pytest.mark.slow
def test_sigterm_mid_run_saves_then_exits(tmp_path):
    process = cli(
        "--flagfile=flags/demo.cfg",
        *FAST,
        "--steps=100000",
        "--checkpoint_every=3",
        "--knn_every=0",
        f"--model_dir={tmp_path}",
    )
    wait_for_checkpoint(tmp_path, 3, process)
    process.send_signal(signal.SIGTERM)
    output = process.communicate(timeout=START_TIMEOUT)[0]
    assert process.returncode == 0, output[-3000:]
    assert "preempted: checkpoint saved at step" in output
    saved = checkpoint_steps(tmp_path)
    # The step after the signal is saved; the run did not finish.
    assert saved[0] >= 3 and saved[-1] > 3 and 100000 not in saved
    assert not (tmp_path / artifacts.SUMMARY_FILE).exists()


@pytest.mark.slow
def test_sigterm_during_start_up_exits_cleanly(tmp_path):
    # config.json is written before the model, the pipeline and the first
    # step are built: SIGTERM then reaches a run that has not trained.
    process = cli(
        "--flagfile=flags/demo.cfg",
        *FAST,
        "--steps=100",
        f"--model_dir={tmp_path}",
    )
    wait_for(tmp_path / artifacts.CONFIG_FILE, process)
    process.send_signal(signal.SIGTERM)
    output = process.communicate(timeout=START_TIMEOUT)[0]
    assert process.returncode == 0, output[-3000:]
    assert "preempted" in output and "Traceback" not in output
    assert checkpoint_steps(tmp_path) == []  # no step ran: nothing to save


def identifiable_folder(root, count=40):
    """A folder source whose image i is uniformly grey at 5 * i."""
    for index in range(count):
        directory = root / f"class{index % 2}"
        directory.mkdir(parents=True, exist_ok=True)
        image = np.full((16, 16, 3), 5 * index, np.uint8)
        png = tf.io.encode_png(image).numpy()
        (directory / f"{index:03d}.png").write_bytes(png)
    return f"folder:{root}"


def test_pretraining_never_reads_the_hold_out(tmp_path):
    spec = identifiable_folder(tmp_path / "images")
    args = [
        f"--flagfile={ROOT}/flags/demo.cfg",
        f"--train_data={spec}",
        "--eval_data=holdout",
        "--holdout=8",
        *FAST,
        "--randaugment=false",
        "--elastic_shear_prob=0",
        "--color_histogram_prob=0",
        "--color_jitter_prob=0",
        "--grayscale_prob=0",
        "--knn_every=0",
        "--steps=2",
        f"--model_dir={tmp_path / 'run'}",
    ]
    config = parse(*args)
    summary = pretrain.run(config, verbose=False)
    held = splits.holdout_split(config.data, str(tmp_path / "run"))[1]
    assert summary["train_examples"] == 32
    assert summary["holdout"]["count"] == 8
    assert summary["holdout"]["file"].startswith(str(tmp_path / "run"))
    np.testing.assert_array_equal(
        np.loadtxt(summary["holdout"]["file"], dtype=np.int64), held
    )
    # What pretraining reads: its own dataset function, many batches.
    ids, _ = splits.pretraining_ids(config.data, str(tmp_path / "run"))
    dataset_fn = builders.pretrain_dataset_fn(
        config.data, config.run, lambda: 0, ids
    )
    dataset = dataset_fn(tf.distribute.InputContext())
    seen = set()
    for patches in dataset.take(40):
        grey = np.round((patches.numpy() + 1.0) * 127.5)
        seen |= set((grey.reshape(len(grey), -1)[:, 0] / 5).astype(int))
    # Images are ordered round-robin over the two classes: source index i
    # is image i of the folder order, i.e. grey 5 * i of that file.
    paths = readers.folder_files(str(tmp_path / "images"))[0]
    image_of_index = [int(os.path.basename(p)[:3]) for p in paths]
    held_images = {image_of_index[i] for i in held}
    assert seen and not seen & held_images
    assert seen == set(range(40)) - held_images


@pytest.mark.slow
def test_knn_monitor_on_a_tiny_run_beats_chance(tmp_path):
    config = parse(
        f"--flagfile={ROOT}/flags/demo.cfg",
        *FAST,
        "--steps=6",
        "--knn_every=3",
        "--knn_memory=400",
        "--knn_queries=200",
        f"--model_dir={tmp_path}",
    )
    summary = pretrain.run(config, verbose=False)
    history = summary["history"]["knn_top1"]
    # Step 0 scores the random-init encoder; later scores show the gain.
    assert [step for step, _ in history] == [0, 3, 6]
    assert summary["knn_top1"] == history[-1][1] > 0.2  # chance: 0.1
    assert summary["knn_top1_at_start"] == history[0][1]
    gains = summary["history"]["knn_gain"]
    assert gains[-1] == [6, pytest.approx(history[-1][1] - history[0][1])]
    line = pretrain.describe(summary, config.run)
    assert f"random init {history[0][1]:.4f}" in line
    assert summary["hook_seconds"] > 0
    events = tf.compat.v1.train.summary_iterator
    tags = {
        value.tag
        for path in (tmp_path / artifacts.LOG_DIR).iterdir()
        for event in events(str(path))
        for value in event.summary.value
    }
    assert "knn_top1" in tags


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


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_a_damaged_checkpoint_is_listed_in_the_summary(tmp_path):
    args = [
        f"--flagfile={ROOT}/flags/demo.cfg",
        *FAST,
        "--checkpoint_every=2",
        f"--model_dir={tmp_path}",
    ]
    pretrain.run(parse(*args, "--steps=4"), verbose=False)
    (data,) = (tmp_path / "checkpoints").glob("ckpt-4.data-*")
    _truncate(data)
    summary = pretrain.run(parse(*args, "--steps=6"), verbose=False)
    assert summary["start_step"] == 2 and summary["steps"] == 6
    (damaged,) = summary["checkpoints"]["damaged"]
    assert damaged["checkpoint"] == "ckpt-4"
    assert (tmp_path / "checkpoints" / "damaged" / "1" / data.name).exists()
    with open(tmp_path / artifacts.SUMMARY_FILE) as f:
        assert json.load(f)["checkpoints"]["damaged"] == [damaged]


@pytest.mark.slow
def test_all_checkpoints_damaged_exits_1_and_restart_starts_over(tmp_path):
    args = [
        "--flagfile=flags/demo.cfg",
        *FAST,
        "--steps=4",
        "--checkpoint_every=2",
        f"--model_dir={tmp_path}",
    ]
    pretrain.run(parse(*args), verbose=False)
    (tmp_path / artifacts.SUMMARY_FILE).unlink()
    for data in (tmp_path / "checkpoints").glob("ckpt-*.data-*"):
        _truncate(data)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    process = cli(*args)
    output = process.communicate(timeout=START_TIMEOUT)[0]
    assert process.returncode == 1, output[-3000:]
    errors = [line for line in output.splitlines() if "error:" in line]
    assert errors[-1].startswith(f"error: --model_dir: {tmp_path}")
    assert "Traceback" not in output and "--restart=true" in errors[-1]
    after = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert after == before
    process = cli(*args, "--restart=true")
    output = process.communicate(timeout=START_TIMEOUT)[0]
    assert process.returncode == 0, output[-3000:]
    with open(tmp_path / artifacts.SUMMARY_FILE) as f:
        summary = json.load(f)
    assert summary["start_step"] == 0 and summary["steps"] == 4
    replaced = tmp_path / "checkpoints" / "replaced" / "1"
    for path, content in before.items():
        if path.parent.name == "checkpoints" and path.name != "checkpoint":
            assert (replaced / path.name).read_bytes() == content


# flags/v2.cfg's encoder made narrow: everything else as the paper has it.
NARROW_ENCODER = (
    "--encoder_depth=0",
    "--encoder_blocks=1,1,1",
    "--encoder_widths=4,4,4",
    "--encoder_output_widths=8,8,16",
    "--stem_width=8",
    "--context_hidden=16",
)
PAPER_SCALE = os.environ.get("CPC_TF_PAPER_SCALE") == "1"


def _two_v2_steps(model_dir, *overrides):
    """Two steps of two images of `flags/v2.cfg` on mock ImageNet, in a
    process of its own; returns `(summary, config)`."""
    process = cli(
        "--flagfile=flags/v2.cfg",
        *overrides,
        "--steps=2",
        "--batch_size=2",
        f"--model_dir={model_dir}",
        program=("tests/scripts/pretrain_mock_tfds.py",),
    )
    output = process.communicate(timeout=3600)[0]
    assert process.returncode == 0, output[-3000:]
    assert (model_dir / artifacts.ENCODER_FILE).exists()
    assert (model_dir / "checkpoints" / "ckpt-2.index").exists()
    with open(model_dir / artifacts.SUMMARY_FILE) as f:
        summary = json.load(f)
    with open(model_dir / artifacts.CONFIG_FILE) as f:
        config = json.load(f)
    assert summary["steps"] == 2 and summary["replicas"] == 1
    assert summary["first_loss"] > 0 and summary["skipped_images"] == 0
    assert config["data"]["train_data"] == "tfds:imagenet2012:train"
    return summary, config


@pytest.mark.slow
def test_v2_flagfile_two_steps_on_mock_imagenet(tmp_path):
    # The paper's flagfile (TFDS imagenet2012, 300/260/80/36, per-patch
    # augmentation, 7x7 stem with pooling, four directions, five context
    # blocks, Adam + clip + EMA, mirrored strategy) with a narrow encoder;
    # ResNet-161's own size and geometry are tested in test_encoders.
    _, config = _two_v2_steps(tmp_path / "v2", *NARROW_ENCODER)
    data = config["data"]
    assert (data["image_size"], data["crop_size"]) == (300, 260)
    assert (data["patch_size"], data["patch_stride"]) == (80, 36)
    assert config["model"]["context_blocks"] == 5


@pytest.mark.slow
@pytest.mark.skipif(
    not PAPER_SCALE,
    reason="CPC_TF_PAPER_SCALE=1 runs the ResNet-161 (16 GB of RAM)",
)
def test_v2_flagfile_as_shipped_two_steps_on_mock_imagenet(tmp_path):
    # The flagfile as it is, ResNet-161 included: ~16 GB and 7.6 GB of
    # files, 3 to 8 minutes on 2 cores; not in CI (README).
    model_dir = tmp_path / "v2"
    try:
        summary, config = _two_v2_steps(model_dir)
        assert 300e6 <= summary["parameters"] <= 310e6
        assert config["model"]["encoder_depth"] == 161
    finally:
        shutil.rmtree(model_dir, ignore_errors=True)
