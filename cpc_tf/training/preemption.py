"""SIGTERM handling, from the first line of an entry point to its end.

A preempted job gets SIGTERM, possibly while it is still importing
TensorFlow, building models or tracing the first step (minutes for
ResNet-161 on a TPU host). `install` replaces the default action (which
kills the process with -15) by a flag as soon as `python -m cpc_tf.<entry
point>` starts (`cpc_tf/__init__.py` calls it); the entry point checks the
flag at safe points during start-up (`check`) and the trainer before and
after every compiled loop. A preempted run exits 0 with a "preempted"
message, with a checkpoint when a step ran since the last one.

This module does not import TensorFlow, so installing it costs nothing.
"""

import contextlib
import json
import os
import signal
import threading

_state = {"requested": False, "installed": False}


class Preempted(Exception):
    """SIGTERM arrived before training started: nothing to save."""


def _handler(signum, frame):
    del signum, frame
    _state["requested"] = True


def _main_thread():
    return threading.current_thread() is threading.main_thread()


def install():
    """Watches SIGTERM for the rest of the process (entry points only).

    Safe to call again, and `watching` does: TensorFlow's coordination
    service (multi-worker strategies) installs a C++ SIGTERM handler of
    its own when it starts, which this takes the signal back from.
    """
    if _main_thread():
        signal.signal(signal.SIGTERM, _handler)
        _state["installed"] = True


def requested():
    """Whether SIGTERM has arrived."""
    return _state["requested"]


def _workers_in_tf_config():
    cluster = json.loads(os.environ.get("TF_CONFIG") or "{}").get("cluster")
    return sum(len((cluster or {}).get(job, ())) for job in ("chief", "worker"))


def check(num_workers=None):
    """Raises `Preempted` when SIGTERM has arrived (a safe point).

    In a multi-worker cluster (`num_workers` > 1; default: from TF_CONFIG)
    it does nothing: the trainer then stops every worker together after
    one more step, so none waits in a collective.
    """
    if num_workers is None:
        num_workers = max(1, _workers_in_tf_config())
    if _state["requested"] and num_workers == 1:
        raise Preempted("SIGTERM before the work was done")


@contextlib.contextmanager
def watching():
    """SIGTERM sets the flag within this context.

    For library use (a `Trainer` outside an entry point): installs the
    handler for the duration, with a fresh flag, and restores the previous
    handler after. Under an entry point (`install`), it changes nothing.
    """
    if not _main_thread():
        yield
        return
    if _state["installed"]:
        install()
        yield
        return
    previous = signal.signal(signal.SIGTERM, _handler)
    _state["requested"] = False
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        _state["requested"] = False
