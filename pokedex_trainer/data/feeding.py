"""Parallel, framework-free batch feeding: read + decode + augment in worker processes.

Workers receive only paths, labels and the pipeline's parameters (never a framework object), so
they start quickly and work with the ``spawn`` start method that Windows uses.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

logger = logging.getLogger(__name__)


@dataclass
class Batch:
    """Images (N, H, W, 3) uint8 RGB, labels (N,) int32, and the files that failed to decode."""

    images: np.ndarray
    labels: np.ndarray
    failed: list[tuple[str, str]]


class BatchSource:
    """Turns lists of sample indices into batches. Picklable: it is what workers receive.

    Args:
        root: folder the relative sample paths are under.
        samples: (relative path, label) pairs.
        image_size: (height, width) of the output images.
        training: augment (True) or only resize (False).
        seed: base seed; each batch's randomness derives from it, the epoch and the batch index,
            so a run is repeatable whatever the number of workers.
        augment: strength when training: none, light or full (``augment.AUGMENT_LEVELS``).
        augment_warmup: with full, epochs over which images move from the light pipeline to
            the full one (``augment.full_share``).
        cache: an ``image_cache.ImageCache`` holding the decoded files, or None.
    """

    def __init__(self, root: Path | str, samples: list[tuple[str, int]],
                 image_size: tuple[int, int], training: bool, seed: int = 0,
                 augment: str = "full", augment_warmup: int = 0, cache=None):
        self.root = Path(root)
        self.samples = list(samples)
        self.image_size = tuple(image_size)
        self.training = training and augment != "none"
        self.seed = seed
        self.augment, self.augment_warmup = augment, augment_warmup
        self.cache = cache
        self._transforms = {}

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_transforms"] = {}  # rebuilt in the worker
        return state

    def transform_of(self, level: str):
        """The pipeline of one strength (built once per process)."""
        if level not in self._transforms:
            from pokedex_trainer.data.augment import create_transform

            self._transforms[level] = create_transform(self.image_size, self.training,
                                                       self.seed, level)
        return self._transforms[level]

    @property
    def transform(self):
        """The pipeline after any warm-up (the eval one when not training)."""
        return self.transform_of(self.augment)

    def levels(self, epoch: int, count: int, rng_seed: int) -> list[str]:
        """The strength of each of ``count`` images of a batch in 0-based ``epoch``."""
        from pokedex_trainer.data.augment import full_share

        share = full_share(epoch, self.augment, self.augment_warmup) if self.training else 0
        if not self.training or share in (0.0, 1.0):
            return [self.augment] * count
        draws = np.random.default_rng(rng_seed).random(count)
        return ["full" if draw < share else "light" for draw in draws]

    def load_image(self, index: int, rng_seed: int | None = None,
                   level: str | None = None) -> np.ndarray:
        """Read and transform sample ``index``; raises UnreadableImageError."""
        from pokedex_trainer.data.images import read_image

        relative, _ = self.samples[index]
        height, width = self.image_size
        if self.cache is not None:
            image = self.cache.image(relative)
        else:
            # Decode big JPEGs at a reduced scale that still leaves room for the random crop.
            image = read_image(self.root / relative, min_size=(height * 5 // 4, width * 5 // 4))
        transform = self.transform_of(level or self.augment)
        if rng_seed is not None and self.training:
            transform.set_random_seed(rng_seed)
        return transform(image=image)["image"]

    def load_batch(self, indices: list[int], epoch: int = 0, batch_number: int = 0,
                   out: np.ndarray | None = None) -> Batch:
        """Build one batch. An unreadable file is replaced by another sample of the same batch
        and reported in ``Batch.failed``, so batch shapes stay fixed and nothing is hidden.

        ``out``: an array of at least ``len(indices)`` images to write the pixels into (a
        shared-memory buffer); ``Batch.images`` is then a view of it.
        """
        from pokedex_trainer.data.images import UnreadableImageError

        rng_seed = (self.seed * 1_000_003 + epoch * 10_007 + batch_number) % (2**32)
        levels = self.levels(epoch, len(indices), rng_seed)
        if out is None:
            out = np.empty((len(indices), *self.image_size, 3), np.uint8)
        seeded: set[str] = set()  # each pipeline is seeded once per batch, at its first image
        labels, failed = [], []
        for index, level in zip(indices, levels):
            try:
                first = level not in seeded
                seeded.add(level)
                image = self.load_image(index, rng_seed if first else None, level)
                out[len(labels)] = image
                labels.append(self.samples[index][1])
            except UnreadableImageError as exc:
                failed.append((self.samples[index][0], exc.reason))
        if not labels:
            raise RuntimeError("every image of a batch is unreadable: "
                               + "; ".join(f"{p} ({r})" for p, r in failed))
        readable = len(labels)
        while len(labels) < len(indices):  # keep the batch size: repeat readable samples
            out[len(labels)] = out[len(labels) % readable]
            labels.append(labels[len(labels) % readable])
        return Batch(out[:len(indices)], np.asarray(labels, dtype=np.int32), failed)


class UnreadableReporter:
    """Warns once per unreadable file, however many epochs meet it."""

    def __init__(self):
        self.seen: set[str] = set()

    def __call__(self, failed: list[tuple[str, str]]) -> None:
        for relative, reason in failed:
            if relative not in self.seen:
                self.seen.add(relative)
                logger.warning("skipped unreadable image %s: %s", relative, reason)


WORKER_FIX = ("run with fewer --workers or a smaller --batch_size / --image_size, or with "
              "--workers 0 (workers=0 in Python)")
_WORKER_SOURCE: BatchSource | None = None
_WORKER_RING: list[np.ndarray] | None = None


def ignore_interrupts(*_) -> None:
    """Workers leave Ctrl-C to the main process, which saves and exits cleanly."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _init_worker(source: BatchSource, parent_pid: int, ring=None) -> None:
    global _WORKER_SOURCE, _WORKER_RING
    import cv2

    from pokedex_trainer.machine.processes import exit_with_parent

    ignore_interrupts()
    exit_with_parent(parent_pid)
    cv2.setNumThreads(1)  # one process per core already; OpenCV threads would oversubscribe
    _WORKER_SOURCE = source
    _WORKER_RING = ring.attach() if ring is not None else None


