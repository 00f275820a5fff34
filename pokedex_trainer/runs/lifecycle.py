"""A training run from the command line to the experiments row, framework-free.

``run_training`` checks the data, makes the split and the run directory, hands the work to the
core phase loop over the backend of the chosen network (Keras or PyTorch) and records the
outcome, whatever it is.
"""

from __future__ import annotations

import importlib
import logging
import time
import traceback
from dataclasses import replace
from pathlib import Path

from pokedex_trainer.config import TrainConfig
from pokedex_trainer.core.checkpoints import STATE_FORMAT, CheckpointSaver
from pokedex_trainer.core.context import RunContext
from pokedex_trainer.core.interrupt import INTERRUPT, StopDeadline, stop_grace
from pokedex_trainer.core.loop import MONITOR, RunState, run_phases
from pokedex_trainer.core.phases import plan_phases
from pokedex_trainer.data.scan import (DatasetIndex, check_class_count, dataset_warnings, drop_samples,
                      find_unreadable_headers, read_manifest, scan_dataset, stratified_split,
                      write_manifest)
from pokedex_trainer.runs.distributed import (
    check_keras_cluster,
    describe_group,
    describe_node,
    group_problem,
)
from pokedex_trainer.runs.distributed import world as process_world
from pokedex_trainer.runs.experiment_row import environment_info, experiment_row
from pokedex_trainer.errors import RunFailed, TrainingStopped, UserError
from pokedex_trainer.runs.layout import EXPERIMENTS, RunLayout
from pokedex_trainer.runs.live_log import open_live_log
from pokedex_trainer.runs.checked_files import (
    check_history,
    read_state,
    read_summary,
    resolved_config,
    run_class_names,
)
from pokedex_trainer.networks import get_spec
from pokedex_trainer.runs.records import (
    RunLock,
    append_experiment,
    atomic_write_json,
    capture_to_log,
    check_experiments_table,
    create_run_dir,
    ensure_writable_dir,
    timestamp,
)
from pokedex_trainer.runs.footprint import RunFootprint, missing_folders

logger = logging.getLogger(__name__)


def load_backend(framework: str):
    """Import the trainer of one framework only when a run needs it."""
    module = {"keras": "pokedex_trainer.backends.keras.trainer",
              "torch": "pokedex_trainer.backends.torch.trainer"}[framework]
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
        index, emptied = drop_samples(index, {relative for relative, _ in bad})
        notes.append(f"{len(bad)} unreadable files skipped (run prepare_dataset.py --check for "
                     "a full report)")
        if emptied:
            notes.append(f"class folders with no readable image, left out: {', '.join(emptied)}")
            check_class_count(index, " with readable images")
    notes.extend(dataset_warnings(index, config.image_size))
    from pokedex_trainer.data.balance import IMBALANCE_WARNING_RATIO, imbalance_ratio

    ratio = imbalance_ratio(index.counts().values())
    if ratio > IMBALANCE_WARNING_RATIO and config.class_weight == config.sampler == "none":
        notes.append(f"classes are imbalanced (largest/smallest = {ratio:.1f}): consider "
                     "--class_weight balanced or --sampler balanced")
    splits = stratified_split(index, config.val_split, config.test_split, config.seed)
    return index, splits, notes


def search_batch_size(config: TrainConfig, num_classes: int):
    """Run the backend's batch-size search for ``config``; returns a BatchSearch."""
    spec = config.spec
    logger.info("looking for the largest batch size that trains (%s, %dx%d%s)...",
                spec.display_name, *config.image_size,
                ", mixed precision" if config.mixed_precision else "")
    return load_backend(spec.framework).search_batch_size(config, spec, num_classes)


def find_batch_size_only(config: TrainConfig) -> int:
    """``--find_batch_size``: print the batch size ``--batch_size auto`` would use."""
    config, _ = select_keras_backend(config.resolved())
    num_classes = len(scan_dataset(config.data_path).class_names)
    result = search_batch_size(config, num_classes)
    print(result.describe())
    return result.chosen


