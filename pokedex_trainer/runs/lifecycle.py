"""One run's life, the same for every road into it: open (new or resume) -> train -> record.

The command line, the Python API, k-fold, the search and every rank of a torchrun all come
through ``run_training`` (a process alone: ``_train_one_process``; the ranks of a torchrun:
``_train_in_group``, which adds the talk between ranks around the same steps) or, for a run
already opened (a k-fold fold), ``train_new_run``. The run lock and the record of a failure
live here only; the run's files are read and written by its ``RunStore``.
"""

from __future__ import annotations

import logging
import time
import traceback
from pathlib import Path
from typing import Callable

from pokedex_trainer.config import TrainConfig
from pokedex_trainer.runs.checkpoints import CheckpointSaver
from pokedex_trainer.core.context import RunContext
from pokedex_trainer.core.interrupt import INTERRUPT, StopDeadline, stop_grace
from pokedex_trainer.machine.memory_watch import MemoryWatch
from pokedex_trainer.core.loop import MONITOR, RunState, run_phases
from pokedex_trainer.core.phases import ResumePoint, plan_phases
from pokedex_trainer.core.training_backend import TrainingBackend
from pokedex_trainer.errors import RunFailed, TrainingStopped, UserError, reason_line
from pokedex_trainer.runs.distributed import describe_group, describe_node, group_problem
from pokedex_trainer.runs.distributed import world as process_world
from pokedex_trainer.runs.experiment_row import environment_info, experiment_row
from pokedex_trainer.runs.live_log import open_live_log
from pokedex_trainer.runs.lock import RunLock
from pokedex_trainer.runs.opening import (
    create_run,
    feeding_of,
    ProcessGroup,
    load_process_group,
    load_training_backend,
    open_resumed_run,
    run_framework,
)
from pokedex_trainer.runs.run_log import capture_to_log
from pokedex_trainer.runs.history import HistoryWriter
from pokedex_trainer.runs.store import RunStore, store_of

logger = logging.getLogger(__name__)


def run_training(config: TrainConfig, resume_dir: Path | None = None,
                 on_epoch=None) -> Path | None:
    """Train one run end to end (or continue ``resume_dir``); returns its directory (None on
    the other ranks of a torchrun). ``on_epoch``: see ``RunState`` (a search's pruner).

    Under ``torchrun`` every process trains, on one or several machines; rank 0 (the chief)
    alone opens the run, logs, saves and records it (see distributed.py). One process is a
    group of one. One process at a time trains a run directory (``RunLock``); the run is
    recorded whatever happens, except when bad input stops it before its first epoch (then a
    new run directory is removed again).
    """
    stop_grace()  # a bad POKEDEX_STOP_GRACE is refused before a run directory is made
    rank, world = process_world()
    if world == 1:
        return _train_one_process(config, resume_dir, on_epoch)
    # Join first, whatever the network: a rank that stopped here alone would leave the others
    # waiting for it. The chief checks the network (a non-chief node may not see the config
    # of the run to resume) and every rank hears its answer.
    group = load_process_group()
    group.join()
    try:
        return _train_in_group(group, config, resume_dir, rank, on_epoch)
    finally:
        group.leave()


def _train_one_process(config: TrainConfig, resume_dir: Path | None, on_epoch=None) -> Path:
    """The run of a process that trains alone: open it, train it, record it."""
    opened = _open_as_chief(config, resume_dir)
    if opened is None:
        return _already_finished(RunStore(Path(resume_dir)))
    context, resume_point, notes, lock = opened
    try:
        return _train_and_record(context, notes, resume_point, fresh=resume_dir is None,
                                 lock=lock, on_epoch=on_epoch)
    finally:
        lock.release()


def train_new_run(context: RunContext, notes: list[str], on_epoch=None) -> Path:
    """Train a run whose directory ``create_run`` just made (a k-fold fold): locked while it
    trains, recorded whatever happens, removed again when bad input stops it before its
    first epoch."""
    stop_grace()  # a bad POKEDEX_STOP_GRACE is refused before the run trains
    lock = _lock_new_run(context)
    try:
        return _train_and_record(context, notes, None, fresh=True, lock=lock,
                                 on_epoch=on_epoch)
    finally:
        lock.release()


def _lock_new_run(context: RunContext) -> RunLock:
    try:
        return store_of(context).lock()
    except UserError:
        remove_unstarted_run(context)
        raise


def _already_finished(store: RunStore) -> Path:
    print(f"'{store.root}' already finished ({store.finished_status()}): nothing to resume; "
          f"evaluate it with: python evaluate.py --run_dir {store.root}")
    return store.root


