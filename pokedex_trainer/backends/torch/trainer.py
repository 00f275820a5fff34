"""Two-phase PyTorch training of ResNet152 over the shared data layer and run bookkeeping."""

from __future__ import annotations

import logging
import random
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from pokedex_trainer.core.context import RunContext
from pokedex_trainer.core.phases import Phase
from pokedex_trainer.runs.records import atomic_target
from pokedex_trainer.core.tensorboard import (
    ACTIVATION_IMAGES,
    SAMPLE_IMAGES_TAG,
    TRAIN_SUBDIR,
    VALIDATION_SUBDIR,
    activation_tag,
    image_grid,
    split_epoch_logs,
)
from pokedex_trainer.backends.torch.data import make_data_loader
from pokedex_trainer.backends.torch.networks import (
    Classifier,
    apply_phase,
    build_model,
    checkpoint_payload,
    load_tensors,
    set_train_mode,
    stage_activations,
)

logger = logging.getLogger(__name__)


def _progress_interval() -> float:
    """Redraw often on a terminal; rarely when the output goes to a file or a pipe."""
    import sys

    return 0.1 if sys.stderr.isatty() else 30.0


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
    """Leave the process group (when a run stops before its backend exists to close it)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


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


class EpochMeter:
    """Running loss, accuracy and top-5 accuracy over the batches of one pass.

    The sums stay on the model's device, so a step never waits for the GPU; they are read
    (one synchronization) only by ``snapshot``/``results``: at the progress bar's redraws and
    at the end of the pass. ``finite`` is False once a loss was NaN or infinite.
    """

    def __init__(self, num_classes: int, device: torch.device | None = None):
        self.k = min(5, num_classes)
        # loss sum, correct, top-5 correct, non-finite losses
        self.sums = torch.zeros(4, dtype=torch.float64, device=device)
        self.count = 0
        self.loss = self.correct = self.top5 = 0.0
        self.finite = True

    def update(self, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        n = labels.shape[0]
        loss = loss.detach().to(self.sums.device, torch.float64)
        top = logits.detach().topk(self.k, dim=1).indices
        self.sums += torch.stack([loss * n, (top[:, 0] == labels).sum().to(torch.float64),
                                  (top == labels[:, None]).any(dim=1).sum().to(torch.float64),
                                  (~torch.isfinite(loss)).to(torch.float64)])
        self.count += n

    def snapshot(self) -> "EpochMeter":
        """Read the sums from the device (one synchronization); returns self."""
        loss, correct, top5, bad = self.sums.tolist()
        self.loss, self.correct, self.top5, self.finite = loss, correct, top5, bad == 0
        return self

    def all_reduce(self, device: torch.device) -> None:
        """Sum the counts of every DDP rank, so each rank reports the whole epoch."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return
        totals = torch.cat([self.sums.to(device),
                            torch.tensor([float(self.count)], dtype=torch.float64,
                                         device=device)])
        dist.all_reduce(totals)
        self.sums, self.count = totals[:4].clone(), int(totals[4].item())

    def results(self, prefix: str = "") -> dict:
        self.snapshot()
        n = max(1, self.count)
        return {f"{prefix}loss": self.loss / n, f"{prefix}accuracy": self.correct / n,
                f"{prefix}top5_accuracy": self.top5 / n}


class _WeightedLoss(nn.Module):
    """mean(class_weight[y] * cross_entropy): what Keras computes with sample weights (torch's
    own weighted mean would divide by the sum of the weights instead)."""

    def __init__(self, class_weights: torch.Tensor, label_smoothing: float = 0.0):
        super().__init__()
        self.class_weights = class_weights
        self.loss = nn.CrossEntropyLoss(reduction="none", label_smoothing=label_smoothing)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return (self.class_weights[labels] * self.loss(logits, labels)).mean()


class WeightAverage:
    """``--ema``: an exponential moving average of the trainable weights, updated after every
    step (the first step copies them), as Keras' ``use_ema`` optimizers keep it.

    Args:
        params: the parameters the optimizer trains.
        decay: weight of the old average at each update.
    """

    def __init__(self, params: list, decay: float):
        self.params, self.decay = list(params), decay
        self.shadow: list | None = None

    @torch.no_grad()
    def update(self) -> None:
        current = [p.detach() for p in self.params]
        if self.shadow is None:
            self.shadow = [p.clone() for p in current]
        else:
            torch._foreach_lerp_(self.shadow, current, 1.0 - self.decay)

    @torch.no_grad()
    def swap(self) -> None:
        """Exchange the model's weights and the average (twice restores them)."""
        for param, average in zip(self.params, self.shadow or []):
            kept = param.detach().clone()
            param.copy_(average)
            average.copy_(kept)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "shadow": self.shadow}

    def load_state_dict(self, state: dict) -> None:
        if state.get("shadow") is not None:
            self.shadow = [t.to(p.device) for t, p in zip(state["shadow"], self.params)]


