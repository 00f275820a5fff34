"""A ring of preallocated shared-memory buffers that worker processes decode batches into.

Pickling a decoded batch from a worker to the trainer copies it four times (pickle, pipe write,
pipe read, unpickle) and cost about half of a worker's time. Here a worker writes its batch's
pixels straight into one buffer of the ring and sends back only the labels and the names of
unreadable files; the trainer reads the pixels in place.

Cleanup: the trainer unlinks every buffer when the loader closes (and at interpreter exit).
If the trainer is killed (kill -9), its workers end within a second (``exit_with_parent``) and
Python's resource tracker, which outlives them all, unlinks what is left. When the whole
process group is killed at once (the tracker with it), the next trainer that starts on the
machine removes the segments whose trainer is gone. On Windows a shared segment disappears with
the last process that has it open.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import sys
import weakref
from multiprocessing import shared_memory

import numpy as np

logger = logging.getLogger(__name__)

# Segment names: pokedex_<trainer pid>_<pid namespace>_<random>...; `ls /dev/shm/pokedex_*`
# shows them. The namespace keeps one container from judging another's pids.
NAME_PREFIX = "pokedex_"
SHM_FOLDER = "/dev/shm"


def _namespace() -> str:
    try:
        return format(os.stat("/proc/self/ns/pid").st_ino % 16**8, "x")
    except OSError:
        return "0"


_swept = False


def segment_tag() -> str:
    """A new, unique name stem for this process's segments (short: macOS allows 30 bytes).
    The first call of a process also removes what killed trainers left."""
    global _swept
    if not _swept:
        _swept = True
        removed = remove_stale_segments()
        if removed:
            logger.info("removed %d shared-memory segments left by a trainer that was killed",
                        len(removed))
    return f"{NAME_PREFIX}{os.getpid()}_{_namespace()}_{secrets.token_hex(3)}"


def remove_stale_segments() -> list[str]:
    """Unlink the segments of trainers of this pid namespace that no longer run (killed with
    their whole process group, resource tracker included). Returns their names."""
    import psutil

    if not os.path.isdir(SHM_FOLDER):
        return []
    removed, namespace = [], _namespace()
    for name in os.listdir(SHM_FOLDER):
        parts = name[len(NAME_PREFIX):].split("_")
        if not name.startswith(NAME_PREFIX) or len(parts) < 3 or not parts[0].isdigit():
            continue
        if parts[1] != namespace or psutil.pid_exists(int(parts[0])):
            continue
        try:
            os.unlink(os.path.join(SHM_FOLDER, name))
            removed.append(name)
        except OSError:
            pass
    return removed


def shared_memory_free() -> int:
    """Bytes that shared memory can still take: /dev/shm's free space on Linux (64 MB by
    default in a Docker container), unlimited elsewhere (it is backed by the page file)."""
    if sys.platform.startswith("linux") and os.path.isdir(SHM_FOLDER):
        return shutil.disk_usage(SHM_FOLDER).free
    return 2**63


def allocate_shared(name: str, nbytes: int) -> shared_memory.SharedMemory:
    """A new shared segment whose memory is reserved now: on Linux a segment larger than
    /dev/shm's free space would otherwise kill the process (SIGBUS) at its first write.
    Raises OSError when it does not fit."""
    block = shared_memory.SharedMemory(name, create=True, size=nbytes)
    if hasattr(os, "posix_fallocate") and getattr(block, "_fd", -1) >= 0:
        try:
            os.posix_fallocate(block._fd, 0, nbytes)
        except OSError:
            _release([block])
            raise
    return block


def _release(blocks: list) -> None:
    for block in blocks:
        try:
            block.close()
            block.unlink()
        except (FileNotFoundError, OSError):
            pass


class BatchRing:
    """``slots`` buffers, each one batch of (batch_size, height, width, 3) uint8 pixels.

    Created in the trainer; workers attach with ``RingSpec.attach``. Names are short (macOS
    allows 30 characters) and unique per loader.
    """

    def __init__(self, slots: int, batch_size: int, image_size: tuple[int, int]):
        height, width = image_size
        self.shape = (batch_size, height, width, 3)
        nbytes = int(np.prod(self.shape))
        tag = segment_tag()
        self.blocks = []
        self._finalizer = weakref.finalize(self, _release, self.blocks)
        for slot in range(slots):  # OSError when shared memory is too small
            self.blocks.append(allocate_shared(f"{tag}_{slot}", nbytes))
        self.spec = RingSpec([block.name for block in self.blocks], self.shape)
        self.arrays = [np.ndarray(self.shape, np.uint8, buffer=block.buf)
                       for block in self.blocks]

    def __len__(self) -> int:
        return len(self.blocks)

    def view(self, slot: int, count: int) -> np.ndarray:
        """The first ``count`` images of buffer ``slot``, without a copy."""
        return self.arrays[slot][:count]

    def close(self) -> None:
        """Unlink every buffer (views taken earlier must not be used afterwards)."""
        self.arrays = []
        self._finalizer()


class RingSpec:
    """What a worker needs to attach to a ring: the names and the batch shape (picklable)."""

    def __init__(self, names: list[str], shape: tuple[int, ...]):
        self.names, self.shape = list(names), tuple(shape)
        self._blocks = None

    def __getstate__(self):
        return {"names": self.names, "shape": self.shape, "_blocks": None}

    def attach(self) -> list[np.ndarray]:
        """In a worker: one array per buffer, mapped onto the trainer's memory."""
        if self._blocks is None:
            self._blocks = [shared_memory.SharedMemory(name) for name in self.names]
        return [np.ndarray(self.shape, np.uint8, buffer=block.buf) for block in self._blocks]
