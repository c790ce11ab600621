"""Ctrl-C as a flag the long-running client commands check at safe points.

Python raises KeyboardInterrupt between any two bytecodes of the main thread, including inside
``queue.Queue`` and ``threading.Condition`` code, where it can leave a lock held (CPython
bpo-29988): the writer thread then waits forever and the command never finalises its output.
While a :class:`DeferredInterrupt` is active, SIGINT only sets a flag; the command's loops wait
in short polls and call :meth:`DeferredInterrupt.check`, which raises KeyboardInterrupt where no
lock is held. A second Ctrl-C while the output is being finalised cannot abort the
finalisation either.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from types import FrameType

POLL_SECONDS = 0.1  # how long a waiting loop blocks between two checks of the flag


class DeferredInterrupt:
    """Defers SIGINT to :meth:`check` calls while active (main thread, default handler only:
    elsewhere Python's own handling is left alone and :meth:`check` never raises)."""

    def __init__(self) -> None:
        self.requested = threading.Event()
        self._previous = None
        self._cancel: list[Callable[[], None]] = []

    def cancel_on_interrupt(self, cancel: Callable[[], None]) -> None:
        """Call ``cancel`` before :meth:`check` raises: work that would outlast the interrupt
        (requests waiting out a lost server) stops first, so unwinding does not wait for it."""
        self._cancel.append(cancel)

    def __enter__(self) -> DeferredInterrupt:
        in_main = threading.current_thread() is threading.main_thread()
        if in_main and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            self._previous = signal.signal(signal.SIGINT, self._on_sigint)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None

    def _on_sigint(self, signum: int, frame: FrameType | None) -> None:
        self.requested.set()

    def check(self) -> None:
        """Raise KeyboardInterrupt if Ctrl-C was pressed since the interrupt became active."""
        if self.requested.is_set():
            for cancel in self._cancel:
                cancel()
            raise KeyboardInterrupt
