"""The two-phase training loop, written once for every framework.

It reads like fastai's ``fine_tune``: for each phase of the plan, set what trains, fit epoch by
epoch (validate, keep the best, stop early, reduce the learning rate on a plateau, save what
resuming needs), then go on from the best weights. A training backend
(``core.training_backend``) does the framework work of each step.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from pokedex_trainer.core.training_backend import EpochRecord, RunFiles, TrainingBackend
from pokedex_trainer.core.context import RunContext
from pokedex_trainer.core.interrupt import INTERRUPT
from pokedex_trainer.core.monitor import BestTracker, EarlyStopping, PlateauScheduler, cosine_learning_rate
from pokedex_trainer.core.phases import Phase, ResumePoint

logger = logging.getLogger(__name__)

MONITOR = "val_accuracy"  # best checkpoint and early stopping
PLATEAU_MONITOR = "val_loss"  # reduce-LR-on-plateau
SHOWN_METRICS = ("loss", "accuracy", "val_loss", "val_accuracy", "val_top5_accuracy")
TRAINABLE_TEXT = {"head": "the new head only (backbone frozen)",
                  "all": "every layer (nothing frozen)",
                  "last_n": "the backbone's last {n} weighted layers + head",
                  "weighted": "every weighted layer of the backbone + head (BatchNorm frozen)"}


@dataclass
class PhaseWindow:
    """Where one phase runs: global epochs [first, end), and whether it resumes mid-way."""

    index: int
    phase: Phase
    first: int
    end: int
    resumed: bool = False
    restore_best: bool = False


@dataclass
class RunState:
    """Per-epoch bookkeeping: history, best score, early stopping, the resume position.

    Args:
        history: where each epoch's row goes (EpochRecord; history.csv in a run).
        patience: early-stopping patience (restarts each phase).
        resume_point: where an interrupted run goes on (``--resume``), if it is one.
        main_process: False on the other ranks of a multi-process run (they write nothing).
        on_epoch: called with (epochs run so far, the epoch's logs) after each epoch; True
            stops the run as ``pruned`` (a hyperparameter search's pruner).
    """

    history: EpochRecord
    patience: int
    resume_point: ResumePoint | None = None
    main_process: bool = True
    on_epoch: Callable[[int, dict], bool] | None = None
    tracker: BestTracker = field(default_factory=lambda: BestTracker("max"))
    best_logs: dict = field(default_factory=dict)
    epochs_run: int = 0
    stop_reason: str | None = None
    device: str = ""

    def __post_init__(self):
        self.early_stopping = EarlyStopping(self.tracker, self.patience)
        if self.resume_point:
            saved = self.resume_point.run_state
            self.tracker.load_state_dict(saved["tracker"])
            self.early_stopping.load_state_dict(saved["early_stopping"])
            self.best_logs = saved["best_logs"]
            self.epochs_run = saved["epochs_run"]
        if self.resume_point and self.main_process:
            self.history.truncate(self.epochs_run)

    def schedule(self, phases: list[Phase]):
        """Yield the PhaseWindow of each phase still to run (all of them on a fresh run)."""
        point = self.resume_point
        start_index = 0 if point is None else point.phase_index + int(point.phase_done)
        epoch = self.epochs_run
        for index, phase in enumerate(phases):
            if index < start_index:
                continue
            if point is not None and index == point.phase_index and not point.phase_done:
                window = PhaseWindow(index, phase, point.next_epoch,
                                     point.phase_start + phase.epochs, resumed=True)
            else:
                window = PhaseWindow(index, phase, epoch, epoch + phase.epochs,
                                     restore_best=point is not None and index == start_index > 0)
            yield window
            epoch = self.epochs_run
            if self.stop_reason:
                return

    def position(self, window: PhaseWindow, epoch: int, stop: bool, plateau: dict,
                 learning_rate: float) -> ResumePoint:
        """What ``--resume`` needs to continue after 0-based ``epoch``."""
        return ResumePoint(
            phase_index=window.index, phase_start=window.end - window.phase.epochs,
            next_epoch=epoch + 1, phase_done=bool(stop or epoch + 1 >= window.end),
            learning_rate=learning_rate, plateau=plateau,
            run_state={"tracker": self.tracker.state_dict(),
                       "early_stopping": self.early_stopping.state_dict(),
                       "best_logs": self.best_logs, "epochs_run": self.epochs_run})

    def start_phase(self, phase: Phase, resumed: bool = False) -> None:
        if resumed:
            logger.info("resuming phase '%s' at epoch %d", phase.name, self.epochs_run + 1)
            return
        self.early_stopping.start_phase()
        logger.info("phase '%s': %d epochs at learning rate %g, trainable: %s", phase.name,
                    phase.epochs, phase.learning_rate,
                    TRAINABLE_TEXT[phase.trainable].format(n=phase.n_layers))

    def end_epoch(self, epoch: int, phase: Phase, logs: dict) -> tuple[bool, bool]:
        """Record one finished epoch (0-based ``epoch``); returns (improved, stop)."""
        logs = {k: float(v) for k, v in logs.items() if isinstance(v, (int, float, np.number))}
        self.epochs_run += 1
        improved = self.tracker.update(logs.get(MONITOR), epoch + 1)
        if improved:
            self.best_logs = dict(logs)
        stop = self.early_stopping.update(improved)
        if self.main_process:
            self.history.write(epoch + 1, phase.name, logs)
        shown = " ".join(f"{k}={logs[k]:.4f}" for k in SHOWN_METRICS if k in logs)
        logger.info("epoch %d (%s): %s lr=%.3g%s", epoch + 1, phase.name, shown,
                    logs.get("learning_rate", float("nan")), " *best*" if improved else "")
        if not math.isfinite(logs.get("loss", 0.0)):
            self.stop_reason = "nan_loss"
            logger.error("training loss is %s at epoch %d: stopping; the best checkpoint is "
                         "kept. Try a lower --learning_rate.", logs.get("loss"), epoch + 1)
            return improved, True
        if stop:
            logger.info("early stopping: no better %s for %d epochs (best %.4f at epoch %d)",
                        MONITOR, self.patience, self.tracker.best, self.tracker.best_epoch)
        # a pruned verdict ends the run even when early stopping ends the phase that epoch
        if self.on_epoch is not None and self.on_epoch(self.epochs_run, logs):
            self.stop_reason = "pruned"
            logger.info("pruned by the search after epoch %d: %s below the median of the "
                        "earlier trials", epoch + 1, MONITOR)
            return improved, True
        return improved, stop


def make_plateau(context: RunContext) -> PlateauScheduler:
    config = context.config
    return PlateauScheduler(factor=config.lr_factor, patience=config.lr_patience,
                            min_lr=config.min_lr, mode="min")


def run_phases(backend: TrainingBackend, context: RunContext, state: RunState,
               phases: list[Phase], saver: RunFiles) -> dict:
    """Train every phase still to run, save the final model; returns test-split metrics."""
    best = None
    for window in state.schedule(phases):
        best = train_phase(backend, context, state, window, saver, best)
    if best is None:  # a resumed run killed after its last epoch: nothing left to train
        best = saver.best_weights(backend)
        if best is not None:
            backend.set_weights(best)
    if best is None and state.stop_reason == "nan_loss":
        logger.error("no epoch ended with a finite loss and a validation score: no model was "
                     "saved")
        return {}
    saver.save_final(backend)
    return evaluate_split(backend, context, "test") if saver.enabled else {}


def train_phase(backend: TrainingBackend, context: RunContext, state: RunState,
                window: PhaseWindow, saver: RunFiles, best):
    """One phase, epoch by epoch; ends on the best weights seen so far. Returns them."""
    phase = window.phase
    state.start_phase(phase, window.resumed)
    if window.restore_best:
        best = saver.best_weights(backend)
        if best is not None:
            backend.set_weights(best)
    plateau = make_plateau(context)
    backend.start_phase(phase, phase.learning_rate)
    learning_rate = phase.learning_rate
    if window.resumed:
        learning_rate = restore_position(backend, saver, state.resume_point, plateau)
    cosine = context.config.lr_schedule == "cosine"
    for epoch in range(window.first, window.end):
        if cosine:
            learning_rate = scheduled_rate(context, window, epoch)
            backend.set_learning_rate(learning_rate)
        logs, improved, stop = run_epoch(backend, state, phase, epoch, learning_rate,
                                         bool(context.config.ema))
        if improved:
            best = backend.get_weights()
            saver.save_best(backend)
        if context.config.ema:
            backend.swap_ema_weights()  # back to the raw weights, which go on training
        if not cosine:
            learning_rate = step_plateau(backend, plateau, logs, learning_rate, epoch)
        if backend.main_process:
            backend.log_epoch(epoch, logs)
        saver.save_epoch(backend, epoch, state.position(window, epoch, stop,
                                                        plateau.state_dict(), learning_rate))
        if stop:
            break
    if best is None:
        best = saver.best_weights(backend)
    if best is not None:
        backend.set_weights(best)  # early stopping restores the best weights
    return best


def run_epoch(backend: TrainingBackend, state: RunState, phase: Phase, epoch: int,
              learning_rate: float, ema: bool = False) -> tuple[dict, bool, bool]:
    """Train and validate one epoch; returns (logs, improved, stop)."""
    started = time.perf_counter()
    logs = backend.fit_epoch(epoch, phase)
    INTERRUPT.check()  # Ctrl-C: this epoch is not recorded, the last one stands
    if ema:  # the average is what is validated, kept as best and saved
        backend.swap_ema_weights()
    if math.isfinite(logs.get("loss", 0.0)):
        logs.update({f"val_{k}": v for k, v in backend.evaluate("val").items()})
        INTERRUPT.check()  # a validation cut short by Ctrl-C does not finish the epoch
    logs["learning_rate"] = learning_rate
    logs["epoch_time_s"] = time.perf_counter() - started
    improved, stop = state.end_epoch(epoch, phase, logs)
    return logs, improved, stop


def scheduled_rate(context: RunContext, window: PhaseWindow, epoch: int) -> float:
    """``--lr_schedule cosine``: the rate of global 0-based ``epoch`` inside its phase."""
    config, phase = context.config, window.phase
    return cosine_learning_rate(phase.learning_rate, epoch - (window.end - phase.epochs),
                                phase.epochs, config.warmup_epochs, config.min_lr)


def step_plateau(backend: TrainingBackend, plateau: PlateauScheduler, logs: dict,
                 learning_rate: float, epoch: int) -> float:
    """Feed the epoch's validation loss to the plateau scheduler; apply a reduction."""
    new_rate = plateau.step(logs.get(PLATEAU_MONITOR), learning_rate)
    if new_rate != learning_rate:
        logger.info("epoch %d: %s has not improved for %d epochs, learning rate %.3g -> %.3g",
                    epoch + 1, PLATEAU_MONITOR, plateau.patience, learning_rate, new_rate)
        backend.set_learning_rate(new_rate)
    return new_rate


def restore_position(backend: TrainingBackend, saver: RunFiles, point: ResumePoint,
                     plateau: PlateauScheduler) -> float:
    """Weights, optimizer, plateau counters and learning rate of an interrupted phase."""
    saver.restore(backend, point)
    if point.plateau:
        plateau.load_state_dict(point.plateau)
    learning_rate = point.learning_rate
    if learning_rate is None:  # a position without a rate: the optimizer holds it
        return backend.learning_rate()
    backend.set_learning_rate(learning_rate)
    return learning_rate


def evaluate_split(backend: TrainingBackend, context: RunContext, split: str) -> dict:
    """Loss, accuracy and top-5 on a split of the run (empty dict if it has no images)."""
    if not context.splits.get(split):
        return {}
    metrics = backend.evaluate(split)
    INTERRUPT.check()  # a pass cut short by Ctrl-C gives no metrics
    # the loss is the training objective; evaluate.py reports the plain cross-entropy, which
    # differs from it by the label smoothing and the class weights
    config = context.config
    objective = [f"label smoothing {config.label_smoothing:g}"] if config.label_smoothing else []
    if config.class_weight != "none":
        objective.append(f"{config.class_weight} class weights")
    note = (f" (the training objective, with {' and '.join(objective)}; evaluate.py reports "
            "the plain cross-entropy)") if objective else ""
    logger.info("%s split: accuracy %.4f, top-5 %.4f, loss %.4f%s", split,
                metrics.get("accuracy", math.nan), metrics.get("top5_accuracy", math.nan),
                metrics.get("loss", math.nan), note)
    return metrics
