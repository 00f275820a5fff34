"""A run directory's own files, read back and checked before anything trusts them.

A run directory travels: it is copied, shared, edited by hand, cut short by a full disk. So every
file the tool reads back from it (config, class names, split manifest, resume state, history,
summary, calibration) is input like any other. Each reader here checks types, ranges and the
file's agreement with the run's other files, and raises ``UserError`` with one line that names
the file, what is wrong and what the user can do: never a traceback, and never a guess that would
restart a run, rewrite its history or delete a row.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path, PurePosixPath, PureWindowsPath

from pokedex_trainer.errors import UserError
from pokedex_trainer.user_io.checked_values import is_number, is_whole, names_problem, shown
from pokedex_trainer.user_io.inert_text import class_name

RESUME_REMEDY = "the run cannot be resumed (restore the file from a copy of the run, or start " \
                "a new run)"
READ_REMEDY = "restore it from a copy of the run, or train the run again"
CALIBRATION_REMEDY = "delete it and run evaluate.py again to fit the temperature anew"
SUMMARY_REMEDY = "restore it, or delete it to resume the run as interrupted"
STATE_DIR = re.compile(r"^epoch_\d{3,}$")
REQUIRED_CONFIG = ("data_path", "model_type", "epochs", "fine_tune_epochs", "batch_size",
                   "learning_rate", "image_size", "weights", "seed", "output_dir", "log_dir")

# fit_temperature searches 0.05..20; a little room either side for other tools' calibration
# (export.py writes the run's temperature into every sidecar: evaluation/sidecar_schema.py)
TEMPERATURE_RANGE = (0.01, 100.0)


def fail(path: Path, problem: str, remedy: str):
    raise UserError(f"{path}: {problem}; {remedy}")


def read_json(path: Path, remedy: str):
    """The parsed content of a JSON file; UserError when it cannot be read or parsed."""
    import json

    path = Path(path)
    try:
        from pokedex_trainer.user_io.regular_files import read_regular_text

        return json.loads(read_regular_text(path))
    except UnicodeDecodeError:
        fail(path, "is not UTF-8 text", remedy)
    except ValueError as exc:
        fail(path, f"is not valid JSON ({exc})", remedy)
    except RecursionError:  # [[[[... nested deeper than Python's stack
        fail(path, "is not a file of this tool (JSON nested thousands of levels deep)", remedy)
    except OSError as exc:
        fail(path, f"cannot be read ({exc.strerror or exc})", remedy)


def _object(path: Path, data, remedy: str) -> dict:
    if not isinstance(data, dict):
        fail(path, f"must be a JSON object, got {type(data).__name__}", remedy)
    return data


# --- config.json ---------------------------------------------------------------------------

def config_values(path: Path, fields: dict) -> dict:
    """The known options of a saved TrainConfig, each checked against its type.

    ``fields``: option name -> its type hint (``typing.get_type_hints(TrainConfig)``). Counts
    are whole numbers >= 0 and rates finite numbers >= 0; the ranges of each option are
    ``TrainConfig.validate``'s job (a resumed run runs it, see ``RunStore.config``).
    """
    data = _object(path, read_json(path, READ_REMEDY), READ_REMEDY)
    # Every version saved these: a config without them would silently take the defaults (an
    # EfficientNetB7 with ImageNet weights on data/training) instead of the run's own values.
    missing = [name for name in REQUIRED_CONFIG if name not in data]
    if missing:
        fail(path, f"lacks {', '.join(missing)}", READ_REMEDY)
    values = {k: v for k, v in data.items() if k in fields}
    if isinstance(values.get("augment"), bool):  # written before --augment had levels
        values["augment"] = "full" if values["augment"] else "none"
    for name, value in values.items():
        problem = _config_problem(name, value, str(fields[name]))
        if problem:
            fail(path, f"{name} must be {problem}, got {shown(value)}", READ_REMEDY)
    if "model_type" in values:
        from pokedex_trainer.networks import MODEL_SPECS

        if values["model_type"] not in MODEL_SPECS:
            fail(path, f"model_type {shown(values['model_type'])} is not a network of this "
                        f"version ({', '.join(sorted(MODEL_SPECS))})", READ_REMEDY)
    if values.get("image_size") is not None:
        values["image_size"] = tuple(values["image_size"])
    return values


def _config_problem(name: str, value, hint: str) -> str | None:
    """What a saved option's value should be, or None when it is fine."""
    kinds = {part.strip() for part in hint.replace("Optional[", "").rstrip("]").split("|")}
    if value is None:
        return None if "None" in kinds else "set"
    if name == "image_size":
        ok = isinstance(value, list) and len(value) == 2 and all(is_whole(v, 1) for v in value)
        return None if ok else "[height, width], two whole numbers >= 1"
    if (name, value) in (("batch_size", "auto"), ("fine_tune_layers", "all")):
        return None
    if "int" in kinds:
        return None if is_whole(value) else "a whole number >= 0"
    if "float" in kinds:
        return None if is_number(value) and value >= 0 else "a finite number >= 0"
    if "bool" in kinds:
        return None if isinstance(value, bool) else "true or false"
    if "str" in kinds:
        return None if isinstance(value, str) else "text"
    return None


