"""The last defence against the out-of-memory killer: end in one line before it strikes.

Under a memory limit (a container, a Slurm job, a systemd slice) the kernel kills a process
that reaches its cgroup's limit with SIGKILL: exit 137 and not a word, the run not recorded.
The estimate made before the first step (machine/step_memory.py) catches most batches that
cannot fit; where it is wrong, this watcher, a thread that reads the room left under the limit
a few times a second, ends the run first: the run recorded as failed, one line naming the
cause and the options to change, exit code 1. Without a cgroup limit it does nothing (the
machine's own memory is the estimate's job, and no limit means no sudden kill at a line).
"""

from __future__ import annotations

import threading

from pokedex_trainer.machine.memory import gigabytes

POLL_S = 0.1
FLOOR_SHARE = 0.03  # act when less than 3 % of the limit is left...
FLOOR_BYTES = 96 * 2**20  # ...or 96 MiB, whichever is more


class MemoryWatch:
    """A daemon thread calling ``on_low(message)`` once when the room under the tightest
    cgroup limit falls below the floor.

    Args:
        on_low: what ends the run (records it, prints the line, exits).
        room: bytes left under the limit, or None without a limit (for tests).
        limit: the limit in bytes, or None (for tests).
    """

    def __init__(self, on_low, room=None, limit=None):
        from pokedex_trainer.machine.memory import cgroup_limit, cgroup_room

        self.on_low = on_low
        self.room = room or (lambda: cgroup_room(all_cache=True))
        self.limit = limit if limit is not None else cgroup_limit()
        self._stop = threading.Event()
        self._thread = None

    def __enter__(self) -> "MemoryWatch":
        if self.limit is not None:
            self._thread = threading.Thread(target=self._watch, name="memory-watch",
                                            daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()

    def _watch(self) -> None:
        floor = max(FLOOR_BYTES, int(self.limit * FLOOR_SHARE))
        while not self._stop.wait(POLL_S):
            left = self.room()
            if left is not None and left < floor:
                self.on_low(f"out of memory: {gigabytes(max(left, 0))} left under this "
                            f"process's memory limit of {gigabytes(self.limit)} (its container "
                            "or job), ended before the kernel's out-of-memory killer; use a "
                            "smaller --batch_size or --image_size (or --batch_size auto)")
                return
