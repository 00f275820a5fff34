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
                      find_unreadable_headers, read_manifest, scan_dataset, stratified_split,
                      write_manifest)
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
        """``<arch>_best<ext>``, ``<arch>_final_<timestamp><ext>`` or ``<arch>_<kind><ext>``."""
        name = f"final_{self.timestamp}" if kind == "final" else kind
        return self.run_dir / f"{self.spec.arch}_{name}{self.spec.model_extension}"

    def make_loader(self, split: str, training: bool, shuffle: bool | None = None,
                    workers: int | None = None) -> BatchLoader:
        """A batch loader over ``split``; augmentation only when ``training`` and enabled."""
        source = BatchSource(self.index.root, self.splits[split], self.config.image_size,
                             training=training and self.config.augment, seed=self.config.seed)
        return BatchLoader(source, self.config.batch_size,
                           shuffle=training if shuffle is None else shuffle,
                           workers=self.config.workers if workers is None else workers,
                           seed=self.config.seed, drop_last=training,
                           balanced=training and self.config.sampler == "balanced")

    def class_weights(self):
        """Per-class loss weights of ``--class_weight`` (None when off), from the train split."""
        if self.config.class_weight != "balanced":
            return None
        from .balance import balanced_class_weights

        return balanced_class_weights([label for _, label in self.splits["train"]],
                                      self.num_classes)


RESUME_DIR = "resume"
RESUME_STATE = "state.json"


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
    """Per-epoch bookkeeping shared by both backends.

    Args:
        history_path: where history.csv goes.
        patience: early-stopping patience (restarts each phase).
        resume_point: the saved position of an interrupted run (``--resume``), if any.
    """

    history_path: Path
    patience: int
    tracker: BestTracker = field(default_factory=lambda: BestTracker("max"))
    best_logs: dict = field(default_factory=dict)
    epochs_run: int = 0
    stop_reason: str | None = None
    device: str = ""
    resume_point: dict | None = None
    main_process: bool = True  # under DistributedDataParallel only rank 0 writes

    def __post_init__(self):
        self.early_stopping = EarlyStopping(self.tracker, self.patience)
        if self.resume_point:
            saved = self.resume_point["run_state"]
            self.tracker.load_state_dict(saved["tracker"])
            self.early_stopping.load_state_dict(saved["early_stopping"])
            self.best_logs = saved["best_logs"]
            self.epochs_run = saved["epochs_run"]
            if self.main_process:
                truncate_history(self.history_path, self.epochs_run)
        self.history = HistoryWriter(self.history_path)
        self._epoch_start = time.perf_counter()

    def schedule(self, phases: list[Phase]):
        """Yield the PhaseWindow of each phase still to run (all of them on a fresh run)."""
        point = self.resume_point or {}
        start_index = point.get("phase_index", 0) + (1 if point.get("phase_done") else 0)
        epoch = self.epochs_run
        for index, phase in enumerate(phases):
            if index < start_index:
                continue
            mid_phase = bool(point) and index == point.get("phase_index") and \
                not point.get("phase_done")
            if mid_phase:
                window = PhaseWindow(index, phase, point["next_epoch"],
                                     point["phase_start"] + phase.epochs, resumed=True)
            else:
                window = PhaseWindow(index, phase, epoch, epoch + phase.epochs,
                                     restore_best=bool(point) and index == start_index
                                     and index > 0)
            yield window
            epoch = self.epochs_run
            if self.stop_reason:
                return

    def save_resume_point(self, run_dir: Path, window: PhaseWindow, epoch: int, stop: bool,
                          backend: dict | None = None) -> None:
        """Record the position after ``epoch`` (0-based), once the backend saved its files."""
        if not self.main_process:
            return
        phase_start = window.end - window.phase.epochs
        atomic_write_json(run_dir / RESUME_DIR / RESUME_STATE, {
            "phase_index": window.index, "phase_start": phase_start, "next_epoch": epoch + 1,
            "phase_done": bool(stop or epoch + 1 >= window.end),
            "run_state": {"tracker": self.tracker.state_dict(),
                          "early_stopping": self.early_stopping.state_dict(),
                          "best_logs": self.best_logs, "epochs_run": self.epochs_run},
            "backend": backend or {},
        })

    def start_phase(self, phase: Phase, resumed: bool = False) -> None:
        if resumed:
            logger.info("resuming phase '%s' at epoch %d", phase.name, self.epochs_run + 1)
            return
        self.early_stopping.start_phase()
        logger.info("phase '%s': %d epochs at learning rate %g, trainable: %s", phase.name,
                    phase.epochs, phase.learning_rate,
                    {"head": "the new head only (backbone frozen)",
                     "all": "every layer (nothing frozen)",
                     "last_n": f"the backbone's last {phase.n_layers} weighted layers + head"}
                    [phase.trainable])

    def periodic_name(self, epoch: int, every: int) -> str | None:
        """``epoch_NNN`` when ``--save_every`` asks for a copy after 0-based ``epoch``."""
        return f"epoch_{epoch + 1:03d}" if every and (epoch + 1) % every == 0 else None

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
        if self.main_process:
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


