"""SIGTERM handling, from the first line of an entry point to its end.

A preempted job gets SIGTERM, possibly while it is still importing
TensorFlow, building models or tracing the first step (minutes for
ResNet-161 on a TPU host). `install` replaces the default action (which
kills the process with -15) by a flag as soon as `python -m cpc_tf.<entry
point>` starts (`cpc_tf/__init__.py` calls it); the entry point checks the
flag at safe points during start-up (`check`). A preempted run exits 0
with a "preempted" message, with a checkpoint when a step ran since the
last one.

Python runs a signal handler only when the main thread runs Python code,
not while it waits in a compiled TensorFlow loop of `--steps_per_loop`
steps. So the signal also wakes a watcher thread at once (through
`signal.set_wakeup_fd`), which sets the flag and calls the callbacks
registered with `on_request`: the trainer's sets a variable that its
compiled loop reads before every step.

A Google Compute Engine VM or Cloud TPU VM also announces maintenance on
its metadata server (`instance/maintenance-event`) before it acts:
`watch_maintenance` long-polls it in a daemon thread and treats any value
but NONE like SIGTERM (TF's `PreemptionCheckpointHandler` is not used: on
Cloud TPU it only logs that it is unsupported, and it wants one step per
call and its own checkpoint manager).

This module does not import TensorFlow, so installing it costs nothing.
"""

import contextlib
import json
import os
import signal
import threading
import urllib.error
import urllib.parse
import urllib.request

# The GCE / Cloud TPU VM metadata server's maintenance notice.
MAINTENANCE_URL = (
    "http://metadata.google.internal/computeMetadata/v1/instance/"
    "maintenance-event"
)
_GCE_PRODUCT_FILE = "/sys/class/dmi/id/product_name"

_state = {"requested": False, "installed": False, "wakeup_fd": None}
# Not a signal number: the marker `_flush_watcher` sends through the pipe.
_FLUSH = 0
_callbacks = []
_lock = threading.Lock()


class Preempted(Exception):
    """SIGTERM arrived before training started: nothing to save."""


def request():
    """Sets the flag and calls the `on_request` callbacks (once each
    time it is called; they must be idempotent)."""
    with _lock:
        _state["requested"] = True
        callbacks = list(_callbacks)
    for callback in callbacks:
        callback()


def _handler(signum, frame):
    del signum, frame
    request()


def _watch(read_fd):
    while True:
        try:
            data = os.read(read_fd, 64)
        except OSError:
            return
        if not data:
            return
        if signal.SIGTERM in data:
            request()
        if _FLUSH in data:
            _state["flushed"].set()


def _flush_watcher():
    """Waits until the watcher thread has handled every signal written to
    its pipe so far (a marker byte after them comes back), so that no
    SIGTERM of a finished `watching` context reaches a later one."""
    if _state["wakeup_fd"] is None:
        return
    _state["flushed"] = threading.Event()
    os.write(_state["wakeup_fd"], bytes([_FLUSH]))
    _state["flushed"].wait(timeout=60)


def _wake_on_signal():
    """Makes a signal wake a daemon thread (main thread only); returns
    the wakeup fd it replaces (-1: none)."""
    if _state["wakeup_fd"] is None:
        read_fd, write_fd = os.pipe()
        os.set_blocking(write_fd, False)
        thread = threading.Thread(
            target=_watch, args=(read_fd,), name="sigterm-watcher", daemon=True
        )
        thread.start()
        _state["wakeup_fd"] = write_fd
    return signal.set_wakeup_fd(_state["wakeup_fd"], warn_on_full_buffer=False)


@contextlib.contextmanager
def on_request(callback):
    """Within this context `callback()` runs when SIGTERM arrives (from
    the watcher thread, while the main thread may be in a compiled
    loop), and at once when it has already arrived."""
    with _lock:
        _callbacks.append(callback)
        already = _state["requested"]
    if already:
        callback()
    try:
        yield
    finally:
        with _lock:
            _callbacks.remove(callback)


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
        _wake_on_signal()
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
    previous_fd = _wake_on_signal()
    _flush_watcher()
    _state["requested"] = False
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.set_wakeup_fd(previous_fd)
        _flush_watcher()
        _state["requested"] = False


def on_google_cloud():
    """Whether this machine is a GCE or Cloud TPU VM (its DMI name)."""
    try:
        with open(_GCE_PRODUCT_FILE) as f:
            return "Google" in f.read()
    except OSError:
        return False


def _poll_maintenance(url, timeout):
    """Long-polls `url` until its value is not NONE, then requests a stop.

    Returns quietly when the server cannot be reached (no retries: a
    machine without the server has no notices to give)."""
    etag = "0"
    while True:
        query = urllib.parse.urlencode(
            dict(wait_for_change="true", last_etag=etag)
        )
        ask = urllib.request.Request(
            f"{url}?{query}", headers={"Metadata-Flavor": "Google"}
        )
        try:
            with urllib.request.urlopen(ask, timeout=timeout) as reply:
                value = reply.read().decode().strip()
                etag = reply.headers.get("ETag", etag)
        except TimeoutError:
            continue
        except (OSError, urllib.error.URLError):
            return
        if value and value != "NONE":
            request()
            return


def watch_maintenance(url="auto", timeout=3600.0):
    """Starts watching the cloud's maintenance notice; returns the thread
    or None.

    Args:
        url: the metadata value to long-poll; "auto" watches
            `MAINTENANCE_URL` on a Google Cloud VM only; "" or "none": off.
        timeout: seconds of one long poll before it is renewed.
    """
    if url == "auto":
        url = MAINTENANCE_URL if on_google_cloud() else ""
    if not url or url == "none":
        return None
    running = _state.get("maintenance_watcher")
    if running is not None and running.is_alive():
        return running
    thread = threading.Thread(
        target=_poll_maintenance,
        args=(url, timeout),
        name="maintenance-watcher",
        daemon=True,
    )
    thread.start()
    _state["maintenance_watcher"] = thread
    return thread