def make_optimizer(config, params: list, learning_rate: float) -> torch.optim.Optimizer:
    """Adam, or AdamW with ``--weight_decay`` (decoupled, as Keras' AdamW)."""
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=learning_rate, weight_decay=config.weight_decay)
    return torch.optim.Adam(params, lr=learning_rate)


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
        smoothing = context.config.label_smoothing
        self.loss_fn = nn.CrossEntropyLoss(label_smoothing=smoothing)
        weights = context.class_weights()
        # Per-sample weights averaged over the batch: Keras' sample-weight arithmetic.
        self.train_loss_fn = self.loss_fn if weights is None else _WeightedLoss(
            torch.tensor(weights, dtype=torch.float32, device=device), smoothing)
        self.ema: WeightAverage | None = None
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
        module = self.model if module is None else module
        set_train_mode(self.model, phase)
        meter = EpochMeter(self.context.num_classes, self.device)
        start = time.perf_counter()
        interval = _progress_interval()
        shown = start
        bar = tqdm(loader, desc=f"epoch {epoch + 1} {phase.name}", unit="batch", leave=False,
                   mininterval=interval, disable=not self.main)
        # No host synchronization per step: the metrics add up on the device, and are read
        # (with the NaN check) when the bar redraws; on a CPU every step is checked, at no cost.
        check_every_step = not self.cuda
        for images, labels, _ in bar:  # the loader warns about unreadable files
            x, y = self.to_input(images), labels.to(self.device, non_blocking=True).long()
            optimizer.zero_grad(set_to_none=True)
            with self.autocast():
                logits = module(x)
                loss = self.train_loss_fn(logits.float(), y)
            if check_every_step and not torch.isfinite(loss):
                meter.update(loss, logits, y)
                break
            self.scaler.scale(loss).backward()
            self.scaler.step(optimizer)
            self.scaler.update()
            if self.ema is not None:
                self.ema.update()
            meter.update(loss, logits, y)
            now = time.perf_counter()
            if now - shown >= interval:
                shown = now
                meter.snapshot()
                if not meter.finite:
                    break
                bar.set_postfix(loss=f"{meter.loss / meter.count:.4f}",
                                acc=f"{meter.correct / meter.count:.3f}",
                                lr=f"{optimizer.param_groups[0]['lr']:.2g}",
                                img_s=f"{meter.count / (now - start):.1f}", refresh=False)
        bar.close()
        meter.all_reduce(self.device)
        return meter.results()

    @torch.no_grad()
    def evaluate(self, loader, prefix: str = "val_") -> dict:
        self.model.eval()
        meter = EpochMeter(self.context.num_classes, self.device)
        for images, labels, _ in tqdm(loader, desc="validate", unit="batch", leave=False,
                                      mininterval=_progress_interval(), disable=not self.main):
            x, y = self.to_input(images), labels.to(self.device).long()
            with self.autocast():
                logits = self.model(x).float()
            meter.update(self.loss_fn(logits, y), logits, y)
        return meter.results(prefix)


class TensorBoardLogger:
    """The same tags as the Keras runs, through PyTorch's SummaryWriter, flushed every epoch."""

    def __init__(self, log_dir, histogram_freq: int, activations=None):
        from torch.utils.tensorboard import SummaryWriter

        self.train = SummaryWriter(str(log_dir / TRAIN_SUBDIR))
        self.val = SummaryWriter(str(log_dir / VALIDATION_SUBDIR))
        self.histogram_freq = histogram_freq
        self.activations = activations  # () -> outputs of the chosen backbone stages

    def log_samples(self, images: np.ndarray) -> None:
        self.train.add_image(SAMPLE_IMAGES_TAG, image_grid(images), 0, dataformats="HWC")
        self.train.flush()

    def log_epoch(self, epoch: int, logs: dict, model: nn.Module) -> None:
        """Scalars, and weight/gradient histograms when due."""
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
            for stage, values in enumerate(self.activations() if self.activations else [], 1):
                self.train.add_histogram(activation_tag(stage), values, epoch)
        self.train.flush()
        self.val.flush()

    def close(self) -> None:
        self.train.close()
        self.val.close()


class TorchBackend:
    """PyTorch work for the core phase loop (see core/backend.py for the contract).

    Under torchrun each process trains its share of every batch; rank 0 alone writes.

    Args:
        context: the run.
    """

    graceful_interrupt = False  # see training.train_with_backend

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
            self.tensorboard = TensorBoardLogger(
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

    def load_state(self, folder: Path) -> dict | None:
        path = folder / STATE_FILE
        saved = load_tensors(path if path.is_file() else folder / LEGACY_STATE_FILE)
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        if saved.get("scaler"):
            self.runner.scaler.load_state_dict(saved["scaler"])
        if saved.get("ema") and self.runner.ema is not None:
            self.runner.ema.load_state_dict(saved["ema"])
        scheduler = saved.get("scheduler")  # the first version's torch ReduceLROnPlateau
        if scheduler:
            return {"best": scheduler.get("best"), "wait": scheduler.get("num_bad_epochs", 0),
                    "cooldown_counter": scheduler.get("cooldown_counter", 0)}
        return None

    def swap_ema_weights(self) -> None:
        if self.runner.ema is not None:
            self.runner.ema.swap()

    def log_epoch(self, epoch: int, logs: dict) -> None:
        if self.tensorboard:
            self.tensorboard.log_epoch(epoch, logs, self.model)

    def close(self) -> None:
        for loader in self.loaders:
            loader.close()
        if self.tensorboard:
            self.tensorboard.close()
        if self.runner.world > 1:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


STATE_FILE = "state.pth"
LEGACY_STATE_FILE = "last.pth"  # the first version's resume/ file


def search_batch_size(config, spec, num_classes: int):
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


def wrap_distributed(model: Classifier, device: torch.device, world: int) -> nn.Module:
    """DistributedDataParallel over the parameters that train in this phase (or the model).

    Wrapped anew each phase: DDP registers the trainable parameters when it is built.
    """
    if world <= 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                   else None)


Backend = TorchBackend
