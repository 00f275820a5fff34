"""Two-phase PyTorch training of any of the three networks over the shared data layer and run
bookkeeping."""

from __future__ import annotations

import logging
import random
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pokedex_trainer.core.context import RunContext
from pokedex_trainer.core.phases import Phase
from pokedex_trainer.user_io.atomic import atomic_target
from pokedex_trainer.core.tensorboard import ACTIVATION_IMAGES
from pokedex_trainer.backends.torch.feeding import make_data_loader
from pokedex_trainer.backends.torch.torch_networks import (
    apply_phase,
    build_model,
    checkpoint_payload,
    load_tensors,
    stage_activations,
)
from pokedex_trainer.backends.torch.process_group import wrap_distributed
from pokedex_trainer.backends.torch.runner import Runner, WeightAverage, make_optimizer
from pokedex_trainer.backends.torch.tensorboard_log import TorchTensorBoardLog

logger = logging.getLogger(__name__)


def _device() -> torch.device:
    import os

    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class TorchTrainingBackend:
    """PyTorch work for the core phase loop (see core/training_backend.py for the contract).

    Under torchrun each process trains its share of every batch; rank 0 alone writes.

    Args:
        context: the run.
    """

    graceful_interrupt = False  # see runs/lifecycle.train_with_backend

    def __init__(self, context: RunContext):
        config = context.config
        self.context = context
        seed_everything(config.seed)
        if config.deterministic:
            import os

            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
        else:  # fixed input sizes: let cuDNN pick its fastest kernels once
            torch.backends.cudnn.benchmark = True
        device = _device()
        self.device = f"{device} ({torch.cuda.get_device_name(device)})" \
            if device.type == "cuda" else "cpu"
        model = build_model(context.spec, context.num_classes, config.weights, config.dropout,
                            config.base_model).to(device)
        if device.type == "cuda":
            model = model.to(memory_format=torch.channels_last)
        if config.mixed_precision and device.type != "cuda":
            logger.warning("--mixed_precision without a GPU uses bfloat16, which most CPUs run "
                           "slower than float32")
        self.model, self.runner = model, Runner(context, model, device)
        self.main_process = self.runner.main
        self.optimizer = self.module = None
        self.loaders: list = []
        self.tensorboard = None
        try:
            self._start_feeding(context)
        except BaseException:
            self.close()
            raise

    def _start_feeding(self, context: RunContext) -> None:
        runner = self.runner
        train_plan = context.make_loader("train", training=True)
        # Each rank trains on its share of the batches and validates on all of them, so every
        # rank reaches the same early-stopping decision without a message.
        self.train_loader = make_data_loader(train_plan, runner.cuda, runner.rank, runner.world)
        self.val_loader = make_data_loader(context.make_loader("val", training=False),
                                           runner.cuda)
        self.loaders += [self.train_loader, self.val_loader]
        if self.main_process:
            images = train_plan.sample_batch().images
            probe = images[:ACTIVATION_IMAGES]
            self.tensorboard = TorchTensorBoardLog(
                context.tensorboard_dir, context.config.histogram_freq,
                lambda: stage_activations(self.model, runner.to_input(torch.from_numpy(probe)),
                                          context.spec.model_type))
            self.tensorboard.log_samples(images)

    def start_phase(self, phase: Phase, learning_rate: float) -> None:
        apply_phase(self.model, phase)
        params = [p for p in self.model.parameters() if p.requires_grad]
        config = self.context.config
        self.optimizer = make_optimizer(config, params, learning_rate)
        self.runner.ema = WeightAverage(params, config.ema) if config.ema else None
        self.module = wrap_distributed(self.model, self.runner.device, self.runner.world)
        if config.compile:  # --compile: the training forward pass through torch.compile
            self.module = torch.compile(self.module)

    def set_learning_rate(self, learning_rate: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate

    def learning_rate(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def fit_epoch(self, epoch: int, phase: Phase) -> dict:
        self.train_loader.set_epoch(epoch)
        return self.runner.train_one_epoch(self.train_loader, self.optimizer, phase, epoch,
                                           self.module)

    def evaluate(self, split: str) -> dict:
        if split == "val":
            return self.runner.evaluate(self.val_loader, prefix="")
        loader = make_data_loader(self.context.make_loader(split, training=False),
                                  self.runner.cuda)
        try:
            return self.runner.evaluate(loader, prefix="")
        finally:
            loader.close()

    def get_weights(self):
        return {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    def set_weights(self, weights) -> None:
        self.model.load_state_dict(weights)

    def save_model(self, path: Path) -> None:
        """``<arch>_best.pth`` / ``<arch>_final_<ts>.pth``: tensors, numbers and strings only."""
        context = self.context
        payload = checkpoint_payload(self.model, context.class_names, context.config.image_size,
                                     context.spec, context.config.dropout)
        with atomic_target(path, suffix=".pth") as tmp:
            torch.save(payload, tmp)

    def read_model_weights(self, path: Path):
        return load_tensors(path)["state_dict"]

    def save_state(self, folder: Path) -> None:
        ema = self.runner.ema
        torch.save({"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                    "scaler": self.runner.scaler.state_dict(),
                    "ema": ema.state_dict() if ema else None}, folder / STATE_FILE)

    def load_state(self, folder: Path) -> None:
        saved = load_tensors(folder / STATE_FILE)
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        if saved.get("scaler"):
            self.runner.scaler.load_state_dict(saved["scaler"])
        if saved.get("ema") and self.runner.ema is not None:
            self.runner.ema.load_state_dict(saved["ema"])

    def swap_ema_weights(self) -> None:
        if self.runner.ema is not None:
            self.runner.ema.swap()

    def log_epoch(self, epoch: int, logs: dict) -> None:
        if self.tensorboard:
            self.tensorboard.log_epoch(epoch, logs, self.model)

    def close(self) -> None:
        """The loaders and TensorBoard; runs/lifecycle.py leaves the process group
        (``leave_distributed``)."""
        for loader in self.loaders:
            loader.close()
        if self.tensorboard:
            self.tensorboard.close()


STATE_FILE = "state.pth"


def find_batch_size(config, spec, num_classes: int):
    """--batch_size auto: real training steps at growing batch sizes (see core/batch_size.py)."""
    from pokedex_trainer.core.batch_size import PeakRSS, find_batch_size, ram_limit

    device = _device()
    # Random weights, everything trainable: the most memory either phase can need.
    model = build_model(spec, num_classes, "none", config.dropout).to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    cuda = device.type == "cuda"
    mixed = config.mixed_precision
    dtype = (torch.float16 if cuda else torch.bfloat16) if mixed else None
    height, width = config.image_size

    def step(batch: int) -> None:
        x = torch.full((batch, 3, height, width), 128.0, device=device)
        y = torch.zeros(batch, dtype=torch.long, device=device)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = nn.functional.cross_entropy(model(x).float(), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def measure(batch: int):
        try:
            if cuda:
                torch.cuda.reset_peak_memory_stats(device)
                step(batch)
                return torch.cuda.max_memory_allocated(device)
            with PeakRSS() as watch:
                step(batch)
            return watch.peak
        except torch.cuda.OutOfMemoryError:
            optimizer.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()
            return None

    if cuda:
        total = torch.cuda.get_device_properties(device).total_memory
        limit = (config.memory_limit_mb or 0) * 2**20 or total
        return find_batch_size(measure, limit, "GPU memory", resettable=True)
    return find_batch_size(measure, ram_limit(config.memory_limit_mb), "RAM", resettable=False)


Backend = TorchTrainingBackend
