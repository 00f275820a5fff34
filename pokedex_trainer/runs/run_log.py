"""training.log and the console: everything a run prints, kept in its log."""

from __future__ import annotations

import io
import logging
import sys
from contextlib import contextmanager
from pathlib import Path

from pokedex_trainer.user_io.inert_text import plain_text


class _TeeStream(io.TextIOBase):
    """Copy a console stream into the log file, keeping only the final state of each line
    (progress bars redraw with \\r and \\b; the log gets what was last shown)."""

    def __init__(self, console, log_handle, live=None):
        self.console = console
        self.log_handle = log_handle
        self.live = live  # the shared live log (live_log.LiveLog), or None
        self.pending = ""

    def write(self, text: str) -> int:
        self.console.write(text)
        self.pending += text
        while "\n" in self.pending:
            line, self.pending = self.pending.split("\n", 1)
            line = line.split("\r")[-1]
            while "\b" in line:
                i = line.index("\b")
                line = line[:max(0, i - 1)] + line[i + 1:]
            if line.strip():
                line = plain_text(line)  # the log is read with cat too: no escape sequences
                self.log_handle.write(line + "\n")
                self.log_handle.flush()
                if self.live is not None:
                    self.live.write(line)
        return len(text)

    def flush(self) -> None:
        self.console.flush()
        self.log_handle.flush()

    def isatty(self) -> bool:
        return self.console.isatty()

    @property
    def encoding(self):
        return getattr(self.console, "encoding", "utf-8")

    def fileno(self):
        return self.console.fileno()


class _PlainFormatter(logging.Formatter):
    """Log records for a file: control characters in a name shown as text (plain_text)."""

    def format(self, record: logging.LogRecord) -> str:
        return plain_text(super().format(record))


@contextmanager
def capture_to_log(log_path: Path, live=None):
    """Send everything printed (and every log record) to ``log_path`` as well as the console,
    and to ``live`` (the shared live log, see runs/live_log.py) when given."""
    handle = open(log_path, "a", encoding="utf-8")
    old_out, old_err = sys.stdout, sys.stderr
    formatter = _PlainFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    handlers = [logging.StreamHandler(handle)]
    if live is not None:
        handlers.append(live.handler(formatter))
    root = logging.getLogger()
    for handler in handlers:
        handler.setFormatter(formatter)
        root.addHandler(handler)
    sys.stdout = _TeeStream(old_out, handle, live)
    sys.stderr = _TeeStream(old_err, handle, live)
    try:
        yield
    finally:
        sys.stdout, sys.stderr = old_out, old_err
        for handler in handlers:
            root.removeHandler(handler)
        handle.close()


class _ConsoleHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is now, not to the one it was made with: the Python
    API and tests replace stderr between runs, and a handler bound to a closed stream fails."""

    @property
    def stream(self):
        # while a run tees stderr into its training.log, records reach that file through the
        # run's own handler: the console handler writes to the console behind the tee
        return getattr(sys.stderr, "console", sys.stderr)

    @stream.setter
    def stream(self, value):
        pass

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, "log_only", False):  # e.g. a stack trace, kept for a bug report
            return
        super().emit(record)


def setup_console_logging(verbose: bool = False) -> None:
    """Log records to stderr as short lines; called once by each script."""
    root = logging.getLogger()
    if any(getattr(h, "_pokedex", False) for h in root.handlers):
        return
    handler = _ConsoleHandler()
    handler._pokedex = True
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)

