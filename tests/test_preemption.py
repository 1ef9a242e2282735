"""SIGTERM handling from the start of an entry point, and the watcher
thread that sees it while the main thread waits in compiled code."""

import os
import signal
import threading

import pytest

from cpc_tf.training import preemption


@pytest.fixture
def clean_state():
    previous = signal.getsignal(signal.SIGTERM)
    previous_fd = signal.set_wakeup_fd(-1)
    signal.set_wakeup_fd(previous_fd)
    state = {k: v for k, v in preemption._state.items() if k != "wakeup_fd"}
    yield
    signal.signal(signal.SIGTERM, previous)
    signal.set_wakeup_fd(previous_fd)
    preemption._flush_watcher()  # no signal of the test acts later
    preemption._state.update(state)


def test_install_turns_sigterm_into_a_flag(clean_state):
    preemption.install()
    preemption.check()  # nothing yet
    os.kill(os.getpid(), signal.SIGTERM)
    assert preemption.requested()
    with pytest.raises(preemption.Preempted):
        preemption.check()
    # In a multi-worker cluster the trainer stops all workers together.
    preemption.check(num_workers=2)


def test_watching_is_scoped_for_library_use(clean_state):
    preemption._state.update(requested=False, installed=False)
    with preemption.watching():
        os.kill(os.getpid(), signal.SIGTERM)
        assert preemption.requested()
    assert not preemption.requested()
    assert signal.getsignal(signal.SIGTERM) is not preemption._handler
    assert signal.set_wakeup_fd(-1) == -1  # the previous one, restored
    # The watcher has handled the signal: it cannot set the flag later.
    with preemption.watching():
        assert not preemption.requested()


def test_callbacks_run_on_the_signal(
    clean_state,
):
    # The callbacks run on the signal, from whichever thread sees it first
    # (the trainer's test shows the watcher acting while the main thread
    # is inside a compiled loop, where no Python handler can run).
    preemption._state.update(requested=False, installed=False)
    called = threading.Event()
    with preemption.watching(), preemption.on_request(called.set):
        threading.Thread(
            target=os.kill, args=(os.getpid(), signal.SIGTERM)
        ).start()
        assert called.wait(timeout=60)
        assert preemption.requested()
        # Registered after the signal: called at once.
        again = threading.Event()
        with preemption.on_request(again.set):
            assert again.is_set()


class MetadataServer:
    """A stand-in for the GCE metadata server's maintenance-event: answers
    NONE until `announce()`, holding each long poll until it changes."""

    def __init__(self):
        import http.server

        self.value, self.changed = "NONE", threading.Event()
        self.headers_seen = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                server.headers_seen.append(self.headers.get("Metadata-Flavor"))
                if "wait_for_change=true" in self.path and "etag=0" not in (
                    self.path
                ):
                    server.changed.wait(timeout=60)
                body = server.value.encode()
                self.send_response(200)
                self.send_header("ETag", str(len(server.headers_seen)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                del args

        self.http = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_port}/maintenance"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    def announce(self, value="TERMINATE_ON_HOST_MAINTENANCE"):
        self.value = value
        self.changed.set()

    def close(self):
        self.changed.set()
        self.http.shutdown()


def test_a_maintenance_notice_stops_like_sigterm(clean_state):
    preemption._state.update(requested=False, maintenance_watcher=None)
    server = MetadataServer()
    called = threading.Event()
    try:
        with preemption.on_request(called.set):
            thread = preemption.watch_maintenance(server.url, timeout=60)
            assert preemption.watch_maintenance(server.url) is thread
            assert not called.is_set()
            server.announce()
            assert called.wait(timeout=60) and preemption.requested()
        thread.join(timeout=60)
        assert not thread.is_alive()
        assert set(server.headers_seen) == {"Google"}
    finally:
        server.close()


def test_no_server_no_watcher(clean_state):
    preemption._state.update(requested=False, maintenance_watcher=None)
    assert preemption.watch_maintenance("none") is None
    # An address nothing listens on: the watcher ends, nothing requested.
    thread = preemption.watch_maintenance("http://127.0.0.1:9/x", timeout=5)
    thread.join(timeout=60)
    assert not thread.is_alive() and not preemption.requested()