# --- class_names.json and split_manifest.json ------------------------------------------------

def read_class_names(path: Path, expected: list[str] | None = None) -> list[str]:
    """A run's class_names.json; when ``expected`` (the manifest's) is given, it must match."""
    names = read_json(path, READ_REMEDY)
    problem = names_problem(names)
    if problem:
        fail(path, problem, READ_REMEDY)
    names = [class_name(n) for n in names]  # one Unicode form, whatever wrote the file
    if expected is not None and names != [class_name(n) for n in expected]:
        fail(path, f"lists {len(names)} classes that are not the {len(expected)} of the run's "
                    f"split_manifest.json", READ_REMEDY)
    return names


def run_class_names(run_dir: Path) -> list[str] | None:
    """The class names of a run directory (checked against its manifest), None without
    class_names.json."""
    from pokedex_trainer.runs.layout import CLASS_NAMES, MANIFEST

    path = Path(run_dir) / CLASS_NAMES
    if not path.is_file():
        return None
    manifest = Path(run_dir) / MANIFEST
    expected = read_manifest(manifest)["class_names"] if manifest.is_file() else None
    return read_class_names(path, expected)


def _relative_problem(text) -> str | None:
    """Why a sample path of a manifest is not a plain path inside the data folder, or None."""
    if not isinstance(text, str) or not text:
        return "must be a non-empty path"
    for flavour in (PurePosixPath, PureWindowsPath):
        parsed = flavour(text)
        if parsed.is_absolute() or parsed.drive or ".." in parsed.parts:
            return "must stay inside the data folder (no absolute path, no '..')"
    return None


def read_manifest(path: Path) -> dict:
    """split_manifest.json, checked: data_path, class names, and [path, label] samples whose
    paths stay inside the data folder and whose labels index the classes."""
    path = Path(path)
    manifest = _object(path, read_json(path, READ_REMEDY), READ_REMEDY)
    if not isinstance(manifest.get("data_path"), str):
        fail(path, "data_path must be the data folder's path (text)", READ_REMEDY)
    problem = names_problem(manifest.get("class_names"))
    if problem:
        fail(path, f"class_names {problem}", READ_REMEDY)
    n_classes = len(manifest["class_names"])
    splits = manifest.get("splits")
    if not isinstance(splits, dict) or not splits:
        fail(path, "splits must be an object of split name -> [[path, label], ...]",
              READ_REMEDY)
    checked = {}
    for split, items in splits.items():
        if not isinstance(items, list):
            fail(path, f"split '{split}' must be a list of [path, label] pairs", READ_REMEDY)
        for item in items:
            if not (isinstance(item, list) and len(item) == 2):
                fail(path, f"split '{split}': {shown(item)} is not a [path, label] pair",
                      READ_REMEDY)
            problem = _relative_problem(item[0])
            if problem:
                fail(path, f"split '{split}': sample path {shown(item[0])} {problem}",
                      READ_REMEDY)
            if not is_whole(item[1], 0, n_classes - 1):
                fail(path, f"split '{split}': label of '{item[0]}' must be a whole number from "
                            f"0 to {n_classes - 1}, got {shown(item[1])}", READ_REMEDY)
        checked[split] = [(p, label) for p, label in items]
    return {**manifest, "class_names": [class_name(n) for n in manifest["class_names"]],
            "splits": checked}