def truncate_history(path: Path, epochs: int) -> None:
    """Drop history rows past ``epochs``: an epoch killed after its row but before its resume
    point is run again and must not appear twice."""
    import csv

    if not path.exists():
        return
    with open(path, encoding="utf-8", newline="") as handle:
        rows = list(csv.reader(handle))
    if not rows:
        return
    kept = [rows[0]] + [row for row in rows[1:] if row and int(row[0]) <= epochs]
    if len(kept) != len(rows):
        with open(path, "w", encoding="utf-8", newline="") as handle:
            csv.writer(handle, lineterminator="\n").writerows(kept)


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
    from .balance import IMBALANCE_WARNING_RATIO, imbalance_ratio

    ratio = imbalance_ratio(index.counts().values())
    if ratio > IMBALANCE_WARNING_RATIO and config.class_weight == config.sampler == "none":
        notes.append(f"classes are imbalanced (largest/smallest = {ratio:.1f}): consider "
                     "--class_weight balanced or --sampler balanced")
    splits = stratified_split(index, config.val_split, config.test_split, config.seed)
    return index, splits, notes


LIBRARIES = ("tensorflow", "keras", "torch", "torchvision", "albumentations",
             "opencv-python-headless", "numpy", "pillow")


def environment_info() -> dict:
    """What it takes to repeat a run: versions, platform and the exact command line."""
    from importlib import metadata

    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {"python": sys.version.split()[0], "platform": platform.platform(),
            "pokedex_trainer": __version__, "libraries": versions,
            "command": [sys.executable] + sys.argv}


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
        "fine_tune_layers": config.fine_tune_layers,
        "weights": f"base_model:{Path(config.base_model).name}" if config.base_model
        else config.weights,
        "dropout": config.dropout, "augment": config.augment,
        "class_weight": config.class_weight, "sampler": config.sampler, "seed": config.seed,
        "run_dir": str(context.run_dir),
    }


def _fmt(value) -> str:
    return "" if value is None else f"{value:.4f}"


def search_batch_size(config: TrainConfig, num_classes: int):
    """Run the backend's batch-size search for ``config``; returns a BatchSearch."""
    spec = get_spec(config.model_type)
    logger.info("looking for the largest batch size that trains (%s, %dx%d%s)...",
                spec.display_name, *config.image_size,
                ", mixed precision" if config.mixed_precision else "")
    return load_backend(spec.framework).search_batch_size(config, spec, num_classes)


def find_batch_size_only(config: TrainConfig) -> int:
    """``--find_batch_size``: print the batch size ``--batch_size auto`` would use."""
    config = config.resolved()
    num_classes = len(scan_dataset(config.data_path).class_names)
    result = search_batch_size(config, num_classes)
    print(result.describe())
    return result.chosen


def apply_base_model(config: TrainConfig) -> None:
    """Take the network (and, unless given, the input size) of ``--base_model``."""
    from .transfer import describe_base_model

    base = describe_base_model(config.base_model)
    if config.model_type not in (None, base.model_type):
        raise UserError(f"--model_type {config.model_type} does not match --base_model "
                        f"'{base.path}', a {get_spec(base.model_type).display_name} model")
    config.model_type = base.model_type
    if config.image_size is None:
        config.image_size = base.image_size


def run_framework(config: TrainConfig, resume_dir: Path | None) -> str:
    """keras or torch: the framework a run (new or resumed) trains with."""
    if resume_dir is not None and (Path(resume_dir) / "config.json").is_file():
        return get_spec(TrainConfig.load(Path(resume_dir) / "config.json").model_type).framework
    return get_spec(config.model_type).framework


def create_run(config: TrainConfig, prepared: tuple | None = None
               ) -> tuple[RunContext, list[str]]:
    """Check the data, make the run directory and write what the run starts from.

    ``prepared`` is (index, splits, notes) made beforehand (one fold of --kfold).
    """
    spec = get_spec(config.model_type)
    if config.base_model:
        config.base_model = str(Path(config.base_model).resolve())
    elif config.weights.lower() not in ("imagenet", "none") and \
            not Path(config.weights).is_file():
        raise UserError(f"--weights: '{config.weights}' is neither 'imagenet', 'none' nor an "
                        "existing weights file")
    index, splits, notes = prepared if prepared else prepare_data(config)
    notes = list(notes)
    if config.batch_size == "auto":
        result = search_batch_size(config, len(index.class_names))
        config.batch_size = result.chosen
        notes.insert(0, f"--batch_size auto chose {result.describe()}")
    started_stamp = timestamp()
    run_dir = create_run_dir(Path(config.output_dir),
                             config.run_name or f"{config.model_type}_{started_stamp}")
    tensorboard_dir = ensure_writable_dir(Path(config.log_dir), "TensorBoard log directory")
    context = RunContext(config, spec, index, splits, run_dir, tensorboard_dir / run_dir.name,
                         started_stamp)
    config.save(run_dir / "config.json")
    atomic_write_json(run_dir / "class_names.json", index.class_names)
    write_manifest(run_dir / MANIFEST_NAME, index, splits, config.seed, config.val_split,
                   config.test_split)
    return context, notes


