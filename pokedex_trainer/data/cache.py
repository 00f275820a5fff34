"""``--cache ram|disk``: each image decoded once, stored resized, reused by later epochs.

An image is stored as uint8 pixels at the *working size*, 5/4 of ``--image_size`` per side, so
the random resized crop that follows still has room; the pipeline after it (augmentation, or
the evaluation resize) runs on the stored pixels every epoch, so augmentation stays random.
The aspect ratio is not kept: every transform ends in a resize to the network's square input
anyway.

Each entry carries the file's size and modification time; a changed file is decoded again.
``disk`` keeps a memory-mapped file under ``<output_dir>/cache/`` (or ``--cache_dir``), reused
by later runs on the same folder and size and safe to delete when no run is using it; ``ram``
keeps shared memory for the run's lifetime. Worker processes fill and read the same storage.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
import weakref
from pathlib import Path

import numpy as np

from pokedex_trainer.errors import UserError

logger = logging.getLogger(__name__)

CACHE_VERSION = 1
PIXELS, STAMPS, META, LOCK = "pixels.u8", "stamps.i8", "cache.json", "cache.lock"
# stamps[i] = (valid, file size, modification time in ns)


def working_size(image_size: tuple[int, int]) -> tuple[int, int]:
    """(height, width) images are stored at: 5/4 of the network's input per side."""
    return tuple(math.ceil(side * 5 / 4) for side in image_size)


def cache_bytes(count: int, image_size: tuple[int, int]) -> int:
    height, width = working_size(image_size)
    return count * height * width * 3


def _gigabytes(nbytes: int) -> str:
    return f"{nbytes / 2**30:.1f} GB"


def _check_room(kind: str, need: int, free: int, where: str) -> None:
    if need > free:
        other = "--cache disk" if kind == "ram" else "--cache ram, another --cache_dir"
        room = "is free" if kind == "disk" else \
            "of memory is left to this process (free memory, or its container's limit)"
        raise UserError(f"--cache {kind} needs about {_gigabytes(need)} ({where}), but only "
                        f"{_gigabytes(free)} {room}: use {other} or --cache none")


def ram_cache_room() -> int:
    """Bytes a ``ram`` cache may take: what the process may still use (its container's limit
    included), and no more than shared memory can hold."""
    from pokedex_trainer.machine.memory import memory_available
    from pokedex_trainer.data.shared_batches import shared_memory_free

    return min(memory_available(), shared_memory_free())


def check_ram_cache_fits(count: int, image_size: tuple[int, int], batch_size) -> None:
    """``--cache ram`` of ``count`` images and one input batch: refused before the run starts
    when they do not fit (the kernel would kill the run once the cache filled up)."""
    from pokedex_trainer.machine.memory import input_bytes

    need = cache_bytes(count, image_size)
    if isinstance(batch_size, int):
        need += input_bytes(batch_size, image_size)
    height, width = working_size(image_size)
    _check_room("ram", need, ram_cache_room(), f"{count} images at {height}x{width} and one "
                "batch")


def _stat(path: Path) -> tuple[int, int] | None:
    try:
        info = path.stat()
    except OSError:
        return None
    return info.st_size, info.st_mtime_ns


