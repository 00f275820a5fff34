"""``--search_trials N``: a hyperparameter search whose trials are normal runs.

Each trial is a run like any other (its own run directory, TensorBoard run and experiments
row), trained by the same core loop; its validation accuracy after every epoch goes to Optuna's
median pruner, which stops a trial doing worse than the earlier ones at the same epoch. The
study lives in a database (SQLite by default, or any storage Optuna has), so an interrupted
search continues where it stopped and several processes or machines run trials of one study.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import sys
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

from pokedex_trainer.config import TrainConfig
from pokedex_trainer.errors import RunFailed, TrainingStopped, UserError
from pokedex_trainer.runs.layout import check_single_component

logger = logging.getLogger(__name__)

PRUNER_STARTUP_TRIALS = 2  # the pruner compares a trial once this many trials have completed
PRUNER_WARMUP_EPOCHS = 1  # and never stops one in its first epoch
SAMPLER_STARTUP_TRIALS = 5  # TPE draws at random until this many trials have finished
MAX_FAILED_IN_A_ROW = 3
SEARCH_DIR = "search"  # <output_dir>/search/<name>.db and the report folder <name>/

# Options a search never sets: where things are, what is trained, and how the data is split
# (every trial must be scored on the same validation images).
NOT_SEARCHABLE = frozenset({
    "data_path", "model_type", "output_dir", "log_dir", "run_name", "workers", "base_model",
    "weights", "keras_backend", "framework", "memory_limit_mb", "image_size", "search_name", "search_trial",
    "deterministic", "seed", "val_split", "test_split"})
SPEC_KEYS = frozenset({"low", "high", "log", "step", "choices"})


class TrialFailed(Exception):
    """A trial's run ended without a score (bad values, out of memory, NaN loss)."""


@dataclass(frozen=True)
class Param:
    """One searched hyperparameter: a range (``low``..``high``, ``log``, ``step``) or
    ``choices``. ``integer`` ranges draw whole numbers."""

    name: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple | None = None
    integer: bool = False

    def suggest(self, trial):
        if self.choices is not None:
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.integer:
            return trial.suggest_int(self.name, int(self.low), int(self.high),
                                     step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.name, float(self.low), float(self.high),
                                   step=self.step, log=self.log)


