"""The Python API: the guide's trainer classes, for notebooks and scripts.

    from train_professional_models import MobileNetV2Trainer

    trainer = MobileNetV2Trainer(data_path="data/demo", weights="none", image_size=(64, 64),
                                 epochs=30, fine_tune_epochs=0, learning_rate=0.003)
    run_dir = trainer.train()                  # the run directory
    metrics = trainer.evaluate()               # evaluation/metrics.json as a dict
    files = trainer.export(formats="tflite")   # the checked files
    rows = trainer.predict("foto.jpg")         # top classes per image

The keyword arguments are the command line's options, with the same names and defaults
(``python train_professional_models.py --help``): they are read from the very parser the
script uses, turned into its command line and run by the same functions, so the API and the
scripts cannot drift apart. Nothing here imports TensorFlow or PyTorch; a method imports its
framework when it runs. Errors are exceptions (``UserError`` for bad input) instead of an exit
code.
"""

from __future__ import annotations

import argparse
import inspect
import json
from pathlib import Path

from pokedex_trainer.errors import UserError


def _raising(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``parser`` with its errors raised as UserError instead of exiting the interpreter."""
    def error(message: str):
        raise UserError(f"{parser.prog}: {message}")

    parser.error = error
    return parser


def _options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Option name (the flag without its dashes) -> argparse action."""
    return {action.option_strings[0].lstrip("-"): action for action in parser._actions
            if action.option_strings and not isinstance(action, argparse._HelpAction)}


def option_defaults(parser: argparse.ArgumentParser) -> dict[str, object]:
    """Each option's default as a keyword argument (a flag such as ``--no_augment``: False)."""
    return {name: (False if action.nargs == 0 else action.default)
            for name, action in _options(parser).items()}


def argv_from_options(parser: argparse.ArgumentParser, options: dict) -> list[str]:
    """The command line that means ``options`` (keyword arguments named like the flags)."""
    known, argv = _options(parser), []
    for name, value in options.items():
        action = known.get(name)
        if action is None:
            raise UserError(f"unknown option '{name}' for {parser.prog}; the options are: "
                            + ", ".join(sorted(known)))
        if value is None or value is False:
            continue
        flag = action.option_strings[0]
        if action.nargs == 0:  # a switch: on for a true value (1, "yes"), off for 0 or ""
            if value:
                argv.append(flag)
        elif action.nargs == "?" and value is True:
            argv.append(flag)
        elif isinstance(value, (list, tuple)):
            argv += [flag, *(str(v) for v in value)]
        else:
            argv += [flag, str(value)]
    return argv


def _signature(parser: argparse.ArgumentParser, fixed: tuple[str, ...] = ()) -> inspect.Signature:
    parameters = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default)
                  for name, default in option_defaults(parser).items() if name not in fixed]
    return inspect.Signature(parameters)


def _train_parser() -> argparse.ArgumentParser:
    from pokedex_trainer.cli.parsers import build_train_parser

    return _raising(build_train_parser())


