"""Multi-worker training on loopback, preemption, static gathers."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from cpc_tf.config import FlagError
from cpc_tf.training import distribute

SCRIPT = os.path.join(os.path.dirname(__file__), "scripts", "train_tiny.py")
ENV = dict(os.environ, CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2")


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


def start_workers(model_dir, out_dir, *extra):
    cluster = {"worker": [f"127.0.0.1:{p}" for p in free_ports(2)]}
    workers = []
    for index in range(2):
        tf_config = {
            "cluster": cluster,
            "task": {"type": "worker", "index": index},
        }
        workers.append(
            subprocess.Popen(
                [
                    sys.executable,
                    SCRIPT,
                    str(model_dir),
                    str(out_dir / f"worker{index}.npz"),
                    "multi_worker",
                    *extra,
                ],
                env=dict(ENV, TF_CONFIG=json.dumps(tf_config)),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    return workers


def finish(workers, timeout):
    outputs = [w.communicate(timeout=timeout)[0] for w in workers]
    for worker, output in zip(workers, outputs):
        assert worker.returncode == 0, output[-3000:]
    return outputs


def single_process_weights(tmp_path):
    reference = subprocess.run(
        [
            sys.executable,
            SCRIPT,
            str(tmp_path / "single"),
            str(tmp_path / "single.npz"),
            "default",
        ],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert reference.returncode == 0, reference.stderr[-3000:]
    return load_weights(tmp_path / "single.npz")


@pytest.mark.slow
def test_two_workers_on_loopback_match_one_process(tmp_path):
    workers = start_workers(tmp_path / "run", tmp_path)
    finish(workers, timeout=240)
    first = load_weights(tmp_path / "worker0.npz")
    second = load_weights(tmp_path / "worker1.npz")
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(first, single_process_weights(tmp_path)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    # Only the chief (worker 0) wrote the model directory.
    names = sorted(os.listdir(tmp_path / "run"))
    assert names == ["checkpoints", "logs"], names


def wait_for(paths, processes, timeout=240):
    deadline = time.time() + timeout
    while not all(os.path.exists(p) for p in paths):
        for process in processes:
            if process.poll() is not None:
                raise AssertionError(process.stdout.read()[-3000:])
        assert time.time() < deadline, f"no {paths} after {timeout} s"
        time.sleep(0.05)


@pytest.mark.slow
def test_sigterm_to_one_worker_stops_both_and_resumes_exactly(tmp_path):
    model_dir = tmp_path / "run"
    workers = start_workers(model_dir, tmp_path, "--pause")
    paused = [model_dir / f"paused_worker{i}" for i in range(2)]
    wait_for(paused, workers)
    workers[1].send_signal(signal.SIGTERM)
    (model_dir / "go").touch()
    start = time.time()
    outputs = finish(workers, timeout=60)
    assert time.time() - start < 60
    for output in outputs:
        assert "preempted at step 6" in output, "\n=====\n".join(
            o[-600:] for o in outputs
        )
    # One checkpoint for all, in the chief's directory; no worker temp.
    checkpoints = tf.train.get_checkpoint_state(model_dir / "checkpoints")
    assert checkpoints.model_checkpoint_path.endswith("ckpt-6")
    assert not any(n.startswith("workertemp") for n in os.listdir(model_dir))
    finish(start_workers(model_dir, tmp_path), timeout=240)
    resumed = load_weights(tmp_path / "worker0.npz")
    for a, b in zip(resumed, single_process_weights(tmp_path)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_sigterm_inside_a_long_loop_stops_both_workers_within_a_step(
    tmp_path,
):
    # 50 steps per compiled call (all 12 in one): worker 1 is signalled
    # while producing batch 3; both stop at most one step past the step
    # in flight then, save one checkpoint and resume exactly.
    model_dir = tmp_path / "run"
    workers = start_workers(
        model_dir, tmp_path, "--steps_per_loop=50", "--signal_at=3"
    )
    outputs = finish(workers, timeout=240)
    seen = int((model_dir / "signalled_at").read_text())
    stopped = [
        int(line.split()[-1])
        for output in outputs
        for line in output.splitlines()
        if line.startswith("preempted at step")
    ]
    assert len(stopped) == 2 and stopped[0] == stopped[1], outputs
    assert seen <= stopped[0] <= seen + 2 < 12
    checkpoints = tf.train.get_checkpoint_state(model_dir / "checkpoints")
    assert checkpoints.model_checkpoint_path.endswith(f"ckpt-{stopped[0]}")
    finish(start_workers(model_dir, tmp_path, "--steps_per_loop=50"), 240)
    resumed = load_weights(tmp_path / "worker0.npz")
    for a, b in zip(resumed, single_process_weights(tmp_path)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_batch_not_divisible_by_replicas(two_replicas):
    with pytest.raises(FlagError, match="--batch_size: 5"):
        distribute.check_batch_size(two_replicas, 5)
    assert distribute.check_batch_size(two_replicas, 6) == 3


def test_unknown_strategy():
    with pytest.raises(FlagError, match="--strategy"):
        distribute.make_strategy("parameter_server")


def test_gather_slots_compile_with_a_tensor_replica_id():
    # On TPU the replica id is a tensor: placing and merging the slots must
    # have static shapes for XLA (a pad by `replica * B` would not).
    values = tf.reshape(tf.range(24, dtype=tf.float32), [2, 3, 4])

    @tf.function(jit_compile=True)
    def place(values, replica):
        return distribute.place_in_slot(values, replica, 3)

    @tf.function(jit_compile=True)
    def merge(summed, values, replica):
        return distribute.merge_slot(summed, values, replica, 3)

    slots = [place(values + 100 * r, tf.constant(r)) for r in range(3)]
    summed = tf.add_n(slots)
    assert slots[0].shape == (3, 2, 3, 4)
    merged = merge(summed, values + 100, tf.constant(1))
    expected = tf.concat([values, values + 100, values + 200], axis=0)
    np.testing.assert_array_equal(merged.numpy(), expected.numpy())
    with tf.GradientTape() as tape:
        tape.watch(values)
        out = merge(summed, values, tf.constant(2))
    gradient = tape.gradient(out, values)
    np.testing.assert_array_equal(gradient.numpy(), np.ones((2, 3, 4)))


@pytest.mark.slow
def test_workers_fall_back_together_to_the_chiefs_good_checkpoint(tmp_path):
    model_dir = tmp_path / "run"
    every = "--checkpoint_every=4"
    finish(start_workers(model_dir, tmp_path, "--steps=8", every), 240)
    checkpoints = model_dir / "checkpoints"
    (data,) = checkpoints.glob("ckpt-8.data-*")
    data.write_bytes(data.read_bytes()[:100])
    outputs = finish(start_workers(model_dir, tmp_path, every), 240)
    assert all("done 12" in output for output in outputs), outputs
    # Both restored ckpt-4 (the chief's choice): the weights are those of
    # an uninterrupted single process, not a mix.
    first = load_weights(tmp_path / "worker0.npz")
    second = load_weights(tmp_path / "worker1.npz")
    for a, b, c in zip(first, second, single_process_weights(tmp_path)):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_allclose(a, c, rtol=1e-4, atol=1e-6)
    assert (checkpoints / "damaged" / "1" / data.name).exists()
    assert not (checkpoints / "damaged" / "2").exists()