def open_resumed_run(run_dir: Path, workers: int | None) -> tuple[RunContext, dict]:
    """The context of an interrupted run from its own files: same config, split and names."""
    run_dir = Path(run_dir)
    state_path = run_dir / RESUME_DIR / RESUME_STATE
    if not (run_dir / "config.json").is_file():
        raise UserError(f"--resume: '{run_dir}' is not a run directory (no config.json)")
    if not state_path.is_file():
        raise UserError(f"--resume: '{run_dir}' has no resumable state (it stopped before its "
                        "first epoch ended, or is not a run directory)")
    config = TrainConfig.load(run_dir / "config.json").resolved()
    if workers is not None:
        config.workers = workers
    manifest = read_manifest(run_dir / MANIFEST_NAME)
    root = Path(config.data_path)
    if not root.is_dir():
        root = Path(manifest["data_path"])
    samples = [item for split in manifest["splits"].values() for item in split]
    missing = [p for p, _ in samples if not (root / p).is_file()]
    if missing:
        raise UserError(f"--resume: {len(missing)} images of the run's split are missing under "
                        f"'{root}' (first: {missing[0]})")
    index = DatasetIndex(root, manifest["class_names"], samples)
    stamp = next((p.stem.rsplit("_final_", 1)[-1] for p in run_dir.glob("*_final_*")),
                 timestamp())
    context = RunContext(config, get_spec(config.model_type), index, manifest["splits"],
                         run_dir, Path(config.log_dir) / run_dir.name, stamp)
    point = json.loads(state_path.read_text(encoding="utf-8"))
    return context, point


def distributed_world() -> tuple[int, int]:
    """(rank, world size) when started by torchrun, else (0, 1)."""
    import os

    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def run_training(config: TrainConfig, resume_dir: Path | None = None) -> Path | None:
    """Train one run end to end (or continue ``resume_dir``); returns its directory (None on
    the other ranks of a torchrun).

    Under ``torchrun`` every process trains, and rank 0 alone makes the run directory, logs,
    saves and writes the experiments row.

    Raises UserError on bad input, TrainingStopped when the loss became NaN.
    """
    rank, world = distributed_world()
    backend = None
    if world > 1:
        if get_spec(config.model_type).framework != "torch":
            raise UserError("torchrun is for --model_type resnet; the Keras networks use every "
                            "visible GPU by themselves (MirroredStrategy)")
        backend = load_backend("torch")
        backend.init_distributed()
    resume_point, notes, context, error = None, [], None, None
    if rank == 0:
        try:
            if resume_dir is not None:
                context, resume_point = open_resumed_run(resume_dir, config.workers)
            else:
                context, notes = create_run(config.resolved())
        except UserError as exc:
            if world == 1:
                raise
            error = str(exc)  # every rank must hear it, or they would wait forever
    if world > 1:
        context, resume_point, error = backend.broadcast((context, resume_point, error))
        if error:
            raise UserError(error)
    if rank != 0:
        logging.getLogger().setLevel(logging.WARNING)
        state = RunState(context.run_dir / "history.csv", context.config.patience,
                         resume_point=resume_point, main_process=False)
        backend.train(context, state, plan_phases(context.config))
        return None  # rank 0 reports, exports and returns the run directory
    return _train_and_record(context, notes, resume_point, backend)


def _train_and_record(context: RunContext, notes: list[str], resume_point: dict | None,
                      backend=None) -> Path:
    config, spec, run_dir = context.config, context.spec, context.run_dir
    index, splits = context.index, context.splits
    output_dir = run_dir.parent
    state = RunState(run_dir / "history.csv", config.patience, resume_point=resume_point)
    started = time.time()
    status, test_metrics = "failed", {}
    with capture_to_log(run_dir / "training.log"):
        logger.info("run directory: %s%s", run_dir, " (resumed)" if resume_point else "")
        for note in notes:
            logger.warning("%s", note)
        logger.info("%s on %d classes: %d train / %d validation / %d test images, %dx%d, "
                    "batch %d", spec.display_name, len(index.class_names), len(splits["train"]),
                    len(splits["val"]), len(splits["test"]), *config.image_size,
                    config.batch_size)
        try:
            backend = backend or load_backend(spec.framework)
            test_metrics = backend.train(context, state, plan_phases(config))
            status = state.stop_reason or "completed"
        except KeyboardInterrupt:
            status = "interrupted"
            logger.warning("interrupted: the last finished epoch is saved. Continue with: "
                           "python train_professional_models.py --resume %s", run_dir)
            raise
        finally:
            summary = experiment_row(context, state, status, started, test_metrics)
            summary["environment"] = environment_info()
            summary["environment"]["device"] = state.device
            atomic_write_json(run_dir / "summary.json", summary)
            append_experiment(output_dir / "experiments.csv", summary)
    if status == "nan_loss":
        raise TrainingStopped(f"training stopped: the loss became NaN; best model kept in "
                              f"{run_dir}")
    logger.info("done: best %s %s at epoch %s; outputs in %s", MONITOR,
                summary["best_val_accuracy"], summary["best_epoch"], run_dir)
    return run_dir