class ImageCache:
    """Decoded images of a dataset's files, shared by every process of a run.

    Args:
        root: the dataset folder.
        relatives: every file (relative path) the run may read, in a fixed order.
        image_size: the network's (height, width).
        kind: ``ram`` or ``disk``.
        folder: for ``disk``, the folder that holds the caches (one sub-folder per dataset
            and size).
    """

    def __init__(self, root: Path, relatives: list[str], image_size: tuple[int, int],
                 kind: str, folder: Path | None = None):
        self.root, self.kind = Path(root), kind
        self.relatives = list(relatives)
        self.slots = {relative: n for n, relative in enumerate(self.relatives)}
        self.shape = (len(self.relatives), *working_size(image_size), 3)
        self.nbytes = cache_bytes(len(self.relatives), image_size)
        self.path: Path | None = None
        self.names: tuple[str, str] | None = None
        self._arrays = self._owner = None
        if kind == "disk":
            self._create_disk(Path(folder))
        elif kind == "ram":
            self._create_ram()
        else:
            raise ValueError(f"unknown cache kind {kind!r}")

    # -- creation (in the trainer) ---------------------------------------------------------

    def _key(self) -> str:
        digest = hashlib.sha256(str(self.root.resolve()).encode("utf-8"))
        digest.update("\0".join(self.relatives).encode("utf-8"))
        height, width = self.shape[1:3]
        return f"{self.root.name}_{height}x{width}_{digest.hexdigest()[:12]}"

    def _create_disk(self, folder: Path) -> None:
        self.path = folder / self._key()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            self._open_disk()
        except OSError as exc:
            where = exc.filename or self.path
            raise UserError(f"--cache disk cannot use '{folder}': {exc.strerror or exc} "
                            f"('{where}'); choose a writable folder with --cache_dir") from None

    def _open_disk(self) -> None:
        from pokedex_trainer.user_io.atomic import locked

        meta = {"version": CACHE_VERSION, "root": str(self.root.resolve()),
                "shape": list(self.shape), "files": self.relatives}
        with open(self.path / LOCK, "a+", encoding="utf-8") as handle, locked(handle):
            if self._disk_matches(meta):
                logger.info("image cache: reusing %s", self.path)
                return
            _check_room("disk", self.nbytes, shutil.disk_usage(self.path).free,
                        f"{len(self.relatives)} images at {self.shape[1]}x{self.shape[2]} "
                        f"in {self.path}")
            (self.path / META).unlink(missing_ok=True)  # invalid until fully created
            np.memmap(self.path / PIXELS, np.uint8, "w+", shape=self.shape).flush()
            np.memmap(self.path / STAMPS, np.int64, "w+", shape=(self.shape[0], 3)).flush()
            (self.path / META).write_text(json.dumps(meta), encoding="utf-8")
            logger.info("image cache: %s in %s (filled during the first epoch)",
                        _gigabytes(self.nbytes), self.path)

    def _disk_matches(self, meta: dict) -> bool:
        try:
            saved = json.loads((self.path / META).read_text(encoding="utf-8"))
            sizes = ((self.path / PIXELS).stat().st_size, (self.path / STAMPS).stat().st_size)
        except (OSError, ValueError):
            return False
        return saved == meta and sizes == (self.nbytes, self.shape[0] * 3 * 8)

    def _create_ram(self) -> None:
        from pokedex_trainer.data.shared_batches import _release, allocate_shared, segment_tag

        _check_room("ram", self.nbytes, ram_cache_room(), f"{len(self.relatives)} images at "
                    f"{self.shape[1]}x{self.shape[2]}")
        tag = segment_tag() + "_c"
        try:
            blocks = [allocate_shared(f"{tag}p", self.nbytes),
                      allocate_shared(f"{tag}s", self.shape[0] * 3 * 8)]
        except OSError as exc:
            raise UserError(f"--cache ram could not reserve {_gigabytes(self.nbytes)} of "
                            f"shared memory ({exc.strerror or exc}): use --cache disk or "
                            "--cache none") from None
        np.ndarray((self.shape[0], 3), np.int64, buffer=blocks[1].buf)[:] = 0
        self.names = (blocks[0].name, blocks[1].name)
        self._owner = weakref.finalize(self, _release, blocks)
        self._blocks = blocks
        logger.info("image cache: %s of shared memory for %d images at %dx%d (filled during "
                    "the first epoch)", _gigabytes(self.nbytes), *self.shape[:3])

    # -- use (in the trainer and in every worker) -----------------------------------------

    def __getstate__(self):
        state = self.__dict__.copy()
        state.update(_arrays=None, _owner=None, _blocks=None)
        return state

    def _open(self):
        if self._arrays is None:
            if self.kind == "disk":
                self._arrays = (np.memmap(self.path / PIXELS, np.uint8, "r+", shape=self.shape),
                                np.memmap(self.path / STAMPS, np.int64, "r+",
                                          shape=(self.shape[0], 3)))
            else:
                from multiprocessing import shared_memory

                blocks = getattr(self, "_blocks", None) or [shared_memory.SharedMemory(name)
                                                            for name in self.names]
                self._blocks = blocks
                self._arrays = (np.ndarray(self.shape, np.uint8, buffer=blocks[0].buf),
                                np.ndarray((self.shape[0], 3), np.int64, buffer=blocks[1].buf))
        return self._arrays

    def image(self, relative: str) -> np.ndarray:
        """The stored pixels of ``relative`` (decoded and stored first when missing or when
        the file changed). Read-only view. Raises UnreadableImageError."""
        from pokedex_trainer.data.images import UnreadableImageError

        pixels, stamps = self._open()
        slot = self.slots[relative]
        path = self.root / relative
        stamp = _stat(path)
        if stamp is None:
            raise UnreadableImageError(path, "missing file")
        if stamps[slot, 0] == 1 and tuple(stamps[slot, 1:]) == stamp:
            view = pixels[slot]
        else:
            view = self._store(slot, path, stamp)
        view = view.view()
        view.flags.writeable = False
        return view

    def _store(self, slot: int, path: Path, stamp: tuple[int, int]) -> np.ndarray:
        import cv2

        from pokedex_trainer.data.images import read_image

        pixels, stamps = self._open()
        height, width = self.shape[1:3]
        image = read_image(path, min_size=(height, width))
        stamps[slot, 0] = 0  # invalid while written
        pixels[slot] = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
        stamps[slot, 1:] = stamp
        stamps[slot, 0] = 1
        return pixels[slot]

    def filled(self) -> int:
        """How many entries hold a stored image."""
        return int((self._open()[1][:, 0] == 1).sum())

    def close(self) -> None:
        """Let go of the storage; a ``ram`` cache is freed (its owner only)."""
        self._arrays = None
        if self._owner is not None:
            self._blocks = None
            self._owner()


def default_cache_dir(output_dir: Path | str) -> Path:
    return Path(output_dir) / "cache"

