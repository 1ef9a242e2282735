"""Multi-worker training on loopback equals a single-process run."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from cpc_tf import distribute

SCRIPT = os.path.join(os.path.dirname(__file__), "scripts", "train_tiny.py")


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def load_weights(path):
    with np.load(path) as weights:
        return [weights[k] for k in sorted(weights, key=lambda k: int(k[4:]))]


@pytest.mark.slow
def test_two_workers_on_loopback_match_one_process(tmp_path):
    ports = free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2")
    workers = []
    for index in range(2):
        out = tmp_path / f"worker{index}"
        out.mkdir()
        tf_config = {
            "cluster": cluster,
            "task": {"type": "worker", "index": index},
        }
        workers.append(
            subprocess.Popen(
                [sys.executable, SCRIPT, str(out), "multi_worker"],
                env=dict(env, TF_CONFIG=json.dumps(tf_config)),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    single = tmp_path / "single"
    single.mkdir()
    outputs = [w.communicate(timeout=240)[0] for w in workers]
    for worker, output in zip(workers, outputs):
        assert worker.returncode == 0, output[-3000:]
    reference = subprocess.run(
        [sys.executable, SCRIPT, str(single), "default"],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert reference.returncode == 0, reference.stderr[-3000:]
    first = load_weights(tmp_path / "worker0" / "weights.npz")
    second = load_weights(tmp_path / "worker1" / "weights.npz")
    expected = load_weights(single / "weights.npz")
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(first, expected):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_batch_not_divisible_by_replicas():
    strategy = distribute.make_strategy(
        "mirrored", devices=["/cpu:0", "/cpu:1"]
    )
    with pytest.raises(ValueError, match="--batch_size: 5"):
        distribute.check_batch_size(strategy, 5)
    assert distribute.check_batch_size(strategy, 6) == 3


def test_unknown_strategy():
    with pytest.raises(ValueError, match="--strategy"):
        distribute.make_strategy("parameter_server")
