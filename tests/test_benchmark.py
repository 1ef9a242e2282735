"""`python -m cpc_tf.benchmark`: the table, the JSON and clean errors."""

import json
import os
import subprocess
import sys

import pytest
from helpers import ROOT

from cpc_tf.benchmarking import runner


def _benchmark(*args):
    """Runs `python -m cpc_tf.benchmark ARGS`; returns the process."""
    return subprocess.run(
        [sys.executable, "-m", "cpc_tf.benchmark", *args],
        cwd=ROOT,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=300,
    )


def test_bad_flag_fails_in_one_line_before_any_work(tmp_path):
    output = tmp_path / "bench.json"
    process = _benchmark(
        "--configs=demo",
        "--precisions=float16",
        f"--output={output}",
    )
    assert process.returncode == 1
    assert "error: --precisions" in process.stdout
    assert "Traceback" not in process.stdout
    assert "USAGE" not in process.stdout
    assert not output.exists()


@pytest.mark.slow
def test_cli_writes_every_required_field(tmp_path):
    output = tmp_path / "bench.json"
    process = _benchmark(
        "--configs=demo",
        "--precisions=float32",
        "--steps=2",
        "--warmup_steps=1",
        "--batch_size=8",
        "--set=demo:--shuffle_buffer=64",
        "--pipeline_seconds=0.5",
        "--matmul_size=512",
        f"--output={output}",
    )
    assert process.returncode == 0, process.stdout[-3000:]
    with open(output) as f:
        records = json.load(f)["records"]
    assert len(records) == 1
    record = records[0]
    assert "error" not in record, record["error"]
    assert set(runner.REQUIRED_KEYS) <= set(record)
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
