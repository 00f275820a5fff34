"""A training run from the command line to the experiments row, framework-free.

``run_training`` checks the data, makes the split and the run directory, hands the work to the
backend of the chosen network (Keras or PyTorch) and records the outcome, whatever it is.
``RunState`` is the per-epoch bookkeeping both backends share: history, best score, early
stopping, the log line.
"""

from __future__ import annotations

import importlib
import json
import logging
import math
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import __version__
from .config import TrainConfig
from .dataset import (MANIFEST_NAME, DatasetIndex, dataset_warnings, drop_samples,
                      find_unreadable_headers, scan_dataset, stratified_split, write_manifest)
from .errors import TrainingStopped, UserError
from .feeding import BatchLoader, BatchSource
from .models import ModelSpec, get_spec
from .monitor import BestTracker, EarlyStopping
from .phases import Phase, plan_phases
from .runs import (HistoryWriter, append_experiment, atomic_write_json, capture_to_log,
                   create_run_dir, ensure_writable_dir, timestamp)

logger = logging.getLogger(__name__)

MONITOR = "val_accuracy"  # best checkpoint and early stopping; reduce-LR watches val_loss


@dataclass
class RunContext:
    """Everything a backend needs to train one run."""

    config: TrainConfig
    spec: ModelSpec
    index: DatasetIndex
    splits: dict[str, list[tuple[str, int]]]
    run_dir: Path
    tensorboard_dir: Path
    timestamp: str

    @property
    def class_names(self) -> list[str]:
        return self.index.class_names

    @property
    def num_classes(self) -> int:
        return len(self.index.class_names)

    def model_path(self, kind: str) -> Path:
        """``<arch>_best<ext>`` or ``<arch>_final_<timestamp><ext>`` inside the run directory."""
        name = "best" if kind == "best" else f"final_{self.timestamp}"
        return self.run_dir / f"{self.spec.arch}_{name}{self.spec.model_extension}"

    def make_loader(self, split: str, training: bool, shuffle: bool | None = None,
                    workers: int | None = None) -> BatchLoader:
        """A batch loader over ``split``; augmentation only when ``training`` and enabled."""
        source = BatchSource(self.index.root, self.splits[split], self.config.image_size,
                             training=training and self.config.augment, seed=self.config.seed)
        return BatchLoader(source, self.config.batch_size,
                           shuffle=training if shuffle is None else shuffle,
                           workers=self.config.workers if workers is None else workers,
                           seed=self.config.seed, drop_last=training)


@dataclass
class RunState:
    """Per-epoch bookkeeping shared by both backends.

    Args:
        history_path: where history.csv goes.
        patience: early-stopping patience (restarts each phase).
    """

    history_path: Path
    patience: int
    tracker: BestTracker = field(default_factory=lambda: BestTracker("max"))
    best_logs: dict = field(default_factory=dict)
    epochs_run: int = 0
    stop_reason: str | None = None

    def __post_init__(self):
        self.early_stopping = EarlyStopping(self.tracker, self.patience)
        self.history = HistoryWriter(self.history_path)
        self._epoch_start = time.perf_counter()

    def start_phase(self, phase: Phase) -> None:
        self.early_stopping.start_phase()
        logger.info("phase '%s': %d epochs at learning rate %g, trainable: %s", phase.name,
                    phase.epochs, phase.learning_rate,
                    {"head": "the new head only (backbone frozen)",
                     "all": "every layer (nothing frozen)",
                     "last_n": f"the backbone's last {phase.n_layers} weighted layers + head"}
                    [phase.trainable])

    def start_epoch(self) -> None:
        self._epoch_start = time.perf_counter()

    def end_epoch(self, epoch: int, phase: Phase, logs: dict) -> tuple[bool, bool]:
        """Record one finished epoch (0-based ``epoch``); returns (improved, stop)."""
        logs = {k: float(v) for k, v in logs.items() if isinstance(v, (int, float, np.number))}
        logs["epoch_time_s"] = time.perf_counter() - self._epoch_start
        self.epochs_run += 1
        improved = self.tracker.update(logs.get(MONITOR), epoch + 1)
        if improved:
            self.best_logs = dict(logs)
        stop = self.early_stopping.update(improved)
        self.history.write(epoch + 1, phase.name, logs)
        shown = " ".join(f"{k}={logs[k]:.4f}" for k in
                         ("loss", "accuracy", "val_loss", "val_accuracy", "val_top5_accuracy")
                         if k in logs)
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
        return improved, stop


def load_backend(framework: str):
    """Import the trainer of one framework only when a run needs it."""
    module = {"keras": "pokedex_trainer.keras_backend.trainer",
              "torch": "pokedex_trainer.torch_backend.trainer"}[framework]
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        if exc.name and exc.name.split(".")[0] in ("tensorflow", "keras", "torch", "torchvision"):
            raise UserError(f"{exc.name} is not installed: run "
                            "'python -m pip install -r requirements.txt'") from None
        raise


