"""RunLock: one process at a time trains a run directory."""

from __future__ import annotations

import os
from pathlib import Path

from pokedex_trainer.errors import UserError


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