def apply_base_model(config: TrainConfig) -> TrainConfig:
    """Take the network (and, unless given, the input size) of ``--base_model``."""
    from pokedex_trainer.runs.transfer import describe_base_model

    base = describe_base_model(config.base_model)
    if config.model_type not in (None, base.model_type):
        raise UserError(f"--model_type {config.model_type} does not match --base_model "
                        f"'{base.path}', a {get_spec(base.model_type).display_name} model")
    if config.framework not in ("auto", base.framework):
        raise UserError(f"--framework {config.framework} does not match --base_model "
                        f"'{base.path}', a {base.framework} model")
    return replace(config, model_type=base.model_type, framework=base.framework,
                   image_size=config.image_size or base.image_size)


def run_framework(config: TrainConfig, resume_dir: Path | None) -> str:
    """keras or torch: the framework a run (new or resumed) trains with."""
    layout = RunLayout(Path(resume_dir)) if resume_dir is not None else None
    if layout is not None and layout.config.is_file():
        return TrainConfig.load(layout.config).spec.framework
    return config.spec.framework


def select_keras_backend(config: TrainConfig) -> tuple[TrainConfig, list[str]]:
    """For a Keras network: the backend it trains on, chosen once and recorded in the config
    (a resumed run keeps its own), and made the backend of this process."""
    if config.spec.framework != "keras":
        return config, []
    check_keras_cluster()
    from pokedex_trainer.backends.keras.select import activate, choose

    if config.keras_backend == "auto":
        backend, why = choose("auto")
        config = replace(config, keras_backend=backend)
        notes = [f"Keras backend {backend} ({why})"]
    else:
        backend, why = choose(config.keras_backend)
        notes = []
    activate(backend)
    return config, notes


def resolve_for_run(config: TrainConfig, num_classes: int) -> tuple[TrainConfig, list[str]]:
    """The run's final configuration: model defaults, base model path, Keras backend,
    ``--batch_size auto``. Nothing changes it afterwards."""
    config = config.resolved()
    config, notes = select_keras_backend(config)
    if config.base_model:
        config = replace(config, base_model=str(Path(config.base_model).resolve()))
    elif config.weights.lower() not in ("imagenet", "none") and \
            not Path(config.weights).is_file():
        raise UserError(f"--weights: '{config.weights}' is neither 'imagenet', 'none' nor an "
                        "existing weights file")
    if config.batch_size == "auto":
        result = search_batch_size(config, num_classes)
        config = replace(config, batch_size=result.chosen)
        notes.append(f"--batch_size auto chose {result.describe()}")
    return config, notes


def create_run(config: TrainConfig, prepared: tuple | None = None
               ) -> tuple[RunContext, list[str]]:
    """Check the data, make the run directory and write what the run starts from.

    ``prepared`` is (index, splits, notes) made beforehand (one fold of --kfold).
    """
    config = config.resolved()
    index, splits, notes = prepared if prepared else prepare_data(config)
    if config.cache == "ram":  # before any work: a full cache would have the run killed
        from pokedex_trainer.data.cache import check_ram_cache_fits

        check_ram_cache_fits(sum(map(len, splits.values())), config.image_size,
                             config.batch_size)
    config, resolve_notes = resolve_for_run(config, len(index.class_names))
    notes = resolve_notes + list(notes)
    started_stamp = timestamp()
    made = missing_folders(Path(config.log_dir)) + missing_folders(Path(config.output_dir))
    tensorboard_dir = ensure_writable_dir(Path(config.log_dir), "TensorBoard log directory")
    check_experiments_table(Path(config.output_dir) / EXPERIMENTS)
    run_dir = create_run_dir(Path(config.output_dir),
                             config.run_name or f"{config.model_type}_{started_stamp}")
    spec = config.spec
    context = RunContext(config, spec, index, splits, run_dir, tensorboard_dir / run_dir.name,
                         started_stamp)
    context.footprint = RunFootprint.before_writing(context.tensorboard_dir, made)
    layout = context.layout
    config.save(layout.config)
    atomic_write_json(layout.class_names, index.class_names)
    write_manifest(layout.manifest, index, splits, config.seed, config.val_split,
                   config.test_split)
    return context, notes


