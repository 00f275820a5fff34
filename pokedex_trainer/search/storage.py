"""The Optuna storage of a search: its URL or file, opening it, the study and its trials."""

from __future__ import annotations

import os
import time
import warnings
from pathlib import Path

from pokedex_trainer.config import TrainConfig
from pokedex_trainer.errors import UserError, reason_line
from pokedex_trainer.user_io.path_checks import check_single_component
from pokedex_trainer.search.space import Param, check_space_matches

PRUNER_STARTUP_TRIALS = 2  # the pruner compares a trial once this many trials have completed
PRUNER_WARMUP_EPOCHS = 1  # and never stops one in its first epoch
SAMPLER_STARTUP_TRIALS = 5  # TPE draws at random until this many trials have finished
SEARCH_DIR = "search"  # <output_dir>/search/<name>.db and the report folder <name>/


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
    from pokedex_trainer.user_io.atomic import ensure_writable_dir

    if url is None:
        if create:
            ensure_writable_dir(folder, "search folder")
        url = "sqlite:///" + (folder / f"{name}.db").resolve().as_posix()
    elif "${" in url or "$(" in url:
        raise UserError(f"--search_storage '{url}' holds a variable that was not expanded "
                        "(${...}): give the path itself, or let your shell expand it")
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
        else:
            check_only_optuna_tables(Path(path))
    return rdb_storage(url, create=create)


# the tables Optuna's RDBStorage creates (optuna 5): a database holding any other is not a
# search database, and Optuna's tables are never added to it
OPTUNA_TABLES = {"alembic_version", "studies", "study_directions", "study_system_attributes",
                 "study_user_attributes", "trial_heartbeats", "trial_intermediate_values",
                 "trial_params", "trial_system_attributes", "trial_user_attributes",
                 "trial_values", "trials", "version_info"}


def _sqlite_tables(path: Path) -> set[str]:
    """The tables of an existing SQLite file, read without changing it."""
    import sqlite3

    connection = sqlite3.connect(f"file:{path.resolve().as_posix()}?mode=ro", uri=True)
    try:
        return {row[0] for row in connection.execute(
            "SELECT name FROM sqlite_master WHERE type IN ('table', 'view')")}
    finally:
        connection.close()


def check_only_optuna_tables(path: Path) -> None:
    """Before a search writes to an SQLite file: it is new, empty, or a search database
    (only Optuna's tables); another application's database or any other file is refused."""
    import sqlite3

    if not path.exists() or (path.is_file() and path.stat().st_size == 0):
        return
    try:
        foreign = _sqlite_tables(path) - OPTUNA_TABLES
    except sqlite3.Error as exc:
        raise UserError(f"--search_storage: '{path}' is not an SQLite database ({exc}); "
                        "give a new file or a search database") from None
    if foreign:
        shown = ", ".join(sorted(foreign)[:5]) + (" ..." if len(foreign) > 5 else "")
        raise UserError(f"--search_storage: '{path}' is another application's database "
                        f"(tables {shown}); a search adds its tables only to a new file or a "
                        "search database")


def check_search_database(path: Path) -> None:
    """A file a report may open: an SQLite database that already holds Optuna's tables."""
    import sqlite3

    if not path.is_file():
        raise UserError(f"--search: no search database '{path}'")
    try:
        tables = _sqlite_tables(path)
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
    check_journal_lines(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            lock = JournalFileOpenLock(str(path)) if os.name == "nt" else None
            return JournalStorage(JournalFileBackend(str(path), lock_obj=lock))
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:  # not a journal
        raise UserError(f"--search_storage: '{path}' is not an Optuna journal file "
                        f"({type(exc).__name__})") from None


JOURNAL_OP_CODES = range(11)  # optuna 5's JournalOperation: CREATE_STUDY (0) .. DISCARD_TRIALS


def check_journal_lines(path: Path) -> None:
    """An existing journal must be Optuna's, whole: one JSON operation per line, the last one
    ended. Optuna skips a cut last line, then appends after it and so spoils the next one:
    such a file is refused, left as it is."""
    import json

    if not path.is_file():
        return
    with open(path, "rb") as handle:
        data = handle.read()
    if not data:
        return
    lines = data.split(b"\n")
    if lines[-1]:
        raise UserError(f"--search_storage: '{path}' ends in a cut line (a process stopped "
                        "while writing it?); it is left as it is: remove its last, incomplete "
                        "line, or give a new file")
    for number, line in enumerate(lines[:-1], 1):
        try:
            operation = json.loads(line)
        except (ValueError, UnicodeDecodeError):
            operation = None
        if not (isinstance(operation, dict) and operation.get("op_code") in JOURNAL_OP_CODES
                and not isinstance(operation.get("op_code"), bool)):
            raise UserError(f"--search_storage: '{path}' is not an Optuna journal file (line "
                            f"{number} is no journal entry); it is left as it is")


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
                            f"({reason_line(exc)}): python -m pip install {package}") \
                from None
        except Exception as exc:  # a server that does not answer, a locked or foreign file
            first = reason_line(exc)
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


def open_study(name: str, storage, space: dict[str, Param], config: TrainConfig):
    """Create the study ``name`` in ``storage``, or load it to continue; refuse one started on
    other data or with another ``space``."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # trials are reported here instead
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        study = optuna.create_study(
            study_name=name, storage=storage, direction="maximize",
            load_if_exists=True,
            sampler=optuna.samplers.TPESampler(n_startup_trials=SAMPLER_STARTUP_TRIALS),
            # steps are epoch numbers from 1; Optuna prunes from step n_warmup_steps on
            pruner=optuna.pruners.MedianPruner(n_startup_trials=PRUNER_STARTUP_TRIALS,
                                               n_warmup_steps=PRUNER_WARMUP_EPOCHS + 1))
    check_space_matches(study, space)
    signature = study_signature(config)
    saved = study.user_attrs.get("signature")
    if saved is None:
        study.set_user_attr("signature", signature)
    elif saved != signature:
        raise UserError(f"search '{name}' was started for {_describe(saved)}; this "
                        f"command trains {_describe(signature)}: give another --search_name")
    return study


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


def best_trial(study):
    """The best completed trial, None before the first completes."""
    try:
        return study.best_trial
    except ValueError:  # no completed trial yet
        return None


def short_value(value) -> str:
    """A searched value for the screen: floats with 3 significant digits."""
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def trial_rows(study, exact: bool = False) -> list[dict]:
    """One row per trial: number, state, score, epochs, values, run directory, reason
    (values shortened for the screen unless ``exact``)."""
    names = sorted({name for t in study.get_trials(deepcopy=False) for name in t.params})
    rows = []
    for trial in study.get_trials(deepcopy=False):
        row = {"trial": trial.number, "state": trial.state.name.lower(),
               "val_accuracy": "" if trial.value is None else f"{trial.value:.4f}",
               "epochs": len(trial.intermediate_values)}
        shown = repr if exact else short_value
        row.update({name: shown(trial.params[name]) if name in trial.params else ""
                    for name in names})
        row["run_dir"] = trial.user_attrs.get("run_dir", "")
        row["reason"] = trial.user_attrs.get("reason", "") if trial.state.name == "FAIL" else ""
        rows.append(row)
    return rows
