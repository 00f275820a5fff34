"""Framework-free callback logic: best-value tracking and early stopping.

The Keras and PyTorch trainers wrap these in their own callback shapes, so "better", "patience"
and "restore the best weights" mean exactly the same thing in both, and the state is a plain
dict that a resumed run can restore.
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
