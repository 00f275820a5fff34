"""``--search_trials N``: a hyperparameter search whose trials are normal runs.

Each trial is a run like any other (its own run directory, TensorBoard run and experiments
row), trained by the same core loop; its validation accuracy after every epoch goes to Optuna's
median pruner, which stops a trial doing worse than the earlier ones at the same epoch. The
study lives in a database (SQLite by default, or any storage Optuna has), so an interrupted
search continues where it stopped and several processes or machines run trials of one study.
"""

from __future__ import annotations

import glob
import logging
import math
import os
import socket
import sys
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

from pokedex_trainer.config import TrainActions, TrainConfig
from pokedex_trainer.errors import RunFailed, TrainingStopped, UserError
from pokedex_trainer.runs.store import RunStore
from pokedex_trainer.search.space import Param, check_values, compose_space, read_space_file
from pokedex_trainer.search.storage import (
    SEARCH_DIR,
    best_trial,
    open_storage,
    open_study,
    search_name,
    short_value,
)

logger = logging.getLogger(__name__)

MAX_FAILED_IN_A_ROW = 3


class TrialFailed(Exception):
    """A trial's run ended without a score (bad values, out of memory, NaN loss)."""


@dataclass
class Search:
    """One process's part of a study: what it trains and where the study lives."""

    name: str
    trials: int
    config: TrainConfig
    space: dict[str, Param]
    command: list[str]  # the fixed part of every trial's command line
    storage: object
    report_dir: Path
    options: dict  # destination -> its option in the trainer's parser: writes command lines
    own_trials: list[int] = field(default_factory=list)


def search_command(config: TrainConfig, actions: TrainActions, resume, options: dict) -> Path:
    """``train_professional_models.py --search_trials N``: run trials, then report; returns
    the report folder. ``options``: the trainer's options by destination
    (``cli.parsers.train_option_actions``), which write each trial's command line."""
    from pokedex_trainer.search.report import report_search

    search = prepare_search(config, actions, resume, actions.explicit, options)
    study = open_study(search.name, search.storage, search.space, search.config)
    run_trials(search, study)
    report_search(study, search.report_dir, search.storage)
    return search.report_dir


def _refuse_combinations(actions: TrainActions, resume, explicit: dict) -> None:
    if actions.search_trials is None:
        raise UserError("--search_name, --search_storage and --search_space go with "
                        "--search_trials N")
    if actions.search_trials < 1:
        raise UserError("--search_trials must be at least 1")
    others = [flag for flag, given in (("--resume", resume), ("--kfold", actions.kfold),
                                       ("--export", actions.export),
                                       ("--find_batch_size", actions.find_batch_size),
                                       ("--run_name", "run_name" in explicit)) if given]
    if others:
        raise UserError(f"--search_trials does not combine with {', '.join(others)}: each "
                        "trial is a run named <search_name>_trialNNN; resume, export or "
                        "evaluate one with its run directory")
    from pokedex_trainer.runs.distributed import world

    if world()[1] > 1:
        raise UserError("a search does not run under torchrun: start it in several plain "
                        "processes sharing one --search_storage instead")


def prepare_search(config: TrainConfig, actions: TrainActions, resume, explicit: dict,
                   options: dict) -> Search:
    """Check everything a trial would need before the first trial starts."""
    from pokedex_trainer.data.scan import scan_dataset
    from pokedex_trainer.user_io.atomic import ensure_writable_dir

    _refuse_combinations(actions, resume, explicit)
    what = f"--search_space '{actions.search_space}'"
    file_values = read_space_file(actions.search_space) if actions.search_space else {}
    resolved = config.resolved()
    space, fixed = compose_space(resolved, file_values, explicit, what)
    try:
        config = replace(config, **fixed)
        config.resolved()
    except UserError as exc:
        raise UserError(f"{what}: a fixed value is not usable: {exc}") from None
    check_values(config, space, what)
    scan_dataset(config.data_path)  # a wrong folder fails here, not in every trial
    name = search_name(actions.search_name, resolved.model_type, config.data_path)
    folder = Path(config.output_dir) / SEARCH_DIR
    storage = open_storage(actions.search_storage, folder, name)
    command = command_parts({**explicit, **fixed}, options)
    return Search(name, actions.search_trials, config, space, command, storage,
                  ensure_writable_dir(folder / name, "search report folder"), options)