FEEDING_OPTIONS = ("workers", "cache", "cache_dir")  # how images are fed, not what is trained


def feeding_of(config: TrainConfig) -> dict:
    """The resuming command's feeding options, which replace the run's own (a machine with
    other cores or memory resumes it)."""
    return {name: getattr(config, name) for name in FEEDING_OPTIONS}


def open_resumed_run(run_dir: Path, feeding: dict | None) -> tuple[RunContext, dict]:
    """The context of an interrupted run from its own files: same config, split and names;
    ``feeding`` (see ``feeding_of``) replaces the run's feeding options."""
    layout = RunLayout.read(Path(run_dir))
    if not layout.config.is_file():
        raise UserError(f"--resume: '{run_dir}' is not a run directory (no config.json)")
    if not layout.resume_state.is_file():
        raise UserError(f"--resume: '{run_dir}' has no resumable state (it stopped before its "
                        "first epoch ended, or is not a run directory)")
    config = resolved_config(layout.config)
    if feeding:
        config = replace(config, **feeding)
    config, _ = select_keras_backend(config)  # the run's own backend (auto: chosen again)
    manifest = read_manifest(layout.manifest)
    root = Path(config.data_path)
    if not root.is_dir():
        root = Path(manifest["data_path"])
    samples = [item for split in manifest["splits"].values() for item in split]
    missing = [p for p, _ in samples if not (root / p).is_file()]
    if missing:
        raise UserError(f"--resume: {len(missing)} images of the run's split are missing under "
                        f"'{root}' (first: {missing[0]})")
    run_class_names(layout.root)  # class_names.json must agree with the manifest
    # The state and the history are checked before anything acts on them: a bad epochs_run
    # would truncate history.csv, an empty state would restart the run from scratch.
    point = read_state(layout.resume_state, [p.epochs for p in plan_phases(config)],
                       STATE_FORMAT)
    check_history(layout.history, point["run_state"]["epochs_run"], layout.resume_state)
    index = DatasetIndex(root, manifest["class_names"], samples)
    context = RunContext(config, config.spec, index, manifest["splits"],
                         layout.root, Path(config.log_dir) / layout.root.name,
                         layout.final_stamp() or timestamp())
    return context, point


def train_with_backend(module, context: RunContext, state: RunState) -> dict:
    """Build the framework's backend and run the core phase loop over it."""
    backend = module.Backend(context)
    if not context.config.pretrained:
        logger.info("--weights none: training from scratch, nothing is frozen")
    try:
        state.device = backend.device
        saver = CheckpointSaver(context.layout, context.timestamp, context.config.save_every,
                                enabled=backend.main_process, save_h5=context.config.save_h5)
        # Every rank of a torchrun must stop at the same step, and PyTorch's training loop is
        # plain Python (a KeyboardInterrupt there is safe): both stop at once, as Python does.
        if process_world()[1] > 1 or not backend.graceful_interrupt:
            return run_phases(backend, context, state, plan_phases(context.config), saver)
        with INTERRUPT:
            return run_phases(backend, context, state, plan_phases(context.config), saver)
    finally:
        backend.close()
        context.close_image_cache()


FINISHED = ("completed", "nan_loss", "pruned")


def finished_status(layout: RunLayout) -> str | None:
    """The status of a run that ended (completed, nan_loss, pruned by a search), None when it
    can continue. A summary.json that cannot be read is refused (UserError): resuming a run
    whose end is unknown could train a finished run again."""
    status = (read_summary(layout.summary) or {}).get("status")
    return status if status in FINISHED else None


