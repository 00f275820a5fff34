"""Ctrl-C during training: end the batch in progress, then stop in plain Python.

A KeyboardInterrupt raised from inside a framework's data pipeline (TensorFlow's prefetch
thread, an XLA callback) can deadlock the process or be swallowed. So the first Ctrl-C only
asks to stop: the backends end the epoch after the current batch, and the core loop raises
KeyboardInterrupt between two steps. A second Ctrl-C stops at once.

SIGTERM (``kill``, ``timeout``, ``docker stop``, Slurm's ``scancel`` and time limit, torchrun
stopping its group) means the same as Ctrl-C: ``terminate_as_interrupt`` makes it raise
KeyboardInterrupt in the scripts, and the graceful context treats it like the first Ctrl-C.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading

logger = logging.getLogger(__name__)

STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM")
                     if hasattr(signal, name))


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def terminate_as_interrupt():
    """SIGTERM raises KeyboardInterrupt (as SIGINT does) while the block runs (main thread)."""
    if not hasattr(signal, "SIGTERM") or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class GracefulInterrupt:
    """A context manager that turns the first SIGINT into a request (``requested``)."""

    def __init__(self):
        self.requested = False
        self._previous = {}

    def __enter__(self) -> "GracefulInterrupt":
        self.requested = False
        if threading.current_thread() is threading.main_thread():
            self._previous = {number: signal.signal(number, self._handle)
                              for number in STOP_SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous = {}

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        logger.warning("%s: stopping after this batch (Ctrl-C again to stop at once)", name)

    def check(self) -> None:
        """Raise KeyboardInterrupt when a stop was asked for."""
        if self.requested:
            raise KeyboardInterrupt


INTERRUPT = GracefulInterrupt()  # the training process's one instance
