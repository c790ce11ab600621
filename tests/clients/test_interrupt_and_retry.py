"""Ctrl-C deferred to safe points (clients/interrupt.py) and which failures a client retries."""

import os
import signal
import threading

import pytest

from cycada.clients.interrupt import DeferredInterrupt


@pytest.fixture
def default_sigint():
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_sigint_only_sets_the_flag_and_check_raises(default_sigint):
    with DeferredInterrupt() as interrupt:
        interrupt.check()  # nothing pressed yet
        os.kill(os.getpid(), signal.SIGINT)  # would raise KeyboardInterrupt right here otherwise
        assert interrupt.requested.wait(5)
        with pytest.raises(KeyboardInterrupt):
            interrupt.check()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_custom_handler_is_left_alone(default_sigint):
    seen = []
    signal.signal(signal.SIGINT, lambda *_: seen.append(1))
    with DeferredInterrupt() as interrupt:
        os.kill(os.getpid(), signal.SIGINT)
        interrupt.check()  # the caller's handler took it
    assert seen == [1]


def test_outside_the_main_thread_nothing_is_installed(default_sigint):
    handlers = []

    def enter():
        with DeferredInterrupt():
            handlers.append(signal.getsignal(signal.SIGINT))

    thread = threading.Thread(target=enter)
    thread.start()
    thread.join()
    assert handlers == [signal.default_int_handler]


def test_an_unloading_model_is_retried_a_refused_secret_is_not():
    from tritonclient.utils import InferenceServerException

    from cycada.clients.triton_client import retryable

    def error(message, status):
        return InferenceServerException(message, status=status)

    unloading = "Request for unknown model: 'segment' has no available versions"
    assert retryable(error(unloading, "StatusCode.NOT_FOUND"))  # a graceful shutdown, a reload
    assert retryable(error("connection reset", "StatusCode.UNAVAILABLE"))
    assert not retryable(error("This protocol is restricted", "StatusCode.UNAVAILABLE"))
    assert not retryable(error("unexpected shape", "StatusCode.INVALID_ARGUMENT"))
