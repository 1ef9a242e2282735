"""Running a report's stages: in this process, in a process of their own,
or several at once in long-lived worker processes, each with its share
of the cores.

A stage (`reporting.Stage`) is one run of a protocol
(`protocols.registry`) with its arguments. Small networks on a few cores
use them poorly from one process (per-op overhead, little intra-op
parallelism), so independent stages side by side, each with
`cores // workers` threads, finish sooner. Each worker (`python -m
cpc_tf.reporting.stages`) imports TensorFlow once and runs its stages one
after another in itself, as the report does in-process: a stage costs its
own work, not a TensorFlow start-up (about 8 s).
"""

import concurrent.futures
import contextlib
import json
import os
import queue
import subprocess
import sys
import time
import traceback
import types

import keras
import tensorflow as tf
from absl import flags, logging

from cpc_tf.protocols import registry


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


def _command(stage):
    entry_point = registry.entry_point(stage.protocol)
    return [sys.executable, "-m", entry_point, *stage.args]


def command_line(stage):
    """The shell command that runs `stage` on its own."""
    return " ".join(_command(stage))


def _tail(text, lines=40):
    return "".join(text.splitlines(keepends=True)[-lines:])


def run_in_subprocess(stage, log_path):
    """Runs one stage's entry point in a subprocess, its output streamed
    to `log_path`; raises with the log's tail on failure."""
    tail = []
    with tf.io.gfile.GFile(log_path, "w") as log:
        log.write(command_line(stage) + "\n")
        process = subprocess.Popen(
            _command(stage),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
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
    TensorFlow start-up per stage); its printed output, and the traceback
    of a failure, go to `log_path`."""
    with tf.io.gfile.GFile(log_path, "w") as log:
        log.write(command_line(stage) + f"\n(in process {os.getpid()})\n")
        try:
            with (
                contextlib.redirect_stdout(log),
                contextlib.redirect_stderr(log),
            ):
                protocol = registry.get(stage.protocol)
                values = flags.FlagValues()
                protocol.define_flags(values)
                values([protocol.entry_point, *stage.args])
                protocol.run_from_flags(values, verbose=False)
        except (Exception, SystemExit):
            log.write(traceback.format_exc())
            raise
        finally:
            keras.backend.clear_session(free_memory=True)


class StageWorker:
    """A process (`python -m cpc_tf.reporting.stages`) that runs stages in
    itself, one after another: TensorFlow starts once per worker. Requests and
    replies are JSON lines on its stdin and stdout; its stderr is this
    process's (TensorFlow's start-up lines, native warnings).

    Args:
        env: its environment (`thread_environment`).
    """

    def __init__(self, env=None):
        self.process = subprocess.Popen(
            [sys.executable, "-m", __name__],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )

    def run(self, stage, log_path):
        """Runs `stage` (its output to `log_path`); raises on failure."""
        request = dict(protocol=stage.protocol, args=stage.args, log=log_path)
        reply = ""
        with contextlib.suppress(BrokenPipeError):
            self.process.stdin.write(json.dumps(request) + "\n")
            self.process.stdin.flush()
            reply = self.process.stdout.readline()
        if not reply:
            code = self.process.wait()
            raise RuntimeError(
                f"Stage {stage.name} failed: its worker process exited "
                f"(exit {code}); its log is {log_path}"
            )
        error = json.loads(reply)["error"]
        if error:
            raise RuntimeError(
                f"Stage {stage.name} failed; its log is {log_path}:\n{error}"
            )

    def close(self):
        """Ends the worker (after its current stage) and waits for it."""
        with contextlib.suppress(BrokenPipeError):
            self.process.stdin.close()
        self.process.wait()


def serve(requests, replies):
    """A worker's loop: runs each JSON request line of `requests` with
    `run_in_process` and answers `{"error": null or its traceback's
    tail}` on `replies`, until `requests` ends."""
    logging.set_verbosity(logging.WARNING)
    for line in requests:
        request = json.loads(line)
        stage = types.SimpleNamespace(
            protocol=request["protocol"], args=tuple(request["args"])
        )
        error = None
        try:
            run_in_process(stage, request["log"])
        except (Exception, SystemExit):
            error = _tail(traceback.format_exc())
        replies.write(json.dumps(dict(error=error)) + "\n")
        replies.flush()


def run_side_by_side(
    stages, log_path, workers, on_start, on_finish, needs=None
):
    """Runs independent `stages` in up to `workers` worker processes at
    once (`StageWorker`).

    Args:
        stages: the stages, started in this order, each as soon as a
            worker is free and what it needs has finished.
        log_path: `stage -> path` of its log.
        workers: processes at once, each with `cores // workers` threads.
        on_start: called with a stage as it starts.
        on_finish: called with a stage and its wall seconds as it ends
            (in this thread, one at a time).
        needs: `stage -> names of stages` (among `stages`) that must
            finish before it starts (default: none).

    After a failure no further stage starts; the running ones finish,
    then the first error is raised.
    """
    needs = needs or (lambda stage: ())
    names = {stage.name for stage in stages}
    pending = list(stages)
    if not pending:
        return
    env = thread_environment(workers)
    processes = [StageWorker(env) for _ in range(min(workers, len(pending)))]
    idle = queue.SimpleQueue()
    for worker in processes:
        idle.put(worker)

    def timed(stage):
        worker = idle.get()
        try:
            start = time.perf_counter()
            worker.run(stage, log_path(stage))
            return time.perf_counter() - start
        finally:
            idle.put(worker)

    def ready(stage):
        return not (set(needs(stage)) & names)

    running = {}
    error = None
    try:
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            while pending or running:
                while len(running) < workers and error is None:
                    stage = next(filter(ready, pending), None)
                    if stage is None:
                        break
                    pending.remove(stage)
                    on_start(stage)
                    running[pool.submit(timed, stage)] = stage
                if not running:
                    if pending and error is None:
                        waiting = ", ".join(stage.name for stage in pending)
                        raise ValueError(
                            f"Stages wait on each other: {waiting}."
                        )
                    break
                done, _ = concurrent.futures.wait(
                    running, return_when=concurrent.futures.FIRST_COMPLETED
                )
                for future in done:
                    stage = running.pop(future)
                    if future.exception() is not None:
                        error = error or future.exception()
                    else:
                        names.discard(stage.name)
                        on_finish(stage, future.result())
    finally:
        for worker in processes:
            worker.close()
    if error is not None:
        raise error


def _serve_main():
    # Replies get this process's stdout; anything else printed to it (a
    # native library's output) goes to stderr, so replies stay parseable.
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    serve(sys.stdin, replies)


if __name__ == "__main__":
    _serve_main()
