"""Two-phase PyTorch training of ResNet152 over the shared data layer and run bookkeeping."""

from __future__ import annotations

import logging
import random
import time

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from ..feeding import UnreadableReporter
from ..phases import Phase
from ..runs import atomic_target
from ..summaries import (SAMPLE_IMAGES_TAG, TRAIN_SUBDIR, VALIDATION_SUBDIR, image_grid,
                         split_epoch_logs)
from ..training import RESUME_DIR, RunContext, RunState
from .data import make_data_loader
from .models import (Classifier, apply_phase, build_model, checkpoint_payload,
                     set_train_mode)

logger = logging.getLogger(__name__)


def _progress_interval() -> float:
    """Redraw often on a terminal; rarely when the output goes to a file or a pipe."""
    import sys

    return 0.1 if sys.stderr.isatty() else 30.0


def init_distributed() -> None:
    """Join the torchrun process group: NCCL on GPUs, gloo on CPUs."""
    import os

    import torch.distributed as dist

    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")


def broadcast(value):
    """Rank 0's ``value`` on every rank (the run context, so all ranks share one run)."""
    import torch.distributed as dist

    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def _world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _device() -> torch.device:
    import os

    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def save_checkpoint(model: Classifier, context: RunContext, kind: str) -> None:
    """Write ``<arch>_best.pth`` / ``<arch>_final_<ts>.pth`` atomically."""
    payload = checkpoint_payload(model, context.class_names, context.config.image_size,
                                 context.spec, context.config.dropout)
    with atomic_target(context.model_path(kind), suffix=".pth") as tmp:
        torch.save(payload, tmp)


