"""torch.utils.data feeding over the shared BatchSource.

Items are whole batches, addressed by (epoch, batch number): a worker builds a batch with the
same seeded augmentation and unreadable-file handling as the Keras path, and the sampler (in the
main process) decides the epoch, so persistent workers need no message to follow epochs.
"""

from __future__ import annotations

import functools
import os

import torch
import torch.multiprocessing
from torch.utils.data import DataLoader, Dataset, Sampler

# Batches cross from workers as shared-memory files rather than passed file descriptors: the
# descriptor server thread of the default strategy printed a traceback when Ctrl-C ended a run.
torch.multiprocessing.set_sharing_strategy("file_system")

from ..feeding import BatchLoader, ignore_interrupts


class BatchDataset(Dataset):
    """``dataset[(epoch, n)]`` is batch ``n`` of ``epoch`` as (uint8 NHWC tensor, labels, failed).

    Args:
        plan: a BatchLoader used only for its deterministic batch order (no pool is started).
    """

    def __init__(self, plan: BatchLoader):
        self.plan = plan
        self._epoch = None
        self._batches = None

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, key):
        epoch, number = key
        if self._epoch != epoch:
            self._epoch, self._batches = epoch, self.plan.batch_indices(epoch)
        batch = self.plan.source.load_batch(self._batches[number], epoch, number)
        return torch.from_numpy(batch.images), torch.from_numpy(batch.labels), batch.failed


class EpochBatchSampler(Sampler):
    """Yields (epoch, batch number) keys of the current epoch, sharded across DDP ranks.

    Args:
        num_batches: batches per epoch.
        rank, world_size: this process's share under DistributedDataParallel.
    """

    def __init__(self, num_batches: int, rank: int = 0, world_size: int = 1):
        self.num_batches = num_batches
        self.rank, self.world_size = rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_batches // self.world_size if self.world_size > 1 else self.num_batches

    def __iter__(self):
        # Every rank gets the same number of batches, or DDP would wait on a missing one.
        numbers = range(self.rank, len(self) * self.world_size, self.world_size)
        return iter([(self.epoch, n) for n in numbers])


def _init_worker(parent_pid: int, worker_id: int) -> None:
    """A DataLoader worker: Ctrl-C is the trainer's, and it ends when the trainer does (even
    by kill -9, even while it was still starting)."""
    from ..processes import exit_with_parent

    ignore_interrupts()
    exit_with_parent(parent_pid)


def _identity(item):
    return item


def make_data_loader(plan: BatchLoader, use_cuda: bool, rank: int = 0,
                     world_size: int = 1) -> tuple[DataLoader, EpochBatchSampler]:
    """A DataLoader with worker processes (spawn), pinned memory and persistent workers on GPU."""
    sampler = EpochBatchSampler(len(plan), rank, world_size)
    workers = plan.workers
    loader = DataLoader(
        BatchDataset(plan), sampler=sampler, batch_size=None, collate_fn=_identity,
        num_workers=workers, pin_memory=use_cuda,
        persistent_workers=workers > 0,
        prefetch_factor=2 if workers > 0 else None,
        multiprocessing_context="spawn" if workers > 0 else None,
        worker_init_fn=functools.partial(_init_worker, os.getpid()) if workers > 0 else None,
    )
    return loader, sampler
