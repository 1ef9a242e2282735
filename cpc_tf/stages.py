"""Running a report's stages: in this process, in a process of their own,
or several processes at once, each with its share of the cores.

A stage (`reporting.Stage`) is one run of an entry point with its
arguments. Small networks on a few cores use them poorly from one
process (per-op overhead, little intra-op parallelism), so independent
stages side by side, each with `cores // workers` threads, finish sooner.
"""

import concurrent.futures
import contextlib
import importlib
import os
import subprocess
import sys
import time

import keras
import tensorflow as tf
from absl import flags


def available_cores():
    """The cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def thread_environment(workers):
    """The environment of one of `workers` stage processes: TensorFlow's
    intra- and inter-op pools sized to its share of the cores."""
    threads = str(max(1, available_cores() // workers))
    return dict(
        os.environ,
        TF_NUM_INTRAOP_THREADS=threads,
        TF_NUM_INTEROP_THREADS=threads,
    )


def run_in_subprocess(stage, log_path, env=None):
    """Runs one stage's entry point in a subprocess, its output streamed
    to `log_path`; raises with the log's tail on failure."""
    command = [sys.executable, "-m", stage.module, *stage.args]
    tail = []
    with tf.io.gfile.GFile(log_path, "w") as log:
        log.write(" ".join(command) + "\n")
        process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        for line in process.stdout:
            log.write(line)
            log.flush()
            tail = (tail + [line])[-40:]
        process.wait()
    if process.returncode:
        raise RuntimeError(
            f"Stage {stage.name} failed (exit {process.returncode}); its log "
            f"is {log_path}:\n{''.join(tail)}"
        )


def run_in_process(stage, log_path):
    """Runs one stage's entry point in this process (no interpreter and
    TensorFlow start-up per stage); its printed output goes to
    `log_path`."""
    module = importlib.import_module(stage.module)
    values = flags.FlagValues()
    module.define_flags(values)
    values([stage.module, *stage.args])
    with tf.io.gfile.GFile(log_path, "w") as log:
        log.write(" ".join(["python -m", stage.module, *stage.args]) + "\n")
        with (
            contextlib.redirect_stdout(log),
            contextlib.redirect_stderr(log),
        ):
            module.run_from_flags(values, verbose=False)
    keras.backend.clear_session(free_memory=True)


def run_side_by_side(stages, log_path, workers, on_start, on_finish):
    """Runs independent `stages` in up to `workers` processes at once.

    Args:
        stages: the stages, started in this order.
        log_path: `stage -> path` of its log.
        workers: processes at once, each with `cores // workers` threads.
        on_start: called with a stage as it starts.
        on_finish: called with a stage and its wall seconds as it ends
            (in this thread, one at a time).

    After a failure no further stage starts; the running ones finish,
    then the first error is raised.
    """
    env = thread_environment(workers)

    def timed(stage):
        start = time.perf_counter()
        run_in_subprocess(stage, log_path(stage), env)
        return time.perf_counter() - start

    pending = list(stages)
    running = {}
    error = None
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        while pending or running:
            while pending and len(running) < workers and error is None:
                stage = pending.pop(0)
                on_start(stage)
                running[pool.submit(timed, stage)] = stage
            if not running:
                break
            done, _ = concurrent.futures.wait(
                running, return_when=concurrent.futures.FIRST_COMPLETED
            )
            for future in done:
                stage = running.pop(future)
                if future.exception() is not None:
                    error = error or future.exception()
                else:
                    on_finish(stage, future.result())
    if error is not None:
        raise error