# --- calibration.json and summary.json -------------------------------------------------------

def _temperature_problem(entry) -> str | None:
    if not isinstance(entry, dict):
        return "must be an object"
    value = entry.get("temperature")
    low, high = TEMPERATURE_RANGE  # what a sidecar may carry: export writes it into one
    if value is None or (is_number(value) and low <= value <= high):
        return None
    return f"temperature must be a number from {low} to {high}, got {shown(value)}"


def read_calibration(path: Path) -> dict | None:
    """calibration.json (the temperature of the run's best model, and one per model file),
    or None when there is none."""
    path = Path(path)
    if not path.is_file():
        return None
    data = _object(path, read_json(path, CALIBRATION_REMEDY), CALIBRATION_REMEDY)
    problem = _temperature_problem(data)
    if problem:
        fail(path, problem, CALIBRATION_REMEDY)
    models = data.get("models", {})
    if not isinstance(models, dict):
        fail(path, "models must be an object of model file -> calibration", CALIBRATION_REMEDY)
    for name, entry in models.items():
        problem = _temperature_problem(entry)
        if problem:
            fail(path, f"models['{name}'] {problem}", CALIBRATION_REMEDY)
    return data


def read_summary(path: Path) -> dict | None:
    """summary.json of a run, or None when it has none (it was killed before writing one)."""
    path = Path(path)
    if not path.is_file():
        return None
    data = _object(path, read_json(path, SUMMARY_REMEDY), SUMMARY_REMEDY)
    if not isinstance(data.get("status", ""), str):
        fail(path, f"status must be text, got {shown(data['status'])}", SUMMARY_REMEDY)
    return data


# --- resume/state.json and history.csv ------------------------------------------------------

def read_state(path: Path, phase_epochs: list[int], max_format: int) -> dict:
    """resume/state.json, checked against the run's phase plan (``phase_epochs``: the epochs of
    each phase). Files of the first version (no format, no state_dir) are accepted."""
    path = Path(path)
    point = _object(path, read_json(path, RESUME_REMEDY), RESUME_REMEDY)
    planned = sum(phase_epochs)

    def need(ok: bool, what: str, value) -> None:
        if not ok:
            fail(path, f"{what}, got {shown(value)}", RESUME_REMEDY)

    if "format" in point:
        need(is_whole(point["format"], 1, max_format),
             f"format must be a state format this version reads (1 to {max_format})",
             point["format"])
    run_state = point.get("run_state")
    need(isinstance(run_state, dict), "run_state must be an object", run_state)
    epochs_run = run_state.get("epochs_run")
    need(is_whole(epochs_run), "run_state.epochs_run must be a whole number >= 0", epochs_run)
    need(epochs_run <= planned, f"run_state.epochs_run must not exceed the {planned} epochs the "
                                "run's config plans", epochs_run)
    need(is_whole(point.get("phase_index"), 0, len(phase_epochs) - 1),
         f"phase_index must be a phase of the run's plan (0 to {len(phase_epochs) - 1})",
         point.get("phase_index"))
    need(point.get("next_epoch") == epochs_run and is_whole(point.get("next_epoch")),
         f"next_epoch must equal run_state.epochs_run ({epochs_run})", point.get("next_epoch"))
    phase_start = point.get("phase_start")
    need(is_whole(phase_start, 0, epochs_run) and
         epochs_run <= phase_start + phase_epochs[point["phase_index"]],
         f"phase_start must be a whole number such that epoch {epochs_run} lies in the phase",
         phase_start)
    need(isinstance(point.get("phase_done"), bool), "phase_done must be true or false",
         point.get("phase_done"))
    rate = point.get("learning_rate")
    # 0 is a rate a schedule can reach (--min_lr 0, the end of a cosine phase)
    need(rate is None or (is_number(rate) and rate >= 0),
         "learning_rate must be a finite number >= 0", rate)
    _check_counters(need, run_state, epochs_run)
    for where, counters in (("plateau", point.get("plateau")),
                            ("backend.reduce_lr", (point.get("backend") or {}).get("reduce_lr")
                             if isinstance(point.get("backend", {}), dict) else "not an object")):
        need(counters is None or _plateau_ok(counters),
             f"{where} must be an object of best (a number), wait and cooldown_counter (whole "
             "numbers >= 0)", counters)
    if "state_dir" in point:
        state_dir = point["state_dir"]
        need(isinstance(state_dir, str) and bool(STATE_DIR.match(state_dir)),
             "state_dir must name a folder epoch_NNN of resume/", state_dir)
        need((path.parent / state_dir).is_dir(), f"state_dir names a folder that is not in "
                                                 f"'{path.parent}'", state_dir)
    return point