def run_training(config: TrainConfig, resume_dir: Path | None = None,
                 on_epoch=None) -> Path | None:
    """Train one run end to end (or continue ``resume_dir``); returns its directory (None on
    the other ranks of a torchrun). ``on_epoch``: see ``RunState`` (a search's pruner).

    One process at a time trains a run directory (``RunLock``); the run is recorded whatever
    happens, except when bad input stops it before its first epoch (then the new run
    directory is removed again).
    """
    stop_grace()  # a bad POKEDEX_STOP_GRACE is refused before a run directory is made
    rank, world = process_world()
    if rank != 0 or world > 1:
        return _run_distributed(config, resume_dir, rank, world)
    if resume_dir is not None:
        layout = RunLayout.read(Path(resume_dir))
        if layout.config.is_file() and finished_status(layout):
            return _already_finished(layout)
        if not Path(resume_dir).is_dir():
            raise UserError(f"--resume: '{resume_dir}' is not a run directory")
        lock = RunLock(Path(resume_dir)).acquire()
        try:
            if finished_status(layout):  # it finished while this process was starting
                return _already_finished(layout)
            context, resume_point = open_resumed_run(resume_dir, feeding_of(config))
            return _train_and_record(context, [], resume_point)
        finally:
            lock.release()
    context, notes = create_run(config)
    return train_new_run(context, notes, on_epoch)


def train_new_run(context: RunContext, notes: list[str], on_epoch=None) -> Path:
    """Train a run whose directory ``create_run`` just made (a single run, a k-fold fold):
    locked while it trains, recorded whatever happens, removed again when bad input stops it
    before its first epoch."""
    lock = RunLock(context.run_dir).acquire()
    try:
        return _train_and_record(context, notes, None, fresh=True, lock=lock,
                                 on_epoch=on_epoch)
    finally:
        lock.release()


def _already_finished(layout: RunLayout) -> Path:
    print(f"'{layout.root}' already finished ({finished_status(layout)}): nothing to resume; "
          f"evaluate it with: python evaluate.py --run_dir {layout.root}")
    return layout.root


def _run_distributed(config: TrainConfig, resume_dir: Path | None, rank: int,
                     world: int) -> Path | None:
    """Under ``torchrun`` every process trains, on one or several machines; rank 0 (the
    chief) alone makes the run directory, logs, saves and writes the experiments row (see
    runs/distributed.py)."""
    module = None
    if world > 1:
        # Join first, whatever the network: a rank that stopped here alone would leave the
        # others waiting for it. The chief checks the network (a non-chief node may not see
        # the config of the run to resume) and every rank hears its answer.
        module = load_backend("torch")
        module.init_distributed()
    try:
        return _train_in_group(module, config, resume_dir, rank, world)
    finally:
        if module is not None:
            module.leave_distributed()


def _open_as_chief(config: TrainConfig, resume_dir: Path | None):
    """Rank 0: the run to train, as (context, resume point, notes, lock), or None when
    ``resume_dir`` already finished."""
    if process_world()[1] > 1 and run_framework(config, resume_dir) != "torch":
        raise UserError("torchrun is for PyTorch networks (--framework pytorch); the Keras "
                        "networks train in one "
                        "process (on TensorFlow over every GPU of the machine, see 'Several "
                        "GPUs' in docs/multi-gpu.md)")
    if resume_dir is None:
        context, notes = create_run(config)
        try:
            return context, None, notes, RunLock(context.run_dir).acquire()
        except UserError:
            remove_unstarted_run(context)
            raise
    layout = RunLayout.read(Path(resume_dir))
    if layout.config.is_file() and finished_status(layout):
        return None
    if not Path(resume_dir).is_dir():
        raise UserError(f"--resume: '{resume_dir}' is not a run directory")
    lock = RunLock(Path(resume_dir)).acquire()
    try:
        context, resume_point = open_resumed_run(resume_dir, feeding_of(config))
    except BaseException:
        lock.release()
        raise
    return context, resume_point, [], lock