def _open_as_chief(config: TrainConfig, resume_dir: Path | None):
    """Rank 0 (or the only process): the run to train, as (context, resume point, notes,
    lock), or None when ``resume_dir`` already finished."""
    if process_world()[1] > 1 and run_framework(config, resume_dir) != "torch":
        raise UserError("torchrun is for PyTorch networks (--framework pytorch); the Keras "
                        "networks train in one "
                        "process (on TensorFlow over every GPU of the machine, see 'Several "
                        "GPUs' in docs/multi-gpu.md)")
    if resume_dir is None:
        context, notes = create_run(config)
        return context, None, notes, _lock_new_run(context)
    store = RunStore(Path(resume_dir))
    if not store.is_run():  # before the lock: no .lock file left in a folder of someone else's
        raise UserError(f"--resume: '{resume_dir}' is not a run directory (no config.json)")
    if store.finished_status():
        return None
    if not store.has_resume_state():  # before the lock, too
        raise UserError(f"--resume: '{resume_dir}' has no resumable state (it stopped before "
                        "its first epoch ended, or is not a run directory)")
    lock = store.lock()
    try:
        if store.finished_status():  # it finished while this process was starting
            lock.release()
            return None
        context, resume_point = open_resumed_run(resume_dir, feeding_of(config))
    except BaseException:
        lock.release()
        raise
    return context, resume_point, [], lock


