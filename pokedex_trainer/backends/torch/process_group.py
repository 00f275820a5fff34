"""The torchrun process group of a PyTorch run: join, share objects, wrap the model, leave."""

from __future__ import annotations

import torch
from torch import nn

from pokedex_trainer.backends.torch.torch_networks import Classifier


def init_distributed() -> None:
    """Join the torchrun process group: NCCL on GPUs, gloo on CPUs and where PyTorch has no
    NCCL (Windows). ``LOCAL_RANK`` picks this process's GPU on its own machine."""
    import os

    import torch.distributed as dist

    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    nccl = torch.cuda.is_available() and dist.is_nccl_available()
    dist.init_process_group("nccl" if nccl else "gloo")


def broadcast(value):
    """Rank 0's ``value`` on every rank (the run context, so all ranks share one run)."""
    import torch.distributed as dist

    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def all_gather(value) -> list:
    """Every rank's ``value``, in rank order, on every rank."""
    import torch.distributed as dist

    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def leave_distributed() -> None:
    """Leave the process group: the one place it is destroyed (runs/lifecycle.py, once the
    run is over or stopped, whether or not its backend was built)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def group_world() -> tuple[int, int]:
    """(rank, size) of the process group this process joined, else (0, 1).

    Not ``runs.distributed.world()``, which reads torchrun's environment: a process that
    torchrun started but that never joined a group (``--kfold`` does not) trains alone here.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def wrap_distributed(model: Classifier, device: torch.device, world: int) -> nn.Module:
    """DistributedDataParallel over the parameters that train in this phase (or the model).

    Wrapped anew each phase: DDP registers the trainable parameters when it is built.
    """
    if world <= 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                   else None)
