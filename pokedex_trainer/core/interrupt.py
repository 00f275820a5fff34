"""Ctrl-C during training: end the batch in progress, then stop in plain Python.

A KeyboardInterrupt raised from inside a framework's data pipeline (TensorFlow's prefetch
thread, an XLA callback) can deadlock the process or be swallowed. So the first Ctrl-C only
asks to stop: the backends end the epoch after the current batch, and the core loop raises
KeyboardInterrupt between two steps. A second Ctrl-C stops at once.
"""

from __future__ import annotations

import logging
import signal
import threading

logger = logging.getLogger(__name__)


class GracefulInterrupt:
    """A context manager that turns the first SIGINT into a request (``requested``)."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self) -> "GracefulInterrupt":
        self.requested = False
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        logger.warning("Ctrl-C: stopping after this batch (Ctrl-C again to stop at once)")

    def check(self) -> None:
        """Raise KeyboardInterrupt when a stop was asked for."""
        if self.requested:
            raise KeyboardInterrupt


INTERRUPT = GracefulInterrupt()  # the training process's one instance
