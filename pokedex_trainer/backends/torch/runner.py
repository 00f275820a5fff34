"""The per-batch work of a PyTorch run: input, precision, loss, optimizer, weight average and
the metrics of one pass."""

from __future__ import annotations

import time

import torch
from torch import nn
from tqdm import tqdm

from pokedex_trainer.core.context import RunContext
from pokedex_trainer.core.phases import Phase
from pokedex_trainer.backends.torch.torch_networks import Classifier, set_train_mode
from pokedex_trainer.backends.torch.process_group import group_world


def _progress_interval() -> float:
    """Redraw often on a terminal; rarely when the output goes to a file or a pipe."""
    import sys

    return 0.1 if sys.stderr.isatty() else 30.0


class EpochMeter:
    """Running loss, accuracy and top-5 accuracy over the batches of one pass.

    The sums stay on the model's device, so a step never waits for the GPU; they are read
    (one synchronization) only by ``snapshot``/``results``: at the progress bar's redraws and
    at the end of the pass. ``finite`` is False once a loss was NaN or infinite.
    """

    def __init__(self, num_classes: int, device: torch.device | None = None):
        self.k = min(5, num_classes)
        # loss sum, correct, top-5 correct, non-finite losses, labelled photos (--unknown_dir's
        # photos, label -1, count in the loss but not in the accuracy)
        self.sums = torch.zeros(5, dtype=torch.float64, device=device)
        self.count = 0
        self.loss = self.correct = self.top5 = self.labelled = 0.0
        self.finite = True

    def update(self, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        n = labels.shape[0]
        loss = loss.detach().to(self.sums.device, torch.float64)
        top = logits.detach().topk(self.k, dim=1).indices
        self.sums += torch.stack([loss * n, (top[:, 0] == labels).sum().to(torch.float64),
                                  (top == labels[:, None]).any(dim=1).sum().to(torch.float64),
                                  (~torch.isfinite(loss)).to(torch.float64),
                                  (labels >= 0).sum().to(torch.float64)])
        self.count += n

    def snapshot(self) -> "EpochMeter":
        """Read the sums from the device (one synchronization); returns self."""
        loss, correct, top5, bad, labelled = self.sums.tolist()
        self.loss, self.correct, self.top5, self.finite = loss, correct, top5, bad == 0
        self.labelled = labelled
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
        self.sums, self.count = totals[:5].clone(), int(totals[5].item())

    def results(self, prefix: str = "") -> dict:
        self.snapshot()
        n, labelled = max(1, self.count), max(1.0, self.labelled)
        return {f"{prefix}loss": self.loss / n, f"{prefix}accuracy": self.correct / labelled,
                f"{prefix}top5_accuracy": self.top5 / labelled}


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
        self.class_weight_list = weights
        self.ema: WeightAverage | None = None
        self.rank, self.world = group_world()
        self.main = self.rank == 0

    def exposure_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """core/outlier_exposure.py's loss: each photo's target distribution and weight (the
        unknown photos' uniform), weighted cross-entropy averaged over the batch."""
        from pokedex_trainer.core.outlier_exposure import sample_weights, soft_targets

        config, known = self.context.config, labels.numpy()
        targets = torch.from_numpy(soft_targets(known, self.context.num_classes,
                                                config.label_smoothing)).to(self.device)
        weights = torch.from_numpy(sample_weights(known, self.class_weight_list,
                                                  config.unknown_weight)).to(self.device)
        return (weights * nn.functional.cross_entropy(logits, targets, reduction="none")).mean()

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
                loss = self.exposure_loss(logits.float(), labels) if \
                    self.context.config.unknown_dir else self.train_loss_fn(logits.float(), y)
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
                                acc=f"{meter.correct / max(1.0, meter.labelled):.3f}",
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
