"""SIGTERM handling from the start of an entry point."""

import os
import signal

import pytest

from cpc_tf.training import preemption


@pytest.fixture
def clean_state():
    previous = signal.getsignal(signal.SIGTERM)
    state = dict(preemption._state)
    yield
    signal.signal(signal.SIGTERM, previous)
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
