"""The live log in the folder a run is started from: ``training.log``, as the guide follows it.

``Get-Content training.log -Wait -Tail 50`` (PowerShell) or ``tail -f training.log`` shows
every run in progress: each run appends its lines, prefixed with ``[<run name>]``, to one
shared file. It is only ever appended to (never truncated or rewritten), and every line goes
in with one ``write`` on a file opened for appending, so runs side by side interleave whole
lines. The tool recognises its own file by the first line it writes; a ``training.log`` that
does not start with it belongs to someone else and is left alone (the run says so).

Each run's complete log stays in its run directory (``<run>/training.log``).
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

logger = logging.getLogger(__name__)

DEFAULT_NAME = "training.log"
OFF = "none"
ENVIRONMENT = "POKEDEX_LIVE_LOG"  # the default location (the test suite points it elsewhere)
HEADER = ("# Pokedex Ultra trainer: live log of the training runs started in this folder, one "
          "line per event, prefixed with [run name]. Follow it with: tail -f training.log "
          "(PowerShell: Get-Content training.log -Wait -Tail 50)\n")
MARKER = HEADER[:HEADER.index(",")]

_configured: list[str | None] = [None]


def default_location() -> str:
    """``training.log`` in the current folder, unless ``POKEDEX_LIVE_LOG`` names another."""
    return os.environ.get(ENVIRONMENT) or DEFAULT_NAME


def configure(location: str | None) -> None:
    """Where the runs of this process append (``--live_log``); ``none`` turns it off."""
    _configured[0] = location


def _location() -> Path | None:
    location = _configured[0] or default_location()
    return None if location.lower() == OFF else Path(location)


class LiveLog:
    """One run's writer of the shared live log.

    Args:
        path: the shared file (already known to be this tool's).
        run_name: the prefix of every line.
    """

    def __init__(self, path: Path, run_name: str):
        self.path, self.prefix = path, f"[{run_name}] "
        flags = os.O_WRONLY | os.O_APPEND | getattr(os, "O_BINARY", 0)
        self.fd = os.open(path, flags)

    def write(self, text: str) -> None:
        """Append ``text`` (one or more lines), each line prefixed, in a single write."""
        lines = [line for line in text.splitlines() if line.strip()]
        if not lines or self.fd is None:
            return
        data = "".join(f"{self.prefix}{line}\n" for line in lines).encode("utf-8")
        try:
            os.write(self.fd, data)
        except OSError:  # a full disk must not end the run: its own log still has the line
            pass

    def handler(self, formatter: logging.Formatter) -> logging.Handler:
        """A logging handler writing formatted records here."""
        live = self

        class _Handler(logging.Handler):
            def emit(self, record):
                try:
                    live.write(self.format(record))
                except Exception:  # noqa: BLE001 (logging must never raise)
                    self.handleError(record)

        handler = _Handler()
        handler.setFormatter(formatter)
        return handler

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _create_with_header(path: Path) -> None:
    """Make ``path`` holding the header, unless it exists: in one step (a hard link of a
    finished temporary file), so another run never reads a half-made first line."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would shut other users' runs out
        with os.fdopen(fd, "wb") as handle:
            handle.write(HEADER.encode("utf-8"))
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        except OSError:  # a file system without hard links
            try:
                with open(path, "xb") as handle:
                    handle.write(HEADER.encode("utf-8"))
            except FileExistsError:
                pass
    finally:
        Path(tmp).unlink(missing_ok=True)


def is_ours(path: Path) -> bool:
    """True when ``path`` starts with the header this tool writes."""
    try:
        with open(path, "rb") as handle:
            start = handle.read(len(MARKER.encode("utf-8")))
    except OSError:
        return False
    return start == MARKER.encode("utf-8")


def open_live_log(run_name: str) -> tuple[LiveLog | None, str | None]:
    """The live-log writer of a run, and a note for the run's log when there is none
    (someone else's ``training.log``, an unwritable folder)."""
    path = _location()
    if path is None:
        return None, None
    try:
        if path.exists() and not path.is_file():  # a folder, a FIFO: opening it could block
            return None, (f"'{path}' is not a regular file: left as it is, so this run's lines "
                          "are only in its own training.log (--live_log names another file)")
        if path.is_file() and path.stat().st_size == 0:
            with open(path, "ab") as handle:  # emptied (Clear-Content): nothing to lose
                if handle.tell() == 0:
                    handle.write(HEADER.encode("utf-8"))
        if not path.exists():
            _create_with_header(path)
        if not is_ours(path):
            return None, (f"'{path}' was not written by this tool: left as it is, so this "
                          "run's lines are only in its own training.log (--live_log names "
                          "another file)")
        return LiveLog(path, run_name), None
    except OSError as exc:
        return None, f"no live log in '{path}': {exc.strerror or exc}"
