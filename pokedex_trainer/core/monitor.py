"""Framework-free callback logic: best-value tracking, early stopping, reduce-LR-on-plateau.

The core phase loop drives these for every backend, so "better", "patience", "restore the best
weights" and "reduce the learning rate" mean exactly the same thing in Keras and PyTorch, and
their state is a plain dict that a resumed run restores.
"""

from __future__ import annotations

import math


class BestTracker:
    """Remembers the best value of a metric and whether the latest one improved on it.

    Args:
        mode: ``"max"`` (accuracy) or ``"min"`` (loss).
        min_delta: smallest change that counts as an improvement.
    """

    def __init__(self, mode: str = "max", min_delta: float = 0.0):
        if mode not in ("max", "min"):
            raise ValueError("mode must be 'max' or 'min'")
        self.mode = mode
        self.min_delta = min_delta
        self.best: float | None = None
        self.best_epoch: int | None = None

    def is_better(self, value: float) -> bool:
        if value is None or math.isnan(value):
            return False
        if self.best is None:
            return True
        if self.mode == "max":
            return value > self.best + self.min_delta
        return value < self.best - self.min_delta

    def update(self, value: float, epoch: int) -> bool:
        """Record ``value``; True when it is a new best."""
        if self.is_better(value):
            self.best, self.best_epoch = float(value), epoch
            return True
        return False

    def state_dict(self) -> dict:
        return {"best": self.best, "best_epoch": self.best_epoch}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.best_epoch = state.get("best"), state.get("best_epoch")


class EarlyStopping:
    """Stop when the monitored metric has not improved for ``patience`` epochs.

    The best value is shared across phases (pass the run's ``BestTracker``), so phase 2 stops
    once it has gone ``patience`` epochs without beating the best of the whole run; the patience
    count itself restarts with each phase.

    Args:
        tracker: the run's best-value tracker (updated by the caller or by ``update``).
        patience: epochs without improvement before stopping.
    """

    def __init__(self, tracker: BestTracker, patience: int):
        self.tracker = tracker
        self.patience = patience
        self.wait = 0

    def start_phase(self) -> None:
        self.wait = 0

    def update(self, improved: bool) -> bool:
        """Count one epoch; return True when training should stop."""
        self.wait = 0 if improved else self.wait + 1
        return self.wait >= self.patience

    def state_dict(self) -> dict:
        return {"wait": self.wait}

    def load_state_dict(self, state: dict) -> None:
        self.wait = int(state.get("wait", 0))


class PlateauScheduler:
    """Reduce the learning rate when a metric stops improving, with the semantics of Keras'
    ``ReduceLROnPlateau`` (which PyTorch's scheduler of the same name does not share: it counts
    ``bad_epochs > patience`` and uses a relative threshold).

    An epoch improves when ``value < best - min_delta`` (mode ``"min"``) or
    ``value > best + min_delta`` (mode ``"max"``). After ``patience`` epochs in a row without
    improvement the rate is multiplied by ``factor`` (never below ``min_lr``), the count
    restarts, and ``cooldown`` epochs follow in which no epoch counts as bad.

    Args:
        factor: multiplier of the learning rate, in (0, 1).
        patience: epochs without improvement before a reduction.
        min_delta: smallest change that counts as an improvement.
        cooldown: epochs to wait after a reduction before counting again.
        min_lr: lower bound of the learning rate.
        mode: ``"min"`` (a loss) or ``"max"`` (an accuracy).
    """

    def __init__(self, factor: float = 0.1, patience: int = 10, min_delta: float = 1e-4,
                 cooldown: int = 0, min_lr: float = 0.0, mode: str = "min"):
        if not 0 < factor < 1:
            raise ValueError("factor must be in (0, 1)")
        if mode not in ("min", "max"):
            raise ValueError("mode must be 'min' or 'max'")
        self.factor, self.patience, self.min_delta = factor, patience, min_delta
        self.cooldown, self.min_lr, self.mode = cooldown, min_lr, mode
        self.best: float | None = None
        self.wait = 0
        self.cooldown_counter = 0

    def _improves(self, value: float) -> bool:
        if self.best is None:
            return True
        if self.mode == "min":
            return value + self.min_delta < self.best
        return value - self.min_delta > self.best

    def step(self, value: float | None, learning_rate: float) -> float:
        """Count one epoch's ``value``; returns the learning rate for the next epoch."""
        if value is None or math.isnan(value):
            return learning_rate
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.wait = 0
        if self._improves(value):
            self.best, self.wait = float(value), 0
        elif self.cooldown_counter == 0:
            self.wait += 1
            # float32 comparison: what an optimizer variable can hold
            if self.wait >= self.patience and learning_rate > _float32(self.min_lr):
                learning_rate = max(learning_rate * self.factor, self.min_lr)
                self.cooldown_counter, self.wait = self.cooldown, 0
        return learning_rate

    def state_dict(self) -> dict:
        return {"best": self.best, "wait": self.wait, "cooldown_counter": self.cooldown_counter}

    def load_state_dict(self, state: dict) -> None:
        best = state.get("best")
        self.best = None if best is None or not math.isfinite(best) else float(best)
        self.wait = int(state.get("wait", 0))
        self.cooldown_counter = int(state.get("cooldown_counter", 0))


def _float32(value: float) -> float:
    import struct

    return struct.unpack("f", struct.pack("f", value))[0]


def cosine_learning_rate(base: float, epoch_in_phase: int, phase_epochs: int,
                         warmup_epochs: int = 0, min_lr: float = 0.0) -> float:
    """``--lr_schedule cosine``: the rate of 0-based ``epoch_in_phase``.

    A linear warm-up over the first ``warmup_epochs`` (base x k / (warmup + 1) at the k-th),
    then a half cosine from ``base`` toward ``min_lr``, reached at the end of the phase.
    """
    warmup = min(warmup_epochs, max(0, phase_epochs - 1))
    if epoch_in_phase < warmup:
        return base * (epoch_in_phase + 1) / (warmup + 1)
    progress = (epoch_in_phase - warmup) / max(1, phase_epochs - warmup)
    return min_lr + (base - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