def _check_counters(need, run_state: dict, epochs_run: int) -> None:
    tracker = run_state.get("tracker")
    need(isinstance(tracker, dict) and (tracker.get("best") is None or
                                        is_number(tracker.get("best"))) and
         (tracker.get("best_epoch") is None or is_whole(tracker.get("best_epoch"), 1,
                                                        epochs_run)),
         "run_state.tracker must hold best (a number) and best_epoch (an epoch run so far)",
         tracker)
    stopping = run_state.get("early_stopping")
    need(isinstance(stopping, dict) and is_whole(stopping.get("wait", 0)),
         "run_state.early_stopping must hold wait, a whole number >= 0", stopping)
    logs = run_state.get("best_logs")
    need(isinstance(logs, dict) and all(is_number(v, finite=False) for v in logs.values()),
         "run_state.best_logs must be an object of metric -> number", logs)


def _plateau_ok(counters) -> bool:
    return isinstance(counters, dict) and \
        (counters.get("best") is None or is_number(counters.get("best"), finite=False)) and \
        is_whole(counters.get("wait", 0)) and is_whole(counters.get("cooldown_counter", 0))


def check_history(path: Path, epochs_run: int, state_path: Path) -> None:
    """history.csv must hold epochs 1..epochs_run (and at most the one more epoch that a kill
    between its row and its resume point leaves), so resuming drops no row it should keep."""
    path = Path(path)
    rows = []
    if path.is_file():
        try:
            with open(path, encoding="utf-8", newline="") as handle:
                rows = list(csv.reader(handle))
        except (UnicodeDecodeError, csv.Error) as exc:
            fail(path, f"cannot be read as CSV ({exc})", RESUME_REMEDY)
    if epochs_run == 0 and not rows:
        return
    if not rows or not rows[0] or rows[0][0] != "epoch":
        fail(path, "must start with a header whose first column is 'epoch'", RESUME_REMEDY)
    epochs = [row[0] for row in rows[1:] if row]
    for number, text in enumerate(epochs, 1):
        if text != str(number):
            fail(path, f"row {number} must be epoch {number}, got {shown(text)}",
                  RESUME_REMEDY)
    if not epochs_run <= len(epochs) <= epochs_run + 1:
        fail(path, f"holds {len(epochs)} epochs but {state_path.name} says {epochs_run} were "
                    "run", RESUME_REMEDY)


# --- the metadata a checkpoint (.pth) carries beside its weights -----------------------------