class Trainer:
    """A training run from Python: the options of ``train_professional_models.py`` as keyword
    arguments (same names and defaults), then ``train``, ``evaluate``, ``export``, ``predict``.

    ``Trainer(model_type="resnet", ...)`` takes any network; the subclasses fix it.

    Raises:
        UserError: an unknown option or a bad value (at construction, before any work).
    """

    model_type: str | None = None

    def __init__(self, **options):
        from pokedex_trainer.cli.parsers import parse_train_command

        if self.model_type is not None:
            if options.get("model_type", self.model_type) != self.model_type:
                raise UserError(f"{type(self).__name__} trains --model_type {self.model_type}; "
                                f"use Trainer(model_type={options['model_type']!r}) for another")
            options = {**options, "model_type": self.model_type}
        parser = _train_parser()
        self.options = {**option_defaults(parser), **options}
        self.config, self.actions = parse_train_command(argv_from_options(parser, options),
                                                        parser)
        self.run_dir: Path | None = Path(options["resume"]) if options.get("resume") else None

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.__signature__ = _signature(_train_parser(), fixed=("model_type",))

    def train(self):
        """Train (or ``resume``) the run; returns its directory (``find_batch_size``: the
        batch size; ``kfold``: the summary file). ``export=`` exports afterwards, as on the
        command line."""
        from multiprocessing import current_process

        from pokedex_trainer.cli.commands import train_command
        from pokedex_trainer.runs.run_log import setup_console_logging

        if getattr(current_process(), "_inheriting", False):
            # a data-loading worker is importing the user's script: training here would start
            # workers of its own, and so on
            raise UserError("train() ran while a worker process imported your script: put the "
                            "calls under  if __name__ == \"__main__\":  (a notebook needs "
                            "nothing)")
        script = _unguarded_script()
        if script and self.config.workers > 0:
            raise UserError(f"{script} calls train() outside  if __name__ == \"__main__\":  "
                            "the data-loading workers import the script again: put the calls "
                            "under that line (or pass workers=0)")
        setup_console_logging()
        result = train_command(self.config, self.actions)
        searched = self.actions.search_trials is not None  # result: the report folder
        if isinstance(result, Path) and self.actions.kfold is None and not searched:
            self.run_dir = result
        return result

    def _run(self, given: str | Path | None) -> str:
        run = given or self.run_dir
        if run is None:
            raise UserError("no run yet: call train() first, or pass run_dir=")
        return str(run)

    def evaluate(self, run_dir: str | Path | None = None, **options) -> dict:
        """``evaluate.py --run_dir``: the best model on the run's test split (or on
        ``data_path=``); returns the metrics (also in ``<run>/evaluation/metrics.json``).
        Other keyword arguments are evaluate.py's options."""
        from pokedex_trainer.cli.commands import evaluate_command
        from pokedex_trainer.cli.parsers import build_evaluate_parser

        parser = _raising(build_evaluate_parser())
        other = [key for key in ("predict", "experiments", "ensemble", "search")
                 if options.get(key)]
        if other:
            raise UserError(f"evaluate() reports on one run; for {other[0]}= use "
                            + {"predict": "predict()"}.get(other[0], "evaluate.py --"
                                                           + other[0]))
        argv = ["--run_dir", self._run(run_dir)] + argv_from_options(parser, options)
        out = evaluate_command(parser.parse_args(argv))
        return json.loads((Path(out) / "metrics.json").read_text(encoding="utf-8"))

    def predict(self, images: str | Path, run_dir: str | Path | None = None,
                **options) -> list[dict]:
        """``evaluate.py --predict``: the top classes (calibrated) of an image or of every
        image of a folder; one dict per image."""
        from pokedex_trainer.cli.commands import evaluate_command
        from pokedex_trainer.cli.parsers import build_evaluate_parser

        parser = _raising(build_evaluate_parser())
        argv = ["--run_dir", self._run(run_dir), "--predict", str(images)] + \
            argv_from_options(parser, options)
        return evaluate_command(parser.parse_args(argv))

    def export(self, run_dir: str | Path | None = None, **options) -> list[dict]:
        """``export.py --run_dir``: write and check each format (``formats="tflite,onnx"``...);
        returns one dict per file (name, format, parity figures, passed)."""
        from dataclasses import asdict

        from pokedex_trainer.cli.commands import export_from_args
        from pokedex_trainer.cli.parsers import build_export_parser

        parser = _raising(build_export_parser())
        argv = ["--run_dir", self._run(run_dir)] + argv_from_options(parser, options)
        return [asdict(result) for result in export_from_args(parser.parse_args(argv))]


def _unguarded_script() -> str | None:
    """The running script's name when it is a file without an ``if __name__ ==
    "__main__":`` guard (read as text, never run); None in a notebook or a REPL."""
    import sys

    path = getattr(sys.modules.get("__main__"), "__file__", None)
    if not path or not str(path).endswith(".py"):
        return None
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    return None if "__main__" in text else Path(path).name


Trainer.__signature__ = _signature(_train_parser())


class EfficientNetTrainer(Trainer):
    """EfficientNetB7 (Keras 3; ``framework="pytorch"``: torchvision's):
    ``--model_type efficientnet``."""

    model_type = "efficientnet"


class ResNet152Trainer(Trainer):
    """ResNet152 (PyTorch; ``framework="keras"``: keras.applications'):
    ``--model_type resnet``."""

    model_type = "resnet"


class MobileNetV2Trainer(Trainer):
    """MobileNetV2 (Keras 3; ``framework="pytorch"``: torchvision's):
    ``--model_type mobilenet``."""

    model_type = "mobilenet"

