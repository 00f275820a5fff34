"""The search space: which options a search varies, their ranges or choices, and drawing them."""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, replace
from pathlib import Path

from pokedex_trainer.config import TrainConfig
from pokedex_trainer.errors import UserError, reason_line

logger = logging.getLogger(__name__)

# Options a search never sets: where things are, what is trained, and how the data is split
# (every trial must be scored on the same validation images).
NOT_SEARCHABLE = frozenset({
    "data_path", "model_type", "output_dir", "log_dir", "run_name", "workers", "base_model",
    "weights", "keras_backend", "framework", "memory_limit_mb", "image_size", "search_name",
    "search_trial", "deterministic", "seed", "val_split", "test_split"})
SPEC_KEYS = frozenset({"low", "high", "log", "step", "choices"})


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
        first = reason_line(exc)
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