def default_space(config: TrainConfig) -> dict[str, Param]:
    """What a search varies unless told otherwise; ``config`` is resolved."""
    space = {
        "learning_rate": Param("learning_rate", 1e-4, 1e-2, log=True),
        "dropout": Param("dropout", 0.0, 0.5, step=0.05),
        "augment": Param("augment", choices=("none", "light", "full")),
        "label_smoothing": Param("label_smoothing", 0.0, 0.2, step=0.05),
        "optimizer": Param("optimizer", choices=("adam", "adamw")),
        "lr_schedule": Param("lr_schedule", choices=("plateau", "cosine")),
    }
    if isinstance(config.batch_size, int):  # the model's batch or below: what fits in memory
        space["batch_size"] = Param("batch_size", choices=tuple(sorted(
            {max(1, config.batch_size // 2), config.batch_size})))
    if config.fine_tune_epochs > 0:
        space["fine_tune_learning_rate"] = Param("fine_tune_learning_rate", 1e-6, 1e-3,
                                                 log=True)
        if config.pretrained:  # from scratch nothing is frozen: the layer count means nothing
            space["fine_tune_layers"] = Param("fine_tune_layers", 10, 100, step=10,
                                              integer=True)
    return space


def read_space_file(path: str) -> dict:
    """The mapping of ``--search_space FILE`` (YAML or JSON; read as data, never run)."""
    file = Path(path)
    what = f"--search_space '{path}'"
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{what}: cannot read it ({getattr(exc, 'strerror', None) or exc})") \
            from None
    try:
        if file.suffix.lower() == ".json":
            values = json.loads(text)
        else:
            import yaml

            values = yaml.safe_load(text)
    except Exception as exc:  # a YAML or JSON syntax error
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"{what} is not valid YAML or JSON: {first}") from None
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise UserError(f"{what}: expected a mapping of option names, such as "
                        "'learning_rate: {low: 0.0001, high: 0.01, log: true}'")
    return values


def _field_kind(name: str) -> str:
    """int, float, bool or str: the type of a TrainConfig field."""
    annotation = str(TrainConfig.__dataclass_fields__[name].type)
    return next((kind for kind in ("bool", "int", "float", "str")
                 if annotation.startswith(kind)), "str")


def typed_value(name: str, value, what: str):
    """``value`` as the type of option ``name``; raises UserError for a value of another type.

    YAML 1.1 reads ``1e-4`` (no dot) as text: such text is taken as the number it spells.
    """
    kind = _field_kind(name)
    if kind in ("int", "float") and isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    if kind == "float" and isinstance(value, (int, float)) and not isinstance(value, bool):
        if math.isfinite(value):
            return float(value)
    elif kind == "int" and isinstance(value, (int, float)) and not isinstance(value, bool):
        if math.isfinite(value) and value == int(value):
            return int(value)
    elif kind == "bool" and isinstance(value, bool):
        return value
    elif kind == "str" and isinstance(value, str):
        return value
    words = {"float": "a number", "int": "a whole number", "bool": "true or false",
             "str": "a word"}
    raise UserError(f"{what}: {name} takes {words[kind]}, not {value!r}")


def parse_param(name: str, spec: dict, what: str) -> Param:
    """A searched option of the space file; raises UserError naming what is wrong."""
    unknown = set(spec) - SPEC_KEYS
    if unknown:
        raise UserError(f"{what}: {name}: unknown keys {sorted(unknown)}; use low, high, log, "
                        "step or choices")
    kind = _field_kind(name)
    if "choices" in spec:
        choices = spec["choices"]
        if not isinstance(choices, list) or not choices:
            raise UserError(f"{what}: {name}: choices must be a non-empty list of values")
        return Param(name, choices=tuple(dict.fromkeys(typed_value(name, c, what)
                                                       for c in choices)))
    if kind in ("bool", "str"):
        raise UserError(f"{what}: {name} takes choices (a list), not a range")
    if "low" not in spec or "high" not in spec:
        raise UserError(f"{what}: {name} needs low and high (or choices)")
    low, high = (typed_value(name, spec[key], what) for key in ("low", "high"))
    step = None if spec.get("step") is None else typed_value(name, spec["step"], what)
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise UserError(f"{what}: {name}: log takes true or false, not {log!r}")
    if not low < high or (step is not None and step <= 0) or (log and low <= 0):
        raise UserError(f"{what}: {name}: need low < high, a positive step, and low > 0 "
                        "with log")
    if log and step is not None:
        raise UserError(f"{what}: {name}: log and step do not go together")
    if log and kind == "int" and low < 1:
        raise UserError(f"{what}: {name}: a log-scale whole-number range starts at 1 or more")
    return Param(name, low, high, log, step, integer=kind == "int")


def check_values(config: TrainConfig, space: dict[str, "Param"], what: str) -> None:
    """Every value a trial may take must make a valid run: both ends of each range and every
    choice, checked before the first trial."""
    for param in space.values():
        values = param.choices if param.choices is not None else (param.low, param.high)
        for value in values:
            try:
                replace(config, **{param.name: value}).resolved()
            except UserError as exc:
                raise UserError(f"{what}: {param.name} = {value!r} does not make a valid run: "
                                f"{exc}") from None


def compose_space(config: TrainConfig, file_values: dict, explicit: dict, what: str
                  ) -> tuple[dict[str, Param], dict]:
    """The searched options and the values the space file fixes.

    The file narrows or extends the default space: a mapping searches that option, ``null``
    leaves it at its default, a plain value fixes it. Options given on the command line stay
    fixed whatever the file says.
    """
    space, fixed = default_space(config), {}
    allowed = sorted(set(TrainConfig.__dataclass_fields__) - NOT_SEARCHABLE)
    for name, spec in file_values.items():
        if name not in allowed:
            raise UserError(f"{what}: '{name}' cannot be searched; choose from "
                            + ", ".join(allowed))
        if spec is None:
            space.pop(name, None)
        elif isinstance(spec, dict):
            space[name] = parse_param(name, spec, what)
        else:
            space.pop(name, None)
            fixed[name] = typed_value(name, spec, what)
    for name in explicit:
        if name in space or name in fixed:
            space.pop(name, None)
            fixed.pop(name, None)
            if name in file_values:
                logger.info("--%s is given on the command line: it stays fixed", name)
    return space, fixed


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
    own_trials: list[int] = field(default_factory=list)


def search_command(config: TrainConfig, actions: dict, resume) -> Path:
    """``train_professional_models.py --search_trials N``: run trials, then report; returns
    the report folder."""
    from pokedex_trainer.search.report import report_search

    search = prepare_search(config, actions, resume, actions.get("explicit", {}))
    study = open_study(search)
    run_trials(search, study)
    report_search(study, search.report_dir, search.storage)
    return search.report_dir


def _refuse_combinations(actions: dict, resume, explicit: dict) -> None:
    if actions["search_trials"] is None:
        raise UserError("--search_name, --search_storage and --search_space go with "
                        "--search_trials N")
    if actions["search_trials"] < 1:
        raise UserError("--search_trials must be at least 1")
    others = [flag for flag, given in (("--resume", resume), ("--kfold", actions["kfold"]),
                                       ("--export", actions["export"]),
                                       ("--find_batch_size", actions["find_batch_size"]),
                                       ("--run_name", "run_name" in explicit)) if given]
    if others:
        raise UserError(f"--search_trials does not combine with {', '.join(others)}: each "
                        "trial is a run named <search_name>_trialNNN; resume, export or "
                        "evaluate one with its run directory")
    if int(os.environ.get("WORLD_SIZE", 1)) > 1:
        raise UserError("a search does not run under torchrun: start it in several plain "
                        "processes sharing one --search_storage instead")


def prepare_search(config: TrainConfig, actions: dict, resume, explicit: dict) -> Search:
    """Check everything a trial would need before the first trial starts."""
    from pokedex_trainer.data.scan import scan_dataset
    from pokedex_trainer.runs.records import ensure_writable_dir

    _refuse_combinations(actions, resume, explicit)
    what = f"--search_space '{actions['search_space']}'"
    file_values = read_space_file(actions["search_space"]) if actions["search_space"] else {}
    resolved = config.resolved()
    space, fixed = compose_space(resolved, file_values, explicit, what)
    try:
        config = replace(config, **fixed)
        config.resolved()
    except UserError as exc:
        raise UserError(f"{what}: a fixed value is not usable: {exc}") from None
    check_values(config, space, what)
    scan_dataset(config.data_path)  # a wrong folder fails here, not in every trial
    name = search_name(actions["search_name"], resolved.model_type, config.data_path)
    folder = Path(config.output_dir) / SEARCH_DIR
    storage = open_storage(actions["search_storage"], folder, name)
    command = command_parts({**explicit, **fixed})
    return Search(name, actions["search_trials"], config, space, command, storage,
                  ensure_writable_dir(folder / name, "search report folder"))


def search_name(given: str | None, model_type: str, data_path: str) -> str:
    """``--search_name``, or ``<model_type>_<data folder>`` with any character a file name
    or a database URL could misread replaced by ``_``."""
    import re

    if given is None:
        folder = Path(data_path).resolve().name
        return re.sub(r"[^\w.-]", "_", f"{model_type}_{folder}").strip(".") or model_type
    check_single_component(given, "--search_name")
    if re.search(r"[^\w.-]", given):
        raise UserError(f"--search_name '{given}' is not usable: use letters, digits, '_', "
                        "'-' and '.' only")
    return given


def open_storage(url: str | None, folder: Path, name: str, create: bool = True):
    """The Optuna storage of ``--search_storage`` (default: SQLite in ``folder``).

    ``create=False`` (a report) only opens a study database that exists: it never creates
    one nor adds Optuna's tables to a file of something else.
    """
    from pokedex_trainer.runs.records import ensure_writable_dir

    if url is None:
        if create:
            ensure_writable_dir(folder, "search folder")
        url = "sqlite:///" + (folder / f"{name}.db").resolve().as_posix()
    elif "://" not in url:
        if not url.lower().endswith((".log", ".journal", ".jsonl")):
            raise UserError(f"--search_storage '{url}': give a database URL (sqlite:///file.db,"
                            " postgresql://user:password@host/db, mysql+pymysql://...) or an "
                            "Optuna journal file ending in .log")
        if not create and not Path(url).is_file():
            raise UserError(f"--search_storage: no search database '{url}'")
        return journal_storage(Path(url))
    if url.startswith("sqlite:"):
        path = url.split(":///", 1)[1] if ":///" in url else ""
        if path in ("", ":memory:"):
            raise UserError("--search_storage: an in-memory database keeps nothing; give a "
                            "file, such as sqlite:///search.db")
        if not create:
            check_search_database(Path(path))
    return rdb_storage(url, create=create)


def check_search_database(path: Path) -> None:
    """A file a report may open: an SQLite database that already holds Optuna's tables."""
    import sqlite3

    if not path.is_file():
        raise UserError(f"--search: no search database '{path}'")
    try:
        connection = sqlite3.connect(f"file:{path.resolve().as_posix()}?mode=ro", uri=True)
        try:
            tables = {row[0] for row in connection.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'")}
        finally:
            connection.close()
    except sqlite3.Error as exc:
        raise UserError(f"--search: '{path}' is not an SQLite database ({exc})") from None
    if not {"studies", "trials"} <= tables:
        raise UserError(f"--search: '{path}' is not a search database (no Optuna study in it)")


def journal_storage(path: Path):
    """Optuna's journal file: one append-only file, shared through a lock file beside it."""
    from optuna.storages.journal import (JournalFileBackend, JournalFileOpenLock,
                                         JournalStorage)

    if not path.parent.is_dir():
        raise UserError(f"--search_storage: the folder of '{path}' does not exist")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            lock = JournalFileOpenLock(str(path)) if os.name == "nt" else None
            return JournalStorage(JournalFileBackend(str(path), lock_obj=lock))
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:  # not a journal
        raise UserError(f"--search_storage: '{path}' is not an Optuna journal file "
                        f"({type(exc).__name__})") from None


DRIVERS = {"postgresql": "psycopg2-binary", "mysql": "pymysql (and a mysql+pymysql:// URL)"}


def rdb_storage(url: str, attempts: int = 6, create: bool = True):
    """A database storage (SQLite, PostgreSQL, MySQL) with heartbeats, so a trial whose
    process died on another machine is marked failed by the next process."""
    import optuna

    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    for attempt in range(attempts):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs,
                                                  heartbeat_interval=60, grace_period=600,
                                                  skip_table_creation=not create)
        except ImportError as exc:
            dialect = url.split(":", 1)[0].split("+", 1)[0]
            package = DRIVERS.get(dialect, f"the Python driver of {dialect}")
            raise UserError(f"--search_storage: the database driver is not installed "
                            f"({str(exc).splitlines()[0]}): python -m pip install {package}") \
                from None
        except Exception as exc:  # a server that does not answer, a locked or foreign file
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            racing = any(sign in first for sign in ("already exists", "UNIQUE constraint",
                                                    "locked", "IntegrityError"))
            if attempt + 1 == attempts or not racing:
                raise UserError(f"--search_storage '{_hide_password(url)}': cannot open the "
                                f"study database: {first}") from None
            time.sleep(0.5 + attempt)  # another process is creating the same tables


def _hide_password(url: str) -> str:
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("@")[-1]


def open_study(search: Search):
    """Create the study, or load it to continue; refuse one started on other data."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # trials are reported here instead
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        study = optuna.create_study(
            study_name=search.name, storage=search.storage, direction="maximize",
            load_if_exists=True,
            sampler=optuna.samplers.TPESampler(n_startup_trials=SAMPLER_STARTUP_TRIALS),
            # steps are epoch numbers from 1; Optuna prunes from step n_warmup_steps on
            pruner=optuna.pruners.MedianPruner(n_startup_trials=PRUNER_STARTUP_TRIALS,
                                               n_warmup_steps=PRUNER_WARMUP_EPOCHS + 1))
    check_space_matches(study, search.space)
    signature = study_signature(search.config)
    saved = study.user_attrs.get("signature")
    if saved is None:
        study.set_user_attr("signature", signature)
    elif saved != signature:
        raise UserError(f"search '{search.name}' was started for {_describe(saved)}; this "
                        f"command trains {_describe(signature)}: give another --search_name")
    return study


def check_space_matches(study, space: dict[str, Param]) -> None:
    """Optuna refuses to draw an option with another range or choices than the study's earlier
    trials did: say so before a trial starts."""
    from optuna.distributions import check_distribution_compatibility

    earlier = {}
    for trial in study.get_trials(deepcopy=False):
        earlier.update(trial.distributions)
    for name, param in space.items():
        if name not in earlier:
            continue
        try:
            check_distribution_compatibility(earlier[name], _distribution(param))
        except ValueError:
            raise UserError(f"search '{study.study_name}' drew {name} from {earlier[name]}; "
                            f"this command draws it differently ({_distribution(param)}): keep "
                            "the study's space or give another --search_name") from None


def _distribution(param: Param):
    from optuna.distributions import (CategoricalDistribution, FloatDistribution,
                                      IntDistribution)

    if param.choices is not None:
        return CategoricalDistribution(list(param.choices))
    if param.integer:
        return IntDistribution(int(param.low), int(param.high), log=param.log,
                               step=int(param.step or 1))
    return FloatDistribution(float(param.low), float(param.high), log=param.log,
                             step=param.step)


def study_signature(config: TrainConfig) -> dict:
    """What every trial of a study must share to be compared (paths may differ per machine)."""
    from pokedex_trainer.data.scan import scan_dataset

    from pokedex_trainer.networks import choose_framework

    resolved = config.resolved()
    signature = {"model_type": resolved.model_type, "image_size": list(resolved.image_size),
                 "class_names": scan_dataset(config.data_path).class_names,
                 "split": [resolved.seed, resolved.val_split, resolved.test_split],
                 "epochs": [resolved.epochs, resolved.fine_tune_epochs]}
    # only off the guide's pairing, so the studies made before --framework still match
    if resolved.framework != choose_framework(resolved.model_type):
        signature["framework"] = resolved.framework
    return signature


def _describe(signature: dict) -> str:
    names = signature.get("class_names", [])
    seed, val_split, test_split = signature.get("split", ["?"] * 3)
    epochs, fine_tune_epochs = signature.get("epochs", ["?"] * 2)
    framework = f" --framework {signature['framework']}" if "framework" in signature else ""
    return (f"--model_type {signature.get('model_type')}{framework} at "
            f"{'x'.join(map(str, signature.get('image_size', [])))} on {len(names)} classes "
            f"({', '.join(names[:4])}{', ...' if len(names) > 4 else ''}), split --seed "
            f"{seed} --val_split {val_split} --test_split {test_split}, --epochs {epochs} "
            f"--fine_tune_epochs {fine_tune_epochs}")


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


def best_trial(study):
    """The best completed trial, None before the first completes."""
    try:
        return study.best_trial
    except ValueError:  # no completed trial yet
        return None


def objective(search: Search, trial) -> float:
    """Train one trial's run; its score is the run's best validation accuracy."""
    import optuna

    from pokedex_trainer.runs.lifecycle import run_training

    search.own_trials.append(trial.number)
    _mark_owner(trial)
    # six significant digits: the run trains with exactly the values its command line shows
    params = {name: float(f"{value:.6g}") if isinstance(value, float) else value
              for name, value in ((n, p.suggest(trial)) for n, p in search.space.items())}
    trial.set_user_attr("command", format_command(search.command + command_parts(params)))
    config = replace(search.config, **params, run_name=f"{search.name}_trial{trial.number:03d}",
                     search_name=search.name, search_trial=trial.number)
    logger.info("trial %d of search '%s': %s", trial.number, search.name,
                ", ".join(f"{k}={_short(v)}" for k, v in params.items()) or "no searched values")
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
    from pokedex_trainer.runs.checked_files import read_summary

    summary = read_summary(run_dir / "summary.json") or {}
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
    for candidate in sorted(output.glob(f"{config.run_name}*")):
        try:
            saved = json.loads((candidate / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
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


def _short(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def command_parts(values: dict) -> list[str]:
    """Command-line tokens that set ``values`` (destination -> value), as the parser reads
    them."""
    from pokedex_trainer.cli.parsers import SEARCH_ACTIONS, build_train_parser

    actions = {}
    for action in build_train_parser()._actions:  # the first option of a destination wins
        if action.option_strings:
            actions.setdefault(action.dest, action)
    parts = []
    for dest, value in values.items():
        action = actions.get(dest)
        if action is None or dest in SEARCH_ACTIONS or dest == "help":
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


def trial_rows(study, exact: bool = False) -> list[dict]:
    """One row per trial: number, state, score, epochs, values, run directory, reason
    (values shortened for the screen unless ``exact``)."""
    names = sorted({name for t in study.get_trials(deepcopy=False) for name in t.params})
    rows = []
    for trial in study.get_trials(deepcopy=False):
        row = {"trial": trial.number, "state": trial.state.name.lower(),
               "val_accuracy": "" if trial.value is None else f"{trial.value:.4f}",
               "epochs": len(trial.intermediate_values)}
        shown = repr if exact else _short
        row.update({name: shown(trial.params[name]) if name in trial.params else ""
                    for name in names})
        row["run_dir"] = trial.user_attrs.get("run_dir", "")
        row["reason"] = trial.user_attrs.get("reason", "") if trial.state.name == "FAIL" else ""
        rows.append(row)
    return rows
