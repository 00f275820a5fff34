"""Ctrl-C during training: end the batch in progress, then stop in plain Python.

A KeyboardInterrupt raised from inside a framework's data pipeline (TensorFlow's prefetch
thread, an XLA callback) can deadlock the process or be swallowed. So the first Ctrl-C only
asks to stop: the backends end the epoch after the current batch, and the core loop raises
KeyboardInterrupt between two steps. A second Ctrl-C stops at once.

SIGTERM (``kill``, ``timeout``, ``docker stop``, Slurm's ``scancel`` and time limit, torchrun
stopping its group) means the same as Ctrl-C: ``terminate_as_interrupt`` makes it raise
KeyboardInterrupt in the scripts, and the graceful context treats it like the first Ctrl-C.

Python runs those handlers only when the main thread is between two bytecodes: a main thread
stuck inside a framework (an XLA compile, a loader that delivers nothing) never sees them.
``StopDeadline`` does not depend on the main thread: after the first signal it gives the run
a grace time (``POKEDEX_STOP_GRACE`` seconds, 10 by default), then records the run as
interrupted and ends the process (a second signal: at once).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sys
import threading
import time


logger = logging.getLogger(__name__)

STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM")
                     if hasattr(signal, name))
GRACE_ENV = "POKEDEX_STOP_GRACE"
DEFAULT_GRACE_S = 10.0
RECORD_WAIT_S = 5.0  # the most the watcher waits for a record being written, then exits
INTERRUPTED_EXIT_CODE = 130
LOG_ONLY = "log_only"  # a log record's extra: for the run's log file, not the console
_ends_on_stop = False  # inside terminate_as_interrupt: the process ends after a stop
_STOP_WATCHING = b"\0"  # no signal has the number 0
_watching = None  # the StopDeadline whose socket is the wakeup fd


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _only_the_watcher(signum, frame) -> None:
    """A Python handler that does nothing: the signal still reaches the wakeup fd."""


@contextlib.contextmanager
def terminate_as_interrupt():
    """SIGTERM raises KeyboardInterrupt (as SIGINT does) while the block runs (main thread)."""
    global _ends_on_stop
    ends_before, _ends_on_stop = _ends_on_stop, True
    try:
        if not hasattr(signal, "SIGTERM") or \
                threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = signal.signal(signal.SIGTERM, _raise_interrupt)
        try:
            yield
        except KeyboardInterrupt:
            if _watching is not None:
                # Stopping, and a StopDeadline still covers the way out: a further signal
                # reaches its socket only (a second stop: exit 130 at once), instead of
                # killing the process by signal or raising in the interpreter's teardown.
                for number in STOP_SIGNALS:
                    signal.signal(number, _only_the_watcher)
                previous = _only_the_watcher
            raise
        finally:
            signal.signal(signal.SIGTERM, previous)
    finally:
        _ends_on_stop = ends_before


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
        logger.warning("%s: stopping after this batch (a second Ctrl-C or SIGTERM stops at "
                       "once)", name)

    def check(self) -> None:
        """Raise KeyboardInterrupt when a stop was asked for."""
        if self.requested:
            raise KeyboardInterrupt


INTERRUPT = GracefulInterrupt()  # the training process's one instance


def stop_grace() -> float:
    """Seconds a run may take to stop after the first stop signal (``POKEDEX_STOP_GRACE``)."""
    from pokedex_trainer.user_io.env_values import env_seconds

    return env_seconds(GRACE_ENV, DEFAULT_GRACE_S, zero_allowed=True)


class StopDeadline:
    """Ends the process when a stop signal is not obeyed in time, even while the main thread is
    stuck inside a framework.

    The C-level signal handler writes each signal's number to the wakeup fd
    (``signal.set_wakeup_fd``) whatever the main thread is doing; a daemon thread reads them.
    The first SIGINT/SIGTERM starts the grace time (``stop_grace``); when it runs out, or at a
    second signal, ``record`` runs unless the run is recorded already (``record_once``), then
    the process exits with code 130. The Python handlers still give the graceful stop.

    Args:
        record: writes the run's record as interrupted; called from the watcher thread.
    """

    def __init__(self, record):
        self._record = record
        self._lock = threading.Lock()  # one record, whichever thread gets there first
        self._recorded = False
        self._thread = None
        self.signalled = False

    def __enter__(self) -> "StopDeadline":
        self.grace = stop_grace()
        if threading.current_thread() is not threading.main_thread():
            return self
        reader, writer = socket.socketpair()  # a socket: what Windows accepts too
        writer.setblocking(False)
        try:
            self._previous = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
        except (ValueError, OSError):
            reader.close()
            writer.close()
            return self
        global _watching
        self._reader, self._writer, _watching = reader, writer, self
        self._thread = threading.Thread(target=self._watch, name="stop-deadline", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        # After a stop signal a script is on its way out: the deadline keeps covering its
        # cleanup (loaders, the interpreter's exit). The Python API goes on: stop watching.
        if self._thread is None or (self.signalled and _ends_on_stop):
            return
        global _watching
        signal.set_wakeup_fd(self._previous)
        _watching = None
        with contextlib.suppress(OSError):
            self._writer.send(_STOP_WATCHING)  # a forked child may hold the socket open too
        self._writer.close()
        self._thread = None

    def _forget_in_child(self) -> None:
        """A forked child (a loader worker) must not report its own signals to this watcher:
        a terminal's Ctrl-C reaches the whole group and would count twice."""
        with contextlib.suppress(ValueError, OSError):
            signal.set_wakeup_fd(self._previous)
        self._reader.close()
        self._writer.close()

    def record_once(self, write):
        """Run ``write`` (the run's record) unless the watcher wrote it; returns its result."""
        with self._lock:
            if self._recorded:
                return None
            self._recorded = True
            return write()

    def _watch(self) -> None:
        deadline = None
        while True:
            try:
                self._reader.settimeout(None if deadline is None
                                        else max(0.0, deadline - time.monotonic()))
                data = self._reader.recv(64)
            except socket.timeout:
                self._expire(f"not stopped {self.grace:g} s after the stop signal (stuck "
                             "inside the framework)", stack=True)
            except OSError:
                return
            if not data or _STOP_WATCHING in data:
                self._reader.close()
                return
            self._forward(data)
            # Signals read together are one stop: `timeout` sends SIGTERM to the process and
            # to its group at once, and that is not a user asking twice.
            if not any(number in STOP_SIGNALS for number in data):
                continue
            if deadline is not None:
                self._expire("second stop signal")
            self.signalled = True
            deadline = time.monotonic() + self.grace

    def _forward(self, data: bytes) -> None:
        """Pass the signals on to the wakeup fd this one replaced (an asyncio loop's)."""
        if self._previous != -1:
            try:
                os.write(self._previous, data)
            except OSError:
                pass

    def _expire(self, why: str, stack: bool = False) -> None:
        """Record the run (unless done or being done), then end the process at once. With
        ``stack``, the log says where the main thread was stuck (for a bug report)."""
        backstop = threading.Timer(RECORD_WAIT_S, os._exit, (INTERRUPTED_EXIT_CODE,))
        backstop.daemon = True
        backstop.start()  # a record that hangs (a stuck disk, a held lock) cannot keep it up
        try:
            logger.warning("%s: ending the process now%s", why,
                           " (where it was stuck is in the run's training.log)" if stack else "")
            if stack:  # for a bug report: in the run's log, not on the user's screen
                logger.warning("the main thread was here:\n%s", main_thread_stack(),
                               extra={LOG_ONLY: True})
            if self._lock.acquire(timeout=RECORD_WAIT_S) and not self._recorded:
                self._recorded = True  # the lock stays held: the main thread records nothing
                self._record()
        except BaseException as exc:  # noqa: BLE001 - the exit below must happen
            logger.error("could not record the interrupted run: %s", exc)
        finally:
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(Exception):
                    stream.flush()
            for handler in logging.getLogger().handlers:
                with contextlib.suppress(Exception):
                    handler.flush()
            os._exit(INTERRUPTED_EXIT_CODE)


def main_thread_stack(limit: int = 12) -> str:
    """The innermost ``limit`` frames of the main thread, as a traceback prints them."""
    import traceback

    frame = sys._current_frames().get(threading.main_thread().ident)
    if frame is None:
        return "  (unknown)"
    return "".join(traceback.format_stack(frame)[-limit:]).rstrip()


def _after_fork_in_child() -> None:
    global _watching
    if _watching is not None:
        _watching._forget_in_child()
        _watching = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