def prepare_data(config: TrainConfig) -> tuple[DatasetIndex, dict, list[str]]:
    """Scan, drop unreadable files, split; returns the warnings to log with the run.

    The warnings are returned, not logged, so they land in the run's training.log too.
    """
    index = scan_dataset(config.data_path)
    bad = find_unreadable_headers(index)
    notes = [f"skipped unreadable image {relative}: {reason}" for relative, reason in bad]
    if bad:
        index = drop_samples(index, {relative for relative, _ in bad})
        notes.append(f"{len(bad)} unreadable files skipped (run prepare_dataset.py --check for "
                     "a full report)")
    notes.extend(dataset_warnings(index, config.image_size))
    splits = stratified_split(index, config.val_split, config.test_split, config.seed)
    return index, splits, notes


def environment_info() -> dict:
    return {"python": sys.version.split()[0], "platform": platform.platform(),
            "pokedex_trainer": __version__, "command": sys.argv}


def experiment_row(context: RunContext, state: RunState, status: str, started: float,
                   test_metrics: dict) -> dict:
    config = context.config
    best = state.best_logs
    return {
        "run_name": context.run_dir.name, "model_type": config.model_type, "status": status,
        "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)),
        "duration_s": f"{time.time() - started:.1f}", "epochs_run": state.epochs_run,
        "best_val_accuracy": _fmt(best.get("val_accuracy")),
        "best_val_top5_accuracy": _fmt(best.get("val_top5_accuracy")),
        "best_epoch": state.tracker.best_epoch or "",
        "test_accuracy": _fmt(test_metrics.get("accuracy")),
        "test_top5_accuracy": _fmt(test_metrics.get("top5_accuracy")),
        "learning_rate": config.learning_rate,
        "fine_tune_learning_rate": config.fine_tune_learning_rate,
        "batch_size": config.batch_size, "image_size": "x".join(map(str, config.image_size)),
        "epochs": config.epochs, "fine_tune_epochs": config.fine_tune_epochs,
        "fine_tune_layers": config.fine_tune_layers, "weights": config.weights,
        "dropout": config.dropout, "augment": config.augment, "seed": config.seed,
        "run_dir": str(context.run_dir),
    }


def _fmt(value) -> str:
    return "" if value is None else f"{value:.4f}"


def run_training(config: TrainConfig) -> Path:
    """Train one run end to end; returns its directory. Raises UserError on bad input."""
    config = config.resolved()
    spec = get_spec(config.model_type)
    if config.weights.lower() not in ("imagenet", "none") and not Path(config.weights).is_file():
        raise UserError(f"--weights: '{config.weights}' is neither 'imagenet', 'none' nor an "
                        "existing weights file")
    index, splits, notes = prepare_data(config)
    started_stamp = timestamp()
    output_dir = Path(config.output_dir)
    run_dir = create_run_dir(output_dir, config.run_name or f"{config.model_type}_{started_stamp}")
    tensorboard_dir = ensure_writable_dir(Path(config.log_dir), "TensorBoard log directory")
    context = RunContext(config, spec, index, splits, run_dir, tensorboard_dir / run_dir.name,
                         started_stamp)
    config.save(run_dir / "config.json")
    atomic_write_json(run_dir / "class_names.json", index.class_names)
    write_manifest(run_dir / MANIFEST_NAME, index, splits, config.seed, config.val_split,
                   config.test_split)
    state = RunState(run_dir / "history.csv", config.patience)
    started = time.time()
    status, test_metrics = "failed", {}
    with capture_to_log(run_dir / "training.log"):
        logger.info("run directory: %s", run_dir)
        for note in notes:
            logger.warning("%s", note)
        logger.info("%s on %d classes: %d train / %d validation / %d test images, %dx%d, "
                    "batch %d", spec.display_name, len(index.class_names), len(splits["train"]),
                    len(splits["val"]), len(splits["test"]), *config.image_size,
                    config.batch_size)
        try:
            backend = load_backend(spec.framework)
            test_metrics = backend.train(context, state, plan_phases(config))
            status = state.stop_reason or "completed"
        except KeyboardInterrupt:
            status = "interrupted"
            logger.warning("interrupted: outputs written so far are kept in %s", run_dir)
            raise
        finally:
            summary = experiment_row(context, state, status, started, test_metrics)
            summary["environment"] = environment_info()
            atomic_write_json(run_dir / "summary.json", summary)
            append_experiment(output_dir / "experiments.csv", summary)
    if status == "nan_loss":
        raise TrainingStopped(f"training stopped: the loss became NaN; best model kept in "
                              f"{run_dir}")
    logger.info("done: best %s %s at epoch %s; outputs in %s", MONITOR,
                summary["best_val_accuracy"], summary["best_epoch"], run_dir)
    return run_dir


def read_run_config(run_dir: Path) -> TrainConfig:
    return TrainConfig.load(Path(run_dir) / "config.json")


def read_class_names(run_dir: Path) -> list[str]:
    return json.loads((Path(run_dir) / "class_names.json").read_text(encoding="utf-8"))
