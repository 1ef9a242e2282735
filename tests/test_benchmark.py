"""The performance benchmark: FLOP counter, matmul peak, CLI output."""

import json
import os
import subprocess
import sys

import keras
import pytest
import tensorflow as tf
from absl import app

from cpc_tf import benchmark

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_dense_flops_match_a_hand_count():
    batch, units_in, units_out = 8, 16, 4
    layer = keras.layers.Dense(units_out, dtype="float32")
    layer.build((batch, units_in))

    def forward_backward(x):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(layer(x))
        return loss, tape.gradient(loss, layer.trainable_variables)

    flops = benchmark.count_flops(
        forward_backward, tf.TensorSpec([batch, units_in])
    )
    # Forward and kernel gradient; the input gradient is never needed.
    assert flops["MatMul"] == 2 * (2 * batch * units_in * units_out)
    assert flops["BiasAdd"] == batch * units_out


def test_conv_flops_match_a_hand_count():
    batch, size, c_in, c_mid, c_out = 2, 6, 3, 5, 7
    convs = [
        keras.layers.Conv2D(
            width, 3, padding="same", use_bias=False, dtype="float32"
        )
        for width in (c_mid, c_out)
    ]
    model = keras.Sequential([keras.Input((size, size, c_in)), *convs])

    def forward_backward(x):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(model(x))
        return loss, tape.gradient(loss, model.trainable_variables)

    flops = benchmark.count_flops(
        forward_backward, tf.TensorSpec([batch, size, size, c_in])
    )
    first = 2 * batch * size * size * 9 * c_in * c_mid
    second = 2 * batch * size * size * 9 * c_mid * c_out
    assert flops["Conv2D"] == first + second
    assert flops["Conv2DBackpropFilter"] == first + second
    # Only the second convolution needs its input's gradient.
    assert flops["Conv2DBackpropInput"] == second


def test_flops_in_a_loop_are_refused():
    def looped(x):
        return tf.while_loop(
            lambda i, y: i < 3, lambda i, y: (i + 1, y @ x), (0, x)
        )[1]

    with pytest.raises(ValueError, match="While"):
        benchmark.count_flops(looped, tf.TensorSpec([4, 4]))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_matmul_peak_is_a_plausible_rate(dtype):
    rate = benchmark.matmul_peak(dtype, size=256, repeats=2)
    assert 1e8 < rate < 1e15


def test_logits_size_of_the_cifar10_config():
    config = benchmark.parse_config([f"--flagfile={ROOT}/flags/cifar10.cfg"])
    # 4 directions x offset 3: [64 * 3 * 6, 64 * 36] float32 each.
    expected = 4 * (64 * 3 * 6) * (64 * 36) * 4 / 2**20
    assert benchmark.logits_megabytes(config, 64) == pytest.approx(expected)
    assert benchmark.logits_megabytes(config, 128) == pytest.approx(
        4 * expected
    )


def test_missing_source_reads_the_stand_in():
    config = benchmark.parse_config(
        [
            f"--flagfile={ROOT}/flags/demo.cfg",
            "--train_data=tfrecord:/nonexistent/train-*.tfrecord",
        ]
    )
    config = benchmark._with_available_source(config, "mnist5k:train")
    assert config.data.train_data == "mnist5k:train"


def test_precision_names():
    assert benchmark.split_precision("float32") == ("float32", False)
    assert benchmark.split_precision("mixed_bfloat16_jit") == (
        "mixed_bfloat16",
        True,
    )
    with pytest.raises(app.UsageError, match="--precisions"):
        benchmark.split_precision("float16")


@pytest.mark.slow
def test_cli_writes_every_required_field(tmp_path):
    output = tmp_path / "bench.json"
    process = subprocess.run(
        [
            sys.executable,
            "-m",
            "cpc_tf.benchmark",
            "--configs=demo",
            "--precisions=float32",
            "--steps=2",
            "--warmup_steps=1",
            "--batch_size=8",
            "--set=demo:--shuffle_buffer=64",
            "--pipeline_seconds=0.5",
            "--matmul_size=512",
            f"--output={output}",
        ],
        cwd=ROOT,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=300,
    )
    assert process.returncode == 0, process.stdout[-3000:]
    with open(output) as f:
        records = json.load(f)["records"]
    assert len(records) == 1
    record = records[0]
    assert "error" not in record, record["error"]
    assert set(benchmark.REQUIRED_KEYS) <= set(record)
    assert (record["config"], record["precision"]) == ("demo", "float32")
    assert (record["batch_size"], record["steps"]) == (8, 2)
    assert len(record["step_seconds"]) == 2
    assert record["patches_per_s"] == pytest.approx(36 * record["images_per_s"])
    assert 0 < record["mfu"] < 1
    assert record["achieved_flops"] == pytest.approx(
        record["flops_per_image"] * record["images_per_s"]
    )
    assert record["pipeline_images_per_s"] > 0
    assert record["peak_memory_mb"] >= record["baseline_memory_mb"] > 0
    assert "demo" in process.stdout and "MFU" in process.stdout
