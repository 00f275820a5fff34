"""The contract between the core phase loop and a framework.

A backend does framework work only: build the network, make a phase's layers trainable with a
fresh optimizer, run one epoch, evaluate a split, move weights, write and read files. The order
of events, the best-weights restore, early stopping, the plateau schedule, resume and logging
live once, in ``core.loop``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from pokedex_trainer.core.phases import Phase, ResumePoint


class TrainingBackend(Protocol):
    """What ``core.loop.run_phases`` drives. One instance trains one run.

    Attributes:
        device: a readable description of where the run trains (recorded in summary.json).
        main_process: False on the other ranks of a multi-process run (they write nothing).
    """

    device: str
    main_process: bool
    graceful_interrupt: bool  # first Ctrl-C ends the batch, then the loop stops (else at once)

    def start_phase(self, phase: Phase, learning_rate: float) -> None:
        """Freeze/unfreeze for ``phase`` and make a fresh optimizer at ``learning_rate``."""

    def set_learning_rate(self, learning_rate: float) -> None:
        """Change the optimizer's learning rate (reduce-on-plateau)."""

    def swap_ema_weights(self) -> None:
        """``--ema``: exchange the weights and their moving average (a no-op without it)."""
        ...

    def learning_rate(self) -> float:
        """The optimizer's current learning rate."""

    def fit_epoch(self, epoch: int, phase: Phase) -> dict:
        """Train one pass over the training split; returns loss, accuracy, top5_accuracy."""

    def evaluate(self, split: str) -> dict:
        """loss, accuracy, top5_accuracy of the current weights on a split of the run."""

    def get_weights(self) -> Any:
        """A copy of the model's weights, in memory."""

    def set_weights(self, weights: Any) -> None:
        """Put weights from ``get_weights`` or ``read_model_weights`` back."""

    def save_model(self, path: Path) -> None:
        """Write the inference model (best, final, periodic copies) atomically."""

    def read_model_weights(self, path: Path) -> Any:
        """The weights of a model file written by ``save_model``."""

    def save_state(self, folder: Path) -> None:
        """Write what resuming needs (weights, optimizer, scaler) into an empty ``folder``."""

    def load_state(self, folder: Path) -> None:
        """Restore ``save_state``'s files."""

    def log_epoch(self, epoch: int, logs: dict) -> None:
        """TensorBoard scalars (and histograms when due) of one finished epoch."""

    def close(self) -> None:
        """Stop loaders and workers, close writers. Called once, also after an error."""


class RunFiles(Protocol):
    """What the loop asks of the run's files (runs/checkpoints.py CheckpointSaver): core
    writes no file itself."""

    enabled: bool  # False on the ranks of a multi-process run that write nothing

    def save_best(self, backend: TrainingBackend) -> None:
        """Write the best model so far."""

    def save_final(self, backend: TrainingBackend) -> None:
        """Write the final model."""

    def best_weights(self, backend: TrainingBackend) -> Any:
        """The best model's weights (read back from its file)."""

    def save_epoch(self, backend: TrainingBackend, epoch: int, position: ResumePoint) -> None:
        """Keep what resuming after 0-based ``epoch`` needs (and a periodic copy when due)."""

    def restore(self, backend: TrainingBackend, position: ResumePoint) -> None:
        """Put back the state saved with ``position``."""


class EpochRecord(Protocol):
    """Where each finished epoch's row goes (runs/history.py HistoryWriter: history.csv)."""

    def write(self, epoch: int, phase: str, logs: dict) -> None:
        """One row: 1-based ``epoch``, the phase's name, its metrics."""

    def truncate(self, epochs: int) -> None:
        """Drop the rows after the first ``epochs`` (a resumed run repeats them)."""
