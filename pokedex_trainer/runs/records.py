"""Run directories, atomic file writes, the history CSV, training.log and experiments.csv."""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import sys
import tempfile
import time
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

from pokedex_trainer.errors import UserError

logger = logging.getLogger(__name__)

# The training recipe's options, one column each (runs/experiments.py reads runs from before an
# option existed with its default).
RECIPE_COLUMNS = ("augment_warmup", "label_smoothing", "lr_schedule", "warmup_epochs", "min_lr",
                  "optimizer", "weight_decay", "ema")
EXPERIMENT_COLUMNS = [
    "run_name", "model_type", "status", "started", "duration_s", "epochs_run",
    "best_val_accuracy", "best_val_top5_accuracy", "best_epoch", "test_accuracy",
    "test_top5_accuracy", "learning_rate", "fine_tune_learning_rate", "batch_size",
    "image_size", "epochs", "fine_tune_epochs", "fine_tune_layers", "weights", "dropout",
    "augment", "class_weight", "sampler", "seed", "run_dir", "reason", "keras_backend",
    "search_name", "search_trial", *RECIPE_COLUMNS,
]


def timestamp() -> str:
    return datetime.now().strftime("%Y%m%d_%H%M%S")


def ensure_writable_dir(path: Path, what: str) -> Path:
    """Create ``path`` if needed and prove it is writable; raises UserError otherwise."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write_test_"):
            pass
    except OSError as exc:
        raise UserError(f"cannot write to {what} '{path}': {exc.strerror or exc}") from None
    return path


def create_run_dir(output_dir: Path, base_name: str) -> Path:
    """Make a new, unique run directory; concurrent runs never share one."""
    ensure_writable_dir(output_dir, "output directory")
    for attempt in range(1, 1000):
        name = base_name if attempt == 1 else f"{base_name}_{attempt}"
        candidate = output_dir / name
        try:
            candidate.mkdir()  # atomic: exactly one process wins a name
            return candidate
        except FileExistsError:
            continue
    raise UserError(f"could not create a run directory for '{base_name}' in '{output_dir}'")


def _default_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file beside ``path`` then rename: never a half-written file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, _default_mode())  # mkstemp makes 0600; the result is a normal file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, value) -> None:
    atomic_write_bytes(path, json.dumps(value, indent=2, ensure_ascii=False).encode("utf-8"))


@contextmanager
def atomic_target(path: Path, suffix: str):
    """Yield a temporary path (ending in ``suffix``) that replaces ``path`` on success.

    The temporary file lives in a hidden ``.partial`` folder beside ``path``, so a process
    killed mid-write leaves nothing that a lookup of model or export files could match.
    """
    from pokedex_trainer.runs.layout import PARTIAL_DIR

    path = Path(path)
    partial = path.parent / PARTIAL_DIR
    for attempt in range(3):  # another writer may remove the empty folder in between
        partial.mkdir(exist_ok=True)
        try:
            fd, tmp = tempfile.mkstemp(dir=partial, prefix=f"{path.stem}.", suffix=suffix)
            break
        except FileNotFoundError:
            if attempt == 2:
                raise
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, _default_mode())
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
        try:
            partial.rmdir()  # only when empty: another write may be in flight
        except OSError:
            pass


@contextmanager
def _locked(handle):
    """Exclusive lock on an open file, on POSIX and on Windows."""
    if os.name == "nt":
        import msvcrt

        handle.seek(0)
        while True:
            try:
                msvcrt.locking(handle.fileno(), msvcrt.LK_LOCK, 1)
                break
            except OSError:
                time.sleep(0.05)
        try:
            yield
        finally:
            handle.seek(0)
            msvcrt.locking(handle.fileno(), msvcrt.LK_UNLCK, 1)
    else:
        import fcntl

        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def locked_append(path: Path, text: str) -> None:
    """Append ``text`` to ``path`` under the file lock (several processes may append)."""
    with open(path, "a", encoding="utf-8", newline="") as handle:
        with _locked(handle):
            handle.seek(0, os.SEEK_END)
            handle.write(text)
            handle.flush()


class RunLock:
    """One writer per run directory: an exclusive lock on ``<run>/.lock``, held by the live
    process. The operating system drops it when the process ends, however it ends, so the lock
    of a killed run never stands in the way of the ``--resume`` that recovers it.

    Args:
        run_dir: the run directory.
    """

    NAME = ".lock"

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.handle = None

    def acquire(self) -> "RunLock":
        """Take the lock now or raise UserError: another process trains this run."""
        handle = open(self.run_dir / self.NAME, "a+", encoding="utf-8")
        try:
            _try_lock(handle)
        except OSError:
            handle.close()
            raise UserError(f"'{self.run_dir}' is being trained by another process right now; "
                            "wait for it to end (or stop it) before resuming") from None
        self.handle = handle
        return self

    def release(self) -> None:
        if self.handle is not None:
            self.handle.close()  # closing drops the lock
            self.handle = None


def _try_lock(handle) -> None:
    """Exclusive, non-blocking lock of an open file; OSError when another process holds it."""
    if os.name == "nt":
        import msvcrt

        handle.seek(0)
        msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
    else:
        import fcntl

        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)


def append_experiment(path: Path, row: dict) -> None:
    """Append one row to experiments.csv under a file lock (grid loops may run side by side).

    A table written by an earlier version with fewer columns is migrated first, under the same
    lock: rewritten with today's header (old columns keep their values, new ones are empty), so
    rows never end up under the wrong header. Columns this version does not know are kept.
    """
    with open(path, "a+", encoding="utf-8", newline="") as handle:
        with _locked(handle):
            handle.seek(0)
            existing = _read_table(handle, path)
            header = next(csv.reader(io.StringIO(existing)), None) if existing else None
            columns = list(EXPERIMENT_COLUMNS)
            if header is not None:
                columns += [c for c in header if c not in columns]
            if header is not None and header != columns:
                old_rows = list(csv.DictReader(io.StringIO(existing)))
                handle.seek(0)
                handle.truncate()
                _write_rows(handle, columns, old_rows, header=True)
                logger.info("%s: added the columns %s", Path(path).name,
                            ", ".join(c for c in columns if c not in header))
            handle.seek(0, os.SEEK_END)
            _write_rows(handle, columns, [row], header=handle.tell() == 0)
            handle.flush()


def _read_table(handle, path: Path) -> str:
    """The text of an experiments table; UserError when it is someone else's file (another
    encoding, other columns): it is never rewritten then."""
    try:
        text = handle.read()
    except UnicodeDecodeError:
        raise UserError(f"'{path}' is not a UTF-8 CSV (saved by another program?): move it "
                        "away, this tool never rewrites a file it did not write") from None
    header = next(csv.reader(io.StringIO(text)), None) if text else None
    if header is not None and "run_name" not in header:
        raise UserError(f"'{path}' is not an experiments table of this tool (no run_name "
                        "column): move it away, this tool never rewrites a file it did not "
                        "write")
    return text


def check_experiments_table(path: Path) -> None:
    """Before a run starts: raise UserError if ``path`` exists and cannot take its row."""
    if Path(path).is_file():
        with open(path, encoding="utf-8", newline="") as handle:
            _read_table(handle, path)


def _write_rows(handle, columns: list[str], rows: list[dict], header: bool) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", restval="",
                            lineterminator="\n")
    if header:
        writer.writeheader()
    writer.writerows({key: row.get(key, "") for key in columns} for row in rows)
    handle.write(buffer.getvalue())


def read_experiments(path: Path) -> list[dict]:
    with open(path, encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


class HistoryWriter:
    """history.csv: one row per epoch with the phase and learning rate, flushed every epoch."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.columns: list[str] | None = None
        if self.path.exists():
            with open(self.path, encoding="utf-8", newline="") as handle:
                self.columns = next(csv.reader(handle), None)

    def write(self, epoch: int, phase: str, logs: dict) -> None:
        row = {"epoch": epoch, "phase": phase}
        row.update({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in logs.items()})
        if self.columns is None:
            self.columns = list(row)
        new = [k for k in row if k not in self.columns]
        if new:  # a later phase logged a new metric: rewrite with the wider header
            old = read_experiments(self.path) if self.path.exists() else []
            self.columns += new
            with open(self.path, "w", encoding="utf-8", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=self.columns, lineterminator="\n")
                writer.writeheader()
                writer.writerows(old)
        exists = self.path.exists() and self.path.stat().st_size > 0
        with open(self.path, "a", encoding="utf-8", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=self.columns, restval="",
                                    lineterminator="\n")
            if not exists:
                writer.writeheader()
            writer.writerow(row)


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


@contextmanager
def capture_to_log(log_path: Path, live=None):
    """Send everything printed (and every log record) to ``log_path`` as well as the console,
    and to ``live`` (the shared live log, see runs/live_log.py) when given."""
    handle = open(log_path, "a", encoding="utf-8")
    old_out, old_err = sys.stdout, sys.stderr
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
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