def _train_in_group(group: ProcessGroup, config: TrainConfig, resume_dir: Path | None,
                    rank: int, on_epoch=None) -> Path | None:
    """A rank of a torchrun: the chief opens the run and every rank hears what it opened (or
    why it could not: one line, the same on every rank), then each trains its share."""
    opened, error = None, None
    if rank == 0:
        try:
            opened = _open_as_chief(config, resume_dir)
            if opened is None:
                _already_finished(RunStore(Path(resume_dir)))
        except UserError as exc:
            error = str(exc)  # every rank must hear it, or they would wait forever
        except Exception as exc:  # a full disk, a folder gone...: the same, in one line
            error = f"rank 0 could not open the run: {describe_failure(exc)}"
    context, resume_point, notes, lock = opened or (None, None, [], None)
    finished = rank == 0 and opened is None and error is None
    # The chief's split travels with the context: every rank trains on that one split.
    context, resume_point, error, finished = group.broadcast(
        (context, resume_point, error, finished))
    if not error and not finished:
        error = group_problem(group.all_gather(describe_node(
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
        return _train_as_worker(context, resume_point, rank)
    try:
        return _train_and_record(context, notes, resume_point, fresh=resume_dir is None,
                                 lock=lock, on_epoch=on_epoch)
    finally:
        lock.release()


def train_with_backend(make_backend: Callable[[RunContext], TrainingBackend],
                       context: RunContext, state: RunState) -> dict:
    """Build the framework's backend and run the core phase loop over it."""
    backend = make_backend(context)
    if not context.config.pretrained:
        logger.info("--weights none: training from scratch, nothing is frozen")
    try:
        state.device = backend.device
        if state.device.lower().startswith("cpu"):  # a GPU reports its own out-of-memory
            from pokedex_trainer.machine.step_memory import check_training_step

            check_training_step(context.config)
        saver = CheckpointSaver(store_of(context), context.timestamp, context.config.save_every,
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


def _train_as_worker(context: RunContext, resume_point: ResumePoint | None, rank: int) -> None:
    """A rank other than 0: trains its share and writes nothing; rank 0 reports, exports
    and returns the run directory."""
    import socket

    logging.getLogger().setLevel(logging.WARNING)
    state = RunState(HistoryWriter(store_of(context).history_path), context.config.patience,
                     resume_point=resume_point, main_process=False)
    try:
        train_with_backend(load_training_backend(context.spec.framework).make, context, state)
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


def _train_and_record(context: RunContext, notes: list[str], resume_point: ResumePoint | None,
                      fresh: bool = False, lock: RunLock | None = None,
                      on_epoch=None) -> Path:
    """Train, then record the outcome (summary.json, experiments.csv) whatever it is.

    ``fresh``: the run directory was made for this run; when bad input stops the run before
    its first epoch, it is removed again (``lock`` released first) instead of recorded.
    """
    store = store_of(context)
    state = RunState(HistoryWriter(store.history_path), context.config.patience,
                     resume_point=resume_point, on_epoch=on_epoch)
    epochs_before, started = state.epochs_run, time.time()
    status, failure, test_metrics, summary = "failed", None, {}, None
    live, live_note = open_live_log(context.run_dir.name)
    # a run stuck inside the framework after Ctrl-C/SIGTERM is recorded and ended from a thread
    deadline = StopDeadline(lambda: _record_interrupted(context, state, started, live))
    memory = MemoryWatch(lambda message: _end_out_of_memory(context, state, started, live,
                                                           deadline, message))
    with capture_to_log(store.log_path, live), deadline, memory:
        if live_note:
            logger.warning("%s", live_note)
        _log_run_header(context, notes, bool(resume_point))
        try:
            make_backend = load_training_backend(context.spec.framework).make
            test_metrics = train_with_backend(make_backend, context, state)
            status = state.stop_reason or "completed"
        except KeyboardInterrupt as exc:
            status, failure = "interrupted", exc
            _log_interrupted(context)
        except UserError as exc:
            failure = exc
        except Exception as exc:  # out of memory, a full disk, a folder gone...
            resumable = store.has_resume_state()
            failure = RunFailed(f"training failed: {describe_failure(exc, resumable)}; what was "
                                f"saved is kept in {context.run_dir}")
            failure.details = traceback.format_exc()
        unstarted = isinstance(failure, UserError) and state.epochs_run == epochs_before
        if not unstarted:
            summary = deadline.record_once(lambda: record_outcome(
                context, state, status, started, test_metrics, failure))
        if failure is None and summary is not None:
            _drop_resume_state_of_finished(context)
    if getattr(failure, "details", None):
        store.append_to_log(failure.details)  # the traceback, for a bug report
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


def _drop_resume_state_of_finished(context: RunContext) -> None:
    """A finished run cannot be resumed: its resume state (the model with its optimizer,
    about 3x the model) goes, unless --keep_resume; best and final models stay."""
    store = store_of(context)
    try:
        if context.config.keep_resume or not store.finished_status():
            return
        freed = store.drop_resume_state()
    except (OSError, UserError) as exc:
        logger.warning("the finished run's resume state was kept: %s", describe_failure(exc))
        return
    if freed:
        logger.info("finished: its resume state (resume/, %.1f MB) was removed, the best and "
                    "final models are kept (--keep_resume keeps it)", freed / 1e6)


def _end_out_of_memory(context: RunContext, state: RunState, started: float, live,
                       deadline: StopDeadline, message: str) -> None:
    """MemoryWatch's thread: the run recorded as failed, one line, exit 1, before the
    kernel's out-of-memory killer ends the process without a word."""
    import os
    import sys

    failure = RunFailed(f"training failed: {message}; what was saved is kept in "
                        f"{context.run_dir}")
    try:
        deadline.record_once(lambda: record_outcome(context, state, "failed", started, {},
                                                    failure))
        _end_live_log(live, "failed", failure)
        print(f"error: {failure}", file=sys.stderr)
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
    finally:
        os._exit(failure.exit_code)


def _log_interrupted(context: RunContext) -> None:
    """The interrupted run's hint: how to continue it."""
    if context.config.search_name:  # a search trial: the search is what continues
        logger.warning("interrupted: trial %s of search '%s' is recorded as failed; "
                       "run the same search command again to continue the search",
                       context.config.search_trial, context.config.search_name)
    elif not store_of(context).has_resume_state():
        logger.warning("interrupted before the first epoch ended: there is nothing to resume; "
                       "run the same command again to start over (%s may be deleted)",
                       context.run_dir)
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
    store = store_of(context)
    for what, write in (("summary.json", lambda: store.write_summary(summary)),
                        ("experiments.csv", lambda: store.append_experiment(summary))):
        try:
            write()
        except Exception as exc:  # a full disk, a file another program holds...
            logger.error("could not write %s: %s", what, describe_failure(exc))
    return summary


def describe_failure(exc: BaseException, resumable: bool = True) -> str:
    """One line for an error that ended a run; ``resumable``: the run has a resume state (a
    full disk then says --resume, else to start again)."""
    import errno

    name = type(exc).__name__
    if isinstance(exc, RunFailed):  # already one line (a data-loading worker died...)
        return str(exc)
    if isinstance(exc, MemoryError) or "OutOfMemory" in name or "ResourceExhausted" in name:
        return ("out of memory: use a smaller --batch_size or --image_size "
                "(or --batch_size auto)")
    then = "then --resume" if resumable else \
        "then run the same command again (no resume state was saved yet)"
    text = str(exc)
    if "unexpected pos" in text or "failed writing file" in text:  # torch.save on a full disk
        return f"a model file could not be written (the disk is probably full): free some " \
               f"space, {then}"
    if isinstance(exc, OSError):
        where = f" ('{exc.filename}')" if exc.filename else ""
        if exc.errno == errno.ENOSPC:
            return f"no space left on the disk{where}: free some space, {then}"
        return f"{exc.strerror or exc}{where}"
    first = reason_line(exc)  # the type's name when the exception says nothing
    return f"{name}: {first}" if first != name else name


def remove_unstarted_run(context: RunContext) -> None:
    """Undo a run that never trained: the files it wrote, then the folders it made if they
    are empty (nothing else is touched: its TensorBoard folder may be a user's folder, or an
    earlier run's of the same name, see runs/footprint.py)."""
    if not store_of(context).remove_new_run():
        logger.warning("left %s in place: it holds files this run did not write",
                       context.run_dir)
    if context.footprint is not None:
        context.footprint.remove()