def run_trials(search: Search, study) -> None:
    """Run trials until the study has ``search.trials`` finished (completed or pruned) ones,
    counting those of every process."""
    from optuna.trial import TrialState

    failed_in_a_row = 0
    while True:
        fail_dead_trials(study)
        finished = len(study.get_trials(deepcopy=False,
                                        states=(TrialState.COMPLETE, TrialState.PRUNED)))
        running = len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
        if finished >= search.trials:
            logger.info("search '%s': %d of %d trials finished", search.name, finished,
                        search.trials)
            return
        if finished + running >= search.trials:
            logger.info("search '%s': %d trials finished, the %d running in other processes "
                        "complete it", search.name, finished, running)
            return
        state = run_one_trial(search, study)
        failed_in_a_row = failed_in_a_row + 1 if state == TrialState.FAIL else 0
        if failed_in_a_row >= MAX_FAILED_IN_A_ROW:
            raise RunFailed(f"search '{search.name}': {failed_in_a_row} trials in a row "
                            "failed (see their reasons above); the search stops")


def run_one_trial(search: Search, study):
    """One trial through Optuna (heartbeat, pruning, failure); returns its final state."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        study.optimize(lambda trial: objective(search, trial), n_trials=1,
                       catch=(TrialFailed,), gc_after_trial=True)
    number = search.own_trials[-1]
    trial = next(t for t in study.get_trials(deepcopy=False) if t.number == number)
    best = best_trial(study)
    if trial.state.name == "COMPLETE":
        logger.info("trial %d: val_accuracy %.4f (best so far: trial %d, %.4f)", number,
                    trial.value, best.number, best.value)
    elif trial.state.name == "PRUNED":
        logger.info("trial %d pruned after %d epochs", number, len(trial.intermediate_values))
    else:
        logger.warning("trial %d failed: %s", number, trial.user_attrs.get("reason", "?"))
    return trial.state


def objective(search: Search, trial) -> float:
    """Train one trial's run; its score is the run's best validation accuracy."""
    import optuna

    from pokedex_trainer.runs.lifecycle import run_training

    search.own_trials.append(trial.number)
    _mark_owner(trial)
    # six significant digits: the run trains with exactly the values its command line shows
    params = {name: float(f"{value:.6g}") if isinstance(value, float) else value
              for name, value in ((n, p.suggest(trial)) for n, p in search.space.items())}
    trial.set_user_attr("command", format_command(search.command
                                                  + command_parts(params, search.options)))
    config = replace(search.config, **params, run_name=f"{search.name}_trial{trial.number:03d}",
                     search_name=search.name, search_trial=trial.number)
    logger.info("trial %d of search '%s': %s", trial.number, search.name,
                ", ".join(f"{k}={short_value(v)}" for k, v in params.items())
                or "no searched values")
    try:
        run_dir = run_training(config, on_epoch=lambda step, logs: report_epoch(trial, step,
                                                                                logs))
    except (UserError, RunFailed, TrainingStopped) as exc:
        _note_failure(trial, config, str(exc))
        raise TrialFailed(str(exc)) from None
    except KeyboardInterrupt:
        _note_failure(trial, config, "interrupted (Ctrl-C)")
        raise
    finally:
        _free_framework_memory()
    trial.set_user_attr("run_dir", str(run_dir))
    summary = RunStore(run_dir).summary() or {}
    if summary.get("status") == "pruned":
        raise optuna.TrialPruned()
    value = summary.get("best_val_accuracy")
    if value in (None, ""):
        trial.set_user_attr("reason", "no epoch gave a validation accuracy")
        raise TrialFailed("no validation accuracy")
    return float(value)


def _note_failure(trial, config: TrainConfig, reason: str) -> None:
    """The reason, and the run directory a failed trial left (it can be resumed by hand)."""
    trial.set_user_attr("reason", reason)
    output = Path(config.output_dir)
    for candidate in sorted(output.glob(f"{glob.escape(config.run_name)}*")):
        saved = RunStore(candidate).config_values()
        if saved.get("search_name") == config.search_name and \
                saved.get("search_trial") == config.search_trial:
            trial.set_user_attr("run_dir", str(candidate))
            return


def epoch_score(trial, logs: dict) -> float | None:
    """The figure an epoch reports to the pruner: its validation accuracy."""
    return logs.get("val_accuracy")


def report_epoch(trial, step: int, logs: dict) -> bool:
    """Report one epoch (``step``: epochs run so far); True when the pruner stops the trial."""
    score = epoch_score(trial, logs)
    if score is None or not math.isfinite(score):
        return False
    trial.report(float(score), step)
    return trial.should_prune()


def _mark_owner(trial) -> None:
    """Who runs the trial, so a later process can tell it was left by one that died."""
    import psutil

    trial.set_user_attr("host", socket.gethostname())
    trial.set_user_attr("pid", os.getpid())
    trial.set_user_attr("pid_started", psutil.Process().create_time())


def fail_dead_trials(study) -> None:
    """Mark failed the trials still 'running' whose process on this machine has ended."""
    import psutil
    from optuna.trial import TrialState

    with warnings.catch_warnings():  # a database storage: trials whose heartbeat stopped
        warnings.simplefilter("ignore")
        try:
            import optuna

            optuna.storages.fail_stale_trials(study)
        except Exception as exc:  # a storage without heartbeats, a busy database
            logger.debug("stale trials not checked: %s", exc)
    host = socket.gethostname()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        attrs = trial.user_attrs
        if attrs.get("host") != host or "pid" not in attrs:
            continue  # another machine's: its heartbeat tells (RDB storages)
        try:
            alive = abs(psutil.Process(attrs["pid"]).create_time()
                        - attrs.get("pid_started", 0)) < 1
        except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
            alive = False
        if alive:
            continue
        try:
            study._storage.set_trial_user_attr(trial._trial_id, "reason",
                                               "its process ended before it finished")
            study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        except Exception:  # another process marked it first
            continue
        logger.warning("trial %d was left running by a process that ended: marked failed",
                       trial.number)


def _free_framework_memory() -> None:
    """Between trials: drop the last trial's model from the framework's memory."""
    import gc

    keras = sys.modules.get("keras")
    if keras is not None:
        keras.backend.clear_session()
    gc.collect()


def command_parts(values: dict, options: dict) -> list[str]:
    """Command-line tokens that set ``values`` (destination -> value), as the parser reads
    them; ``options``: destination -> its argparse action (``train_option_actions``), the
    destinations it leaves out are left out here too."""
    parts = []
    for dest, value in values.items():
        action = options.get(dest)
        if action is None:
            continue
        flag = action.option_strings[0]
        if action.nargs == 0:  # store_true / store_false / store_const
            if value == action.const and value != action.default:
                parts.append(flag)
            continue
        parts.append(flag)
        parts.extend(_token(v) for v in (value if isinstance(value, (list, tuple)) else [value]))
    return parts


def _token(value) -> str:
    return repr(value) if isinstance(value, float) else str(value)


def format_command(parts: list[str]) -> str:
    """The command line, quoted so that bash and PowerShell read it alike."""
    from pokedex_trainer.user_io.shell import quote_token

    return " ".join(["python", "train_professional_models.py", *map(quote_token, parts)])
