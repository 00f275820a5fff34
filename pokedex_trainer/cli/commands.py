"""The scripts' commands: parse, call the job, turn what it raises into an exit code."""

from __future__ import annotations

import argparse

from pokedex_trainer.cli.parsers import (
    build_evaluate_parser,
    build_export_parser,
    build_prepare_parser,
    parse_train_command,
    train_option_actions,
)
from pokedex_trainer.config import TrainActions, TrainConfig


def run_main(main, argv: list[str] | None = None) -> int:
    """Run a script's ``main`` and turn expected failures into one line and an exit code."""
    import sys

    from pokedex_trainer.runs.run_log import setup_console_logging
    from pokedex_trainer.user_io.inert_text import InertStream

    setup_console_logging()
    _drop_bad_thread_counts()
    import threading

    threading.excepthook = _thread_failure_as_one_line
    consoles = sys.stdout, sys.stderr
    # names users give (class folders, run names) may hold terminal escape sequences
    sys.stdout, sys.stderr = InertStream(sys.stdout), InertStream(sys.stderr)
    try:
        return _run_with_exit_code(main, argv)
    finally:
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        sys.stdout, sys.stderr = consoles


def _drop_bad_thread_counts() -> None:
    """OMP_NUM_THREADS and its kin that are no whole number above 0: OpenMP complains on
    stderr once per library and uses every core anyway. Said once, then unset for this
    process (before any framework reads it)."""
    import logging
    import os

    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        text = os.environ.get(name)
        if text is not None and not (text.strip().isdigit() and int(text) > 0):
            logging.getLogger("pokedex_trainer").warning(
                "%s=%r is not a whole number above 0: ignored (every core is used)", name, text)
            del os.environ[name]


def _thread_failure_as_one_line(args) -> None:
    """An error in a background thread (TensorBoard's writer on a full disk...): one warning
    line on the console, the traceback in the run's log only; the main thread meets the same
    cause and ends the command with its own line."""
    import logging
    import traceback

    from pokedex_trainer.core.interrupt import LOG_ONLY
    from pokedex_trainer.errors import reason_line

    if args.exc_type is SystemExit:
        return
    log = logging.getLogger("pokedex_trainer")
    name = args.thread.name if args.thread is not None else "a background thread"
    where = f" ('{args.exc_value.filename}')" if getattr(args.exc_value, "filename", None) \
        else ""
    value = args.exc_value
    reason = value.strerror if isinstance(value, OSError) and value.strerror else \
        reason_line(value)
    log.warning("a background thread (%s) stopped: %s%s", name, reason, where)
    log.warning("%s", "".join(traceback.format_exception(args.exc_type, args.exc_value,
                                                         args.exc_traceback)).rstrip(),
                extra={LOG_ONLY: True})