def _train_in_group(module, config: TrainConfig, resume_dir: Path | None, rank: int,
                    world: int) -> Path | None:
    opened, error = None, None
    if rank == 0:
        try:
            opened = _open_as_chief(config, resume_dir)
            if opened is None:
                _already_finished(RunLayout.read(Path(resume_dir)))
        except UserError as exc:
            if world == 1:
                raise
            error = str(exc)  # every rank must hear it, or they would wait forever
    context, resume_point, notes, lock = opened or (None, None, [], None)
    finished = rank == 0 and opened is None and error is None
    if world > 1:
        # The chief's split travels with the context: every rank trains on that one split.
        context, resume_point, error, finished = module.broadcast(
            (context, resume_point, error, finished))
        if not error and not finished:
            error = group_problem(module.all_gather(describe_node(
                context.index.root, context.splits, resume_point, context.run_dir)))
            if error and rank == 0:
                lock.release()
                if resume_dir is None:
                    remove_unstarted_run(context)
        if error:
            raise UserError(error)
    if finished:
        return Path(resume_dir) if rank == 0 else None
    if rank != 0:
        return _train_as_worker(module, context, resume_point, rank)
    try:
        return _train_and_record(context, notes, resume_point, module,
                                 fresh=resume_dir is None, lock=lock)
    finally:
        lock.release()


def _train_as_worker(module, context: RunContext, resume_point: dict | None,
                     rank: int) -> None:
    """A rank other than 0: trains its share and writes nothing; rank 0 reports, exports
    and returns the run directory."""
    import socket

    logging.getLogger().setLevel(logging.WARNING)
    state = RunState(context.layout.history, context.config.patience,
                     resume_point=resume_point, main_process=False)
    try:
        train_with_backend(module, context, state)
    except (UserError, KeyboardInterrupt):
        raise
    except Exception as exc:  # the chief died, a file it cannot read...
        raise RunFailed(f"rank {rank} on {socket.gethostname()}: training failed: "
                        f"{describe_failure(exc)}") from None
    return None


def _log_run_header(context: RunContext, notes: list[str], resumed: bool) -> None:
    config, splits = context.config, context.splits
    logger.info("run directory: %s%s", context.run_dir, " (resumed)" if resumed else "")
    if process_world()[1] > 1:
        logger.info("%s", describe_group())
    for note in notes:
        logger.warning("%s", note)
    logger.info("%s on %d classes: %d train / %d validation / %d test images, %dx%d, batch %d",
                context.spec.display_name, context.num_classes, len(splits["train"]),
                len(splits["val"]), len(splits["test"]), *config.image_size, config.batch_size)


def _train_and_record(context: RunContext, notes: list[str], resume_point: dict | None,
                      module=None, fresh: bool = False, lock: RunLock | None = None,
                      on_epoch=None) -> Path:
    """Train, then record the outcome (summary.json, experiments.csv) whatever it is.

    ``fresh``: the run directory was made for this run; when bad input stops the run before
    its first epoch, it is removed again (``lock`` released first) instead of recorded.
    """
    layout = context.layout
    state = RunState(layout.history, context.config.patience, resume_point=resume_point,
                     on_epoch=on_epoch)
    epochs_before, started = state.epochs_run, time.time()
    status, failure, test_metrics, summary = "failed", None, {}, None
    live, live_note = open_live_log(context.run_dir.name)
    # a run stuck inside the framework after Ctrl-C/SIGTERM is recorded and ended from a thread
    deadline = StopDeadline(lambda: _record_interrupted(context, state, started, live))
    with capture_to_log(layout.log, live), deadline:
        if live_note:
            logger.warning("%s", live_note)
        _log_run_header(context, notes, bool(resume_point))
        try:
            module = module or load_backend(context.spec.framework)
            test_metrics = train_with_backend(module, context, state)
            status = state.stop_reason or "completed"
        except KeyboardInterrupt as exc:
            status, failure = "interrupted", exc
            _log_interrupted(context)
        except UserError as exc:
            failure = exc
        except Exception as exc:  # out of memory, a full disk, a folder gone...
            failure = RunFailed(f"training failed: {describe_failure(exc)}; what was saved is "
                                f"kept in {context.run_dir}")
            failure.details = traceback.format_exc()
        unstarted = isinstance(failure, UserError) and state.epochs_run == epochs_before
        if not unstarted:
            summary = deadline.record_once(lambda: record_outcome(
                context, state, status, started, test_metrics, failure))
    if getattr(failure, "details", None):
        _append_text(layout.log, failure.details)  # the traceback, for a bug report
    _end_live_log(live, status, failure)
    if unstarted and fresh:
        if lock is not None:
            lock.release()
        remove_unstarted_run(context)
    if failure is not None:
        raise failure
    if status == "nan_loss":
        raise TrainingStopped(f"training stopped: the loss became NaN; best model kept in "
                              f"{context.run_dir}")
    logger.info("done: best %s %s at epoch %s; outputs in %s", MONITOR,
                summary["best_val_accuracy"], summary["best_epoch"], context.run_dir)
    return context.run_dir