class EpochMeter:
    """Running loss, accuracy and top-5 accuracy over the batches of one pass."""

    def __init__(self, num_classes: int):
        self.k = min(5, num_classes)
        self.loss = self.correct = self.top5 = 0.0
        self.count = 0

    def update(self, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        n = labels.shape[0]
        self.loss += float(loss) * n
        top = logits.topk(self.k, dim=1).indices
        self.correct += float((top[:, 0] == labels).sum())
        self.top5 += float((top == labels[:, None]).any(dim=1).sum())
        self.count += n

    def all_reduce(self, device: torch.device) -> None:
        """Sum the counts of every DDP rank, so each rank reports the whole epoch."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return
        totals = torch.tensor([self.loss, self.correct, self.top5, float(self.count)],
                              dtype=torch.float64, device=device)
        dist.all_reduce(totals)
        self.loss, self.correct, self.top5, count = totals.tolist()
        self.count = int(count)

    def results(self, prefix: str = "") -> dict:
        n = max(1, self.count)
        return {f"{prefix}loss": self.loss / n, f"{prefix}accuracy": self.correct / n,
                f"{prefix}top5_accuracy": self.top5 / n}


class _WeightedLoss(nn.Module):
    """mean(class_weight[y] * cross_entropy): what Keras computes with sample weights (torch's
    own weighted mean would divide by the sum of the weights instead)."""

    def __init__(self, class_weights: torch.Tensor):
        super().__init__()
        self.class_weights = class_weights
        self.loss = nn.CrossEntropyLoss(reduction="none")

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return (self.class_weights[labels] * self.loss(logits, labels)).mean()


class Runner:
    """Device, precision and the per-batch work of one run.

    Args:
        context: the run.
        model: the classifier (already on ``device``).
        device: where the model runs.
    """

    def __init__(self, context: RunContext, model: Classifier, device: torch.device):
        self.context, self.model, self.device = context, model, device
        self.cuda = device.type == "cuda"
        mixed = context.config.mixed_precision
        self.autocast_dtype = (torch.float16 if self.cuda else torch.bfloat16) if mixed else None
        self.scaler = torch.amp.GradScaler("cuda", enabled=mixed and self.cuda)
        self.loss_fn = nn.CrossEntropyLoss()
        weights = context.class_weights()
        # Per-sample weights averaged over the batch: Keras' sample-weight arithmetic.
        self.train_loss_fn = self.loss_fn if weights is None else _WeightedLoss(
            torch.tensor(weights, dtype=torch.float32, device=device))
        self.report_failed = UnreadableReporter()
        self.rank, self.world = _world()
        self.main = self.rank == 0

    def to_input(self, images: torch.Tensor) -> torch.Tensor:
        # The loader gives NHWC uint8; permuting gives NCHW with channels-last strides.
        x = images.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float()
        return x.contiguous(memory_format=torch.channels_last) if self.cuda else x.contiguous()

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.autocast_dtype,
                              enabled=self.autocast_dtype is not None)

    def train_one_epoch(self, loader, optimizer, phase: Phase, epoch: int,
                        module: nn.Module | None = None) -> dict:
        """One pass over the training data; ``module`` is the DDP wrapper when there is one."""
        module = module or self.model
        set_train_mode(self.model, phase)
        meter = EpochMeter(self.context.num_classes)
        start = time.perf_counter()
        bar = tqdm(loader, desc=f"epoch {epoch + 1} {phase.name}", unit="batch", leave=False,
                   mininterval=_progress_interval(), disable=not self.main)
        for images, labels, failed in bar:
            self.report_failed(failed)
            x, y = self.to_input(images), labels.to(self.device, non_blocking=True).long()
            optimizer.zero_grad(set_to_none=True)
            with self.autocast():
                logits = module(x)
                loss = self.train_loss_fn(logits.float(), y)
            if not torch.isfinite(loss):
                meter.update(loss.detach(), logits.detach(), y)
                break
            self.scaler.scale(loss).backward()
            self.scaler.step(optimizer)
            self.scaler.update()
            meter.update(loss.detach(), logits.detach(), y)
            seen = meter.count / (time.perf_counter() - start)
            bar.set_postfix(loss=f"{meter.loss / meter.count:.4f}",
                            acc=f"{meter.correct / meter.count:.3f}",
                            lr=f"{optimizer.param_groups[0]['lr']:.2g}", img_s=f"{seen:.1f}",
                            refresh=False)
        bar.close()
        meter.all_reduce(self.device)
        return meter.results()

    @torch.no_grad()
    def evaluate(self, loader, prefix: str = "val_") -> dict:
        self.model.eval()
        meter = EpochMeter(self.context.num_classes)
        for images, labels, failed in tqdm(loader, desc="validate", unit="batch", leave=False,
                                           mininterval=_progress_interval(),
                                           disable=not self.main):
            self.report_failed(failed)
            x, y = self.to_input(images), labels.to(self.device).long()
            with self.autocast():
                logits = self.model(x).float()
            meter.update(self.loss_fn(logits, y), logits, y)
        return meter.results(prefix)


class TensorBoardLogger:
    """The same tags as the Keras runs, through PyTorch's SummaryWriter, flushed every epoch."""

    def __init__(self, log_dir, histogram_freq: int):
        from torch.utils.tensorboard import SummaryWriter

        self.train = SummaryWriter(str(log_dir / TRAIN_SUBDIR))
        self.val = SummaryWriter(str(log_dir / VALIDATION_SUBDIR))
        self.histogram_freq = histogram_freq

    def log_samples(self, images: np.ndarray) -> None:
        self.train.add_image(SAMPLE_IMAGES_TAG, image_grid(images), 0, dataformats="HWC")
        self.train.flush()

    def log_epoch(self, epoch: int, logs: dict, model: nn.Module) -> None:
        train_scalars, val_scalars = split_epoch_logs(logs)
        for tag, value in train_scalars.items():
            self.train.add_scalar(tag, value, epoch)
        for tag, value in val_scalars.items():
            self.val.add_scalar(tag, value, epoch)
        if self.histogram_freq and epoch % self.histogram_freq == 0:
            for name, parameter in model.named_parameters():
                self.train.add_histogram(f"{name}/histogram", parameter.detach().float(), epoch)
                if parameter.grad is not None:  # the last step's gradients
                    self.train.add_histogram(f"gradients/{name}", parameter.grad.float(), epoch)
        self.train.flush()
        self.val.flush()

    def close(self) -> None:
        self.train.close()
        self.val.close()


def train(context: RunContext, state: RunState, phases: list[Phase]) -> dict:
    """Run ``phases`` and save the models; returns the best model's test-split metrics."""
    config = context.config
    seed_everything(config.seed)
    if config.deterministic:
        import os

        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    device = _device()
    state.device = f"{device} ({torch.cuda.get_device_name(device)})" if device.type == "cuda" \
        else "cpu"
    model = build_model(context.spec, context.num_classes, config.weights, config.dropout,
                        config.base_model)
    model = model.to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    if not config.pretrained:
        logger.info("--weights none: training from scratch, nothing is frozen")
    if config.mixed_precision and device.type != "cuda":
        logger.warning("--mixed_precision without a GPU uses bfloat16, which most CPUs run "
                       "slower than float32")
    runner = Runner(context, model, device)
    train_plan = context.make_loader("train", training=True)
    val_plan = context.make_loader("val", training=False)
    # Each rank trains on its share of the batches and validates on all of them, so every rank
    # reaches the same early-stopping decision without a message.
    train_loader, train_sampler = make_data_loader(train_plan, runner.cuda, runner.rank,
                                                   runner.world)
    val_loader, _ = make_data_loader(val_plan, runner.cuda)
    tensorboard = TensorBoardLogger(context.tensorboard_dir, config.histogram_freq) \
        if runner.main else None
    if tensorboard:
        tensorboard.log_samples(train_plan.sample_batch().images)
    best_state = None
    resume_file = context.run_dir / RESUME_DIR / "last.pth"
    try:
        for window in state.schedule(phases):
            phase = window.phase
            state.start_phase(phase, window.resumed)
            if window.restore_best:
                best_state = load_best_state(context)
                model.load_state_dict(best_state)
            apply_phase(model, phase)
            optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad],
                                         lr=phase.learning_rate)
            scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer, mode="min", factor=config.lr_factor, patience=config.lr_patience,
                min_lr=config.min_lr)
            if window.resumed:
                restore_training_state(resume_file, model, optimizer, scheduler, runner.scaler)
            module = wrap_distributed(model, device, runner.world)
            for epoch in range(window.first, window.end):
                state.start_epoch()
                train_sampler.set_epoch(epoch)
                logs = runner.train_one_epoch(train_loader, optimizer, phase, epoch, module)
                logs.update(runner.evaluate(val_loader))
                logs["learning_rate"] = optimizer.param_groups[0]["lr"]
                improved, stop = state.end_epoch(epoch, phase, logs)
                if improved:
                    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                scheduler.step(logs["val_loss"])
                if runner.main:
                    if improved:
                        save_checkpoint(model, context, "best")
                    tensorboard.log_epoch(epoch, logs, model)
                    periodic = state.periodic_name(epoch, config.save_every)
                    if periodic:
                        save_checkpoint(model, context, periodic)
                    save_training_state(resume_file, model, optimizer, scheduler, runner.scaler)
                    state.save_resume_point(context.run_dir, window, epoch, stop)
                if stop:
                    break
            best_state = best_state or load_best_state(context)
            if best_state is not None:
                model.load_state_dict(best_state)  # early stopping restores the best weights
        if not runner.main:
            return {}
        save_checkpoint(model, context, "final")
        logger.info("saved %s and %s", context.model_path("best").name,
                    context.model_path("final").name)
        return evaluate_split(runner, context, "test")
    finally:
        if tensorboard:
            tensorboard.close()
        if runner.world > 1:
            import torch.distributed as dist

            dist.destroy_process_group()