def _run_with_exit_code(main, argv: list[str] | None) -> int:
    import sys

    from pokedex_trainer.core.interrupt import terminate_as_interrupt
    from pokedex_trainer.errors import ExportCheckFailed, RunFailed, TrainingStopped, UserError

    try:
        with terminate_as_interrupt():  # kill, timeout, docker stop, scancel: as Ctrl-C
            code = main(argv)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except (TrainingStopped, ExportCheckFailed, RunFailed) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except RecursionError:  # a file nested deeper than Python's stack (JSON, YAML...)
        print("error: an input file is nested too deeply to be read (thousands of levels): it "
              "is not a file of this tool", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:  # the requirements are not installed (or not all)
        if not exc.name or exc.name.split(".")[0] == "pokedex_trainer":
            raise
        print(f"error: the package '{exc.name.split('.')[0]}' is not installed: run 'python -m "
              "pip install -r requirements.txt' (see the README's quick start)", file=sys.stderr)
        return 2
    except OSError as exc:  # a folder it cannot write, a disk that filled...
        import errno

        where = f" ('{exc.filename}')" if exc.filename else ""
        print(f"error: {exc.strerror or exc}{where}", file=sys.stderr)
        # a path the user named that cannot be used as given (a file where a folder goes, a
        # name too long for the system): bad input, whichever option it came from
        pointed_at = (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOENT, errno.ENOTDIR,
                      errno.EISDIR, errno.EEXIST, errno.ENAMETOOLONG, errno.ELOOP)
        return 2 if exc.errno in pointed_at else 1
    return int(code or 0)


SHORT_TRAIN_USAGE = """\
usage: python train_professional_models.py --data_path DIR --model_type {efficientnet,resnet,mobilenet} [options]
  e.g. python train_professional_models.py --data_path data/training --model_type mobilenet --epochs 10
  python train_professional_models.py --help lists every option; the README's quick start
  trains on the embedded demo data in minutes.
No option was given, so nothing was started (a PowerShell command with backtick line ends,
pasted into bash, arrives like this: join its lines, or replace each ` with \\)."""


RECIPE_WHY = {"guide": "the guide's values for every option you leave out",
              "scratch": "--weights none: the from-scratch recipe",
              "transfer": "weights to start from: the transfer recipe"}


def log_recipe(config, taken: dict) -> None:
    """The log's first lines: which recipe fills the options left out, why, and what it set."""
    import logging

    name = config.recipe_name()
    why = ("--recipe guide: " if config.recipe == "guide" else
           "--base_model: " if config.base_model else "") + RECIPE_WHY[name]
    values = " ".join(f"--{key} {value}" for key, value in taken.items())
    logging.getLogger(__name__).info(
        "recipe: %s (%s)%s", name, why,
        f"; it sets {values} (options you give win; --recipe guide keeps the guide's values)"
        if values else "")


def train_main(argv: list[str] | None = None) -> int | None:
    """``train_professional_models.py``: parse, train, report. With no argument at all it
    prints a short usage and exits with 2: a full EfficientNetB7 run is never started by
    accident."""
    import sys

    if (sys.argv[1:] if argv is None else argv) == []:
        print(SHORT_TRAIN_USAGE, file=sys.stderr)
        return 2
    config, actions = parse_train_command(argv)  # --help exits here, before heavy imports
    train_command(config, actions)
    return None


def train_command(config: TrainConfig, actions: TrainActions):
    """What ``train_professional_models.py`` does once parsed (the Python API calls it too):
    the run directory, or the batch size of ``--find_batch_size``, or the ``--kfold`` summary
    file; None on the other ranks of a torchrun."""
    from pathlib import Path

    from pokedex_trainer.runs.live_log import configure
    from pokedex_trainer.runs.lifecycle import run_training
    from pokedex_trainer.runs.opening import find_batch_size_only, run_framework, settle_framework

    configure(actions.live_log)
    if not actions.resume:
        from pokedex_trainer.user_io.path_checks import check_train_paths

        check_train_paths(config)
        config = settle_framework(config)  # the network of --base_model is known from here
        config.resolved()  # a bad value is the only line, before the recipe's
        log_recipe(config, actions.recipe_defaults)
    resume = Path(actions.resume) if actions.resume else None
    if actions.searching:
        from pokedex_trainer.search.trials import search_command

        return search_command(config, actions, resume, train_option_actions())
    if actions.find_batch_size:
        return find_batch_size_only(config)
    if actions.kfold is not None:
        from pokedex_trainer.errors import UserError
        from pokedex_trainer.runs.kfold import run_kfold

        if resume or actions.export:
            raise UserError("--kfold runs K fresh runs: it does not combine with --resume or "
                            "--export (export the fold you choose with export.py)")
        return run_kfold(config, actions.kfold)
    formats = None
    if actions.export:
        from pokedex_trainer.exporters.choices import parse_formats

        # checked before training: a typo must not wait for the end of a long run
        formats = ",".join(parse_formats(actions.export, run_framework(config, resume)))
    run_dir = run_training(config, resume)
    if formats and run_dir is not None:
        export_after_training(run_dir, formats)
    return run_dir


def export_after_training(run_dir, formats: str) -> None:
    """``--export``: in this process, or in a new one when Keras trained here on another
    backend than TensorFlow (the exporters are TensorFlow's; a process has one backend)."""
    import sys

    keras = sys.modules.get("keras")
    if keras is None or keras.backend.backend() == "tensorflow":
        from pokedex_trainer.exporters.export_run import export_command

        export_command(run_dir=str(run_dir), formats=formats)
        return
    import os
    import subprocess
    from pathlib import Path

    from pokedex_trainer.errors import ExportCheckFailed

    script = Path(__file__).resolve().parents[2] / "export.py"
    env = {**os.environ, "KERAS_BACKEND": "tensorflow"}
    result = subprocess.run([sys.executable, str(script), "--run_dir", str(run_dir),
                             "--formats", formats], env=env)
    if result.returncode != 0:
        raise ExportCheckFailed(f"export of {run_dir} failed (exit code {result.returncode}); "
                                f"see the lines above")


def evaluate_main(argv: list[str] | None = None) -> None:
    """``evaluate.py``: a model's report, an ensemble, predictions, or the experiments table."""
    evaluate_command(build_evaluate_parser().parse_args(argv))


def evaluate_command(args: argparse.Namespace):
    """What ``evaluate.py`` does once parsed (the Python API calls it too): the report folder,
    or the prediction rows of ``--predict``, or the sorted rows of ``--experiments``."""
    from pokedex_trainer.errors import UserError
    from pokedex_trainer.user_io.path_checks import check_file_option, check_folder_option

    if args.output_dir:
        check_folder_option(args.output_dir, "--output_dir")
    if args.calibration:  # written after the calibration work: checked before it
        check_file_option(args.calibration, "--calibration")
    if args.experiments:
        from pokedex_trainer.runs.experiments_view import show_experiments

        return show_experiments(args.experiments, args.sort_by)
    if args.search or args.search_storage:
        if not args.search:
            raise UserError("--search_storage goes with --search NAME")
        from pokedex_trainer.search.report import search_report_command

        return search_report_command(args.search, args.search_storage, args.output_dir)
    if args.latency_runs < 1 or args.latency_batch < 1 or args.top_k < 1:
        raise UserError("--latency_runs, --latency_batch and --top_k must be at least 1")
    from pokedex_trainer.evaluation.unknown import check_threshold

    check_threshold(args.threshold)
    if args.trust_model_file:
        if not args.model:
            raise UserError("--trust_model_file goes with --model FILE")
        from pokedex_trainer.evaluation.safe_loading import vouch_for

        vouch_for(args.model)
    from pokedex_trainer.evaluation import report as evaluating
    from pokedex_trainer.evaluation.app_predictions import predict_command
    from pokedex_trainer.evaluation.ensemble import evaluate_ensemble

    from pokedex_trainer.evaluation.unknown import check_recall

    options = evaluating.EvaluateOptions(args.output_dir, args.latency_runs, args.latency_batch,
                                         calibration=args.calibration,
                                         unknown_data=args.unknown_data,
                                         unknown_recall=check_recall(args.unknown_recall))
    if args.unknown_data and (args.predict or args.ensemble):
        raise UserError("--unknown_data goes with the report of one model (--run_dir or "
                        "--model), not with --predict or --ensemble")
    if args.ensemble:
        if args.run_dir or args.model or args.predict:
            raise UserError("--ensemble takes run directories of its own; drop --run_dir, "
                            "--model and --predict")
        return evaluate_ensemble(args.ensemble, args.data_path, options)
    if not (args.run_dir or args.model):
        raise UserError("say what to evaluate: --run_dir RUN_DIR, --model FILE, --ensemble "
                        "RUN_DIR RUN_DIR ... (or --experiments DIR to compare runs)")
    if args.predict:
        return predict_command(args.predict, args.run_dir, args.model, args.top_k,
                               args.threshold, args.output_dir, args.calibration)
    return evaluating.evaluate_model(args.run_dir, args.model, args.data_path, options)


def export_main(argv: list[str] | None = None) -> None:
    """``export.py``: write each format, check it against the source, print the figures."""
    export_from_args(build_export_parser().parse_args(argv))


def export_from_args(args: argparse.Namespace) -> list:
    """What ``export.py`` does once parsed (the Python API calls it too): the checked files
    (``ExportResult``)."""
    from pokedex_trainer.errors import UserError

    if args.serve:
        from pokedex_trainer.exporters.serve_page import serve_command

        return serve_command(args.serve, args.bind, args.port)
    if args.check_images < 1 or args.calibration_images < 1:
        raise UserError("--check_images and --calibration_images must be at least 1")
    if args.output_dir:
        from pokedex_trainer.user_io.path_checks import check_folder_option

        check_folder_option(args.output_dir, "--output_dir")
    from pokedex_trainer.exporters.export_run import export_command

    return export_command(run_dir=args.run_dir, model=args.model, formats=args.formats,
                          output_dir=args.output_dir, data_path=args.data_path,
                          check_images=args.check_images,
                          calibration_images=args.calibration_images, opset=args.opset,
                          tflite_precisions=args.tflite_precisions,
                          calibration_file=args.calibration, web_precision=args.web_precision,
                          threshold=args.threshold)


def prepare_main(argv: list[str] | None = None) -> int:
    """``prepare_dataset.py``: exit 0, or 1 with ``--strict`` when the minimums are missed."""
    from pokedex_trainer.prepare.run import prepare

    args = build_prepare_parser().parse_args(argv)
    if not args.check:
        from pokedex_trainer.user_io.path_checks import check_folder_option

        check_folder_option(args.output_dir, "--output_dir")  # before any work
    report = prepare(args)
    strict_failures = report.too_few_classes or report.classes_below_minimum or \
        report.small_images
    if args.strict and strict_failures:
        import sys

        print("error: --strict: the guide's minimums are not met (see problems above)",
              file=sys.stderr)
        return 1
    return 0