def _worker_load(task: tuple[list[int], int, int, int]) -> Batch:
    """Decode a batch into ring buffer ``slot``; only labels and failures travel back."""
    indices, epoch, batch_number, slot = task
    if slot is None:  # no ring (shared memory full): the batch travels pickled
        return _WORKER_SOURCE.load_batch(indices, epoch, batch_number)
    batch = _WORKER_SOURCE.load_batch(indices, epoch, batch_number, out=_WORKER_RING[slot])
    return Batch(None, batch.labels, batch.failed)


class BatchLoader:
    """Iterate over batches of a BatchSource, epoch after epoch, with worker processes.

    Args:
        source: what turns indices into a batch.
        batch_size: images per batch; the last batch of an epoch may be smaller.
        shuffle: reshuffle the order every epoch (seeded by ``seed`` and the epoch).
        workers: processes; 0 loads in the calling process. Clamped to what the machine
            allows when the first epoch starts (``worker_limits``); a worker that dies or goes
            silent ends the epoch with ``WorkersFailed`` (``worker_pool``), never a hang.
        prefetch: batches in flight per worker.
        start_method: multiprocessing start method. ``spawn`` by default on every OS: forking
            a process that already runs TensorFlow or PyTorch threads can deadlock the child.
        drop_last: leave out the last, smaller batch of each epoch (training: a tiny batch
            gives noisy BatchNorm statistics and a second compiled graph for a new shape).
        balanced: draw each epoch's samples (with replacement) so that every class is equally
            likely, instead of a permutation.
    """

    def __init__(self, source: BatchSource, batch_size: int, shuffle: bool, workers: int = 0,
                 seed: int = 0, prefetch: int = 2, start_method: str = "spawn",
                 drop_last: bool = False, balanced: bool = False):
        self.source = source
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.workers = workers
        self.seed = seed
        self.prefetch = max(1, prefetch)
        self.start_method = start_method
        self.balanced = balanced
        # Never drop the only batch of a tiny dataset.
        self.drop_last = drop_last and len(source.samples) > batch_size
        self.epoch = 0
        self._pool = self._ring = None
        self._report_failed = UnreadableReporter()

    def __len__(self) -> int:
        if self.drop_last:
            return len(self.source.samples) // self.batch_size
        return -(-len(self.source.samples) // self.batch_size)

    def batch_indices(self, epoch: int) -> list[list[int]]:
        order = np.arange(len(self.source.samples))
        rng = np.random.default_rng([self.seed, epoch])
        if self.balanced:
            from pokedex_trainer.data.balance import balanced_sample_probabilities

            labels = [label for _, label in self.source.samples]
            p = balanced_sample_probabilities(labels, max(labels) + 1)
            order = rng.choice(len(order), size=len(order), replace=True, p=p)
        elif self.shuffle:
            rng.shuffle(order)
        batches = [order[i:i + self.batch_size].tolist()
                   for i in range(0, len(order), self.batch_size)]
        return batches[:len(self)]

    def sample_batch(self, size: int = 16) -> Batch:
        """The first ``size`` images of epoch 0, as training sees them (TensorBoard's grid)."""
        return self.source.load_batch(self.batch_indices(0)[0][:size], 0, 0)

    def _get_pool(self):
        """The worker pool, started at the first call; None (and ``workers`` 0, so batches
        load in this process) when the machine lets no worker start."""
        if self._pool is None and self.workers > 0:
            from pokedex_trainer.data.shared_batches import BatchRing
            from pokedex_trainer.machine.worker_limits import usable_workers

            self.workers = usable_workers(self.workers)
            if self.workers == 0:
                return None
            # Every batch in flight has a buffer, and so does the one the trainer reads.
            try:
                self._ring = BatchRing(self.workers * self.prefetch + 1, self.batch_size,
                                       self.source.image_size)
            except OSError as exc:
                logger.warning("no room in shared memory for the batch buffers (%s): batches "
                               "are copied between processes instead, which is slower (in "
                               "Docker, start the container with --shm-size=1g)",
                               exc.strerror or exc)
            self._pool = self._start_workers()
        return self._pool

    def _start_workers(self):
        from pokedex_trainer.machine.worker_limits import workers_refused
        from pokedex_trainer.machine.worker_pool import WorkerPool, WorkersUnavailable

        try:
            pool = WorkerPool(self.workers, _worker_load, _init_worker,
                              (self.source, os.getpid(), self._ring.spec if self._ring else None),
                              self.start_method, what="data-loading", fix=WORKER_FIX)
        except WorkersUnavailable as exc:  # a process limit, an unimportable main script...
            workers_refused(f"{exc}; loading images in the main process instead (slower)")
            if self._ring is not None:
                self._ring.close()
                self._ring = None
            self.workers = 0
            return None
        self.workers = pool.size
        return pool

    def iter_epoch(self, epoch: int | None = None, numbers: list[int] | None = None,
                   in_place: bool = False) -> Iterator[Batch]:
        """Yield the batches of one epoch in order; the next call gives the next epoch.

        Args:
            epoch: 0-based epoch (default: the one after the last call's).
            numbers: only these batch numbers of the epoch (a torchrun rank's share).
            in_place: with workers, each batch's images are a view of a shared-memory buffer
                that is reused once the next batch is asked for: read (or copy) them before.
                Without it each batch gets its own copy.
        """
        if epoch is None:
            epoch = self.epoch
        self.epoch = epoch + 1
        plan = self.batch_indices(epoch)
        numbers = range(len(plan)) if numbers is None else numbers
        tasks = [(plan[n], epoch, n) for n in numbers]
        self._get_pool()  # when no worker may start, workers becomes 0
        if self.workers == 0:
            for task in tasks:
                batch = self.source.load_batch(*task)
                self._report_failed(batch.failed)
                yield batch
            return
        yield from self._iter_workers(tasks, in_place)

    def _iter_workers(self, tasks: list, in_place: bool) -> Iterator[Batch]:
        pool = self._get_pool()
        ring = self._ring
        free = deque(range(len(ring)) if ring else [None] * self.workers * self.prefetch)
        pending: deque = deque()
        queue = iter(tasks)

        def submit() -> None:
            while free:
                task = next(queue, None)
                if task is None:
                    return
                slot = free.popleft()
                pending.append((pool.submit((*task, slot)), slot))

        held = None
        try:
            submit()
            while pending:
                task_id, slot = pending.popleft()
                meta = pool.result(task_id)  # raises WorkersFailed when a worker died
                if held is not None:  # the trainer is done with the previous batch
                    free.append(held)
                    held = None
                if slot is None:
                    images = meta.images
                    free.append(slot)
                elif in_place:
                    images, held = ring.view(slot, len(meta.labels)), slot
                else:
                    images = ring.view(slot, len(meta.labels)).copy()
                    free.append(slot)
                submit()
                self._report_failed(meta.failed)
                yield Batch(images, meta.labels, meta.failed)
        finally:
            # An epoch left early: its buffers are still being written; the next epoch must
            # not hand them out before that ends (unless the pool is gone already).
            if self._pool is pool:
                pool.discard([task_id for task_id, _ in pending])

    def __iter__(self) -> Iterator[Batch]:
        return self.iter_epoch()

    @property
    def unreadable(self) -> set[str]:
        """Relative paths that failed to decode so far."""
        return set(self._report_failed.seen)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None
        if self._ring is not None:
            self._ring.close()
            self._ring = None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