def search_batch_size(config, spec, num_classes: int):
    """--batch_size auto: real training steps at growing batch sizes (see batch_size.py)."""
    from ..batch_size import PeakRSS, find_batch_size, ram_limit

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


def wrap_distributed(model: Classifier, device: torch.device, world: int) -> nn.Module:
    """DistributedDataParallel over the parameters that train in this phase (or the model).

    Wrapped anew each phase: DDP registers the trainable parameters when it is built.
    """
    if world <= 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                   else None)


def load_best_state(context: RunContext) -> dict | None:
    """The best checkpoint's weights from disk (a resumed run has none in memory)."""
    path = context.model_path("best")
    if not path.exists():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def save_training_state(path, model, optimizer, scheduler, scaler) -> None:
    """Everything needed to continue after the last finished epoch, written atomically."""
    path.parent.mkdir(exist_ok=True)
    with atomic_target(path, suffix=".pth") as tmp:
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict()}, tmp)


def restore_training_state(path, model, optimizer, scheduler, scaler) -> None:
    saved = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    if saved.get("scaler"):
        scaler.load_state_dict(saved["scaler"])


def evaluate_split(runner: Runner, context: RunContext, split: str) -> dict:
    """Loss, accuracy and top-5 on a split of the run (empty dict if it has no images)."""
    if not context.splits.get(split):
        return {}
    loader, _ = make_data_loader(context.make_loader(split, training=False), runner.cuda)
    metrics = runner.evaluate(loader, prefix="")
    logger.info("%s split: accuracy %.4f, top-5 %.4f, loss %.4f", split, metrics["accuracy"],
                metrics["top5_accuracy"], metrics["loss"])
    return metrics
