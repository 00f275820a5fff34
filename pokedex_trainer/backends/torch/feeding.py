"""PyTorch feeding over the shared BatchLoader: the same worker processes and shared-memory
ring as the Keras feed, the batches handed to the trainer as tensors without a copy.

Items are whole batches, addressed by (epoch, batch number), so a batch has the same seeded
augmentation and unreadable-file handling in every framework and for any number of workers.
"""

from __future__ import annotations

import torch

from pokedex_trainer.data.feeding import BatchLoader


class TorchBatches:
    """One epoch of ``plan`` per pass, as (uint8 NHWC tensor, int32 labels, failed files).

    Under DistributedDataParallel each rank takes every ``world_size``-th batch, and every rank
    the same number of them (DDP would otherwise wait on a missing one).

    Args:
        plan: the loader (its worker processes, shared-memory ring and batch order).
        use_cuda: copy each batch into page-locked memory, for asynchronous transfers.
        rank, world_size: this process's share under DistributedDataParallel.
    """

    def __init__(self, plan: BatchLoader, use_cuda: bool, rank: int = 0, world_size: int = 1):
        self.plan, self.use_cuda = plan, use_cuda
        self.rank, self.world_size = rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        total = len(self.plan)
        return total // self.world_size if self.world_size > 1 else total

    def __iter__(self):
        numbers = list(range(self.rank, len(self) * self.world_size, self.world_size))
        # In place: the tensor is a view of the ring buffer until the next batch is asked for;
        # the trainer turns it into a float tensor (a new one) before that.
        for batch in self.plan.iter_epoch(self.epoch, numbers, in_place=True):
            images = torch.from_numpy(batch.images)
            if self.use_cuda:
                images = images.pin_memory()
            yield images, torch.from_numpy(batch.labels), batch.failed

    def close(self) -> None:
        self.plan.close()


def make_data_loader(plan: BatchLoader, use_cuda: bool, rank: int = 0,
                     world_size: int = 1) -> TorchBatches:
    """The trainer's batches of ``plan`` for this rank (``set_epoch`` before each pass)."""
    return TorchBatches(plan, use_cuda, rank, world_size)