def _log_interrupted(context: RunContext) -> None:
    """The interrupted run's hint: how to continue it."""
    if context.config.search_name:  # a search trial: the search is what continues
        logger.warning("interrupted: trial %s of search '%s' is recorded as failed; "
                       "run the same search command again to continue the search",
                       context.config.search_trial, context.config.search_name)
    else:
        logger.warning("interrupted: the last finished epoch is saved. Continue with: "
                       "python train_professional_models.py --resume %s", context.run_dir)


def _record_interrupted(context: RunContext, state: RunState, started: float, live) -> None:
    """The record of a run that did not stop in time (StopDeadline's thread, then exit 130)."""
    _log_interrupted(context)
    record_outcome(context, state, "interrupted", started, {}, KeyboardInterrupt())
    _end_live_log(live, "interrupted", None)


def _end_live_log(live, status: str, failure: BaseException | None) -> None:
    """The run's last live-log line: how it ended (the console gets it from run_main)."""
    if live is None:
        return
    reason = f": {failure}" if failure is not None and str(failure) else ""
    live.write(f"run ended: {status}{reason}")
    live.close()


def record_outcome(context: RunContext, state: RunState, status: str, started: float,
                   test_metrics: dict, failure: BaseException | None) -> dict:
    """summary.json and the experiments row; a write that fails is reported, never raised
    (it must not hide the error that ended the run)."""
    summary = experiment_row(context, state, status, started, test_metrics)
    if failure is not None and not isinstance(failure, KeyboardInterrupt):
        summary["reason"] = str(failure)
    summary["environment"] = environment_info()
    summary["environment"]["device"] = state.device
    layout = context.layout
    for what, write in (("summary.json", lambda: atomic_write_json(layout.summary, summary)),
                        (EXPERIMENTS, lambda: append_experiment(
                            layout.root.parent / EXPERIMENTS, summary))):
        try:
            write()
        except Exception as exc:  # a full disk, a file another program holds...
            logger.error("could not write %s: %s", what, describe_failure(exc))
    return summary


def describe_failure(exc: BaseException) -> str:
    """One line for an error that ended a run."""
    import errno

    name = type(exc).__name__
    if isinstance(exc, RunFailed):  # already one line (a data-loading worker died...)
        return str(exc)
    if isinstance(exc, MemoryError) or "OutOfMemory" in name or "ResourceExhausted" in name:
        return ("out of memory: use a smaller --batch_size or --image_size "
                "(or --batch_size auto)")
    if isinstance(exc, OSError):
        where = f" ('{exc.filename}')" if exc.filename else ""
        if exc.errno == errno.ENOSPC:
            return f"no space left on the disk{where}: free some space, then --resume"
        return f"{exc.strerror or exc}{where}"
    first = str(exc).splitlines()[0] if str(exc) else ""
    return f"{name}: {first}" if first else name


def remove_unstarted_run(context: RunContext) -> None:
    """Undo a run that never trained: the files it wrote, then the folders it made if they
    are empty (nothing else is touched: its TensorBoard folder may be a user's folder, or an
    earlier run's of the same name, see runs/footprint.py)."""
    import shutil

    layout = context.layout
    for path in (layout.config, layout.class_names, layout.manifest, layout.log,
                 layout.history, layout.root / RunLock.NAME):
        try:
            path.unlink(missing_ok=True)
        except OSError:
            pass
    shutil.rmtree(layout.partial_dir, ignore_errors=True)  # inside the run's own new folder
    try:
        layout.root.rmdir()
    except OSError:
        logger.warning("left %s in place: it holds files this run did not write", layout.root)
    if context.footprint is not None:
        context.footprint.remove()


def _append_text(path: Path, text: str) -> None:
    try:
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(text)
    except OSError:
        pass
