"""Test accuracy of the trainer's recipe against a bare Keras script, per epoch budget.

    python benchmarks/registry_photos.py --output benchmarks/data/cifar10_registry
    python benchmarks/recipe.py --train_path benchmarks/data/cifar10_registry/train \\
        --test_path benchmarks/data/cifar10_registry/test --budgets 4 20 \\
        --output benchmarks/results/recipe_cifar10.json

Both train MobileNetV2 from scratch (64x64 by default) on the same training folder, each
holding out the same share of it for validation, and both are scored on the same separate test
folder, decoded once here for both models. Per budget B:

* the tool: ``train_professional_models.py --model_type mobilenet --weights none`` run as a
  user runs it, with B epochs over both phases (``--epochs``, ``--fine_tune_epochs``); its best
  model (by validation accuracy, as it saves it) is scored. ``--recipe NAME=ARGS`` adds a row
  with more options (``--recipe "light=--augment light"``); the row ``tool`` has none, so
  it shows the tool's defaults.
* the bare script: ``bare_keras_script`` below, the ~30 lines a Keras user writes:
  ``image_dataset_from_directory``, no augmentation, Adam, BatchNorm momentum 0.9, B epochs,
  the final weights.

Prints one line per budget, the figures side by side, and writes JSON (--output). On the demo
data, ``--synthetic_test N`` draws a test folder of N new images per class from the demo's
generator (another seed).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("KERAS_BACKEND", "tensorflow")  # image_dataset_from_directory is tf.data
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # errors stay one line, not TF's start-up log

BARE = "bare"
TOOL = "tool"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train_path", required=True,
                        help="class folders both train on (each holds out --val_split)")
    parser.add_argument("--test_path", default=None,
                        help="class folders neither sees, for the test accuracy")
    parser.add_argument("--synthetic_test", type=int, default=0, metavar="N",
                        help="instead of --test_path: N new demo images per class "
                             "(pokedex_trainer.data.synthetic, seed 1), for the demo data")
    parser.add_argument("--budgets", type=int, nargs="+", default=[4, 20],
                        help="epoch budgets; the tool's count both phases (default: 4 20)")
    parser.add_argument("--fine_tune_share", type=float, default=0.2,
                        help="share of a budget the tool spends in phase 2, rounded "
                             "(default: %(default)s: 4 -> 3 + 1, 20 -> 16 + 4)")
    parser.add_argument("--recipe", action="append", default=[], metavar="NAME=ARGS",
                        help="another tool row: NAME and the options it adds, e.g. "
                             "\"light=--augment light --lr_schedule cosine\" (repeatable)")
    parser.add_argument("--no_default", action="store_true",
                        help="leave out the row of the tool without extra options")
    parser.add_argument("--no_bare", action="store_true", help="leave out the bare script")
    parser.add_argument("--image_size", type=int, default=64)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--val_split", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--work_dir", default=None,
                        help="where the tool's runs go (default: a temporary folder)")
    parser.add_argument("--output", default=None, help="JSON file of the results")
    args = parser.parse_args(argv)
    if args.synthetic_test < 0:
        parser.error("--synthetic_test must be a number of images per class, at least 1")
    if (args.test_path is None) == (args.synthetic_test == 0):
        parser.error("give one of --test_path and --synthetic_test")
    checks = [(min(args.budgets) >= 1, "--budgets must be whole numbers of epochs, at least 1"),
              (len(set(args.budgets)) == len(args.budgets), "--budgets: each budget once"),
              (0 <= args.fine_tune_share < 1, "--fine_tune_share must be in [0, 1)"),
              (args.image_size >= 8, "--image_size must be at least 8 px"),
              (args.batch_size >= 1, "--batch_size must be at least 1"),
              (0 < args.val_split < 1, "--val_split must be a fraction in (0, 1)")]
    for ok, message in checks:
        if not ok:
            parser.error(message)
    try:
        args.classes = check_folders(args.train_path, args.test_path)
        args.recipes = parse_recipes(args.recipe, not args.no_default)
        for name, extra in args.recipes.items():
            check_trainer_options(name, tool_command(args.train_path, args.budgets[0], args,
                                                     extra, Path("runs"), name)[2:])
        check_outputs(args)
    except ValueError as exc:
        parser.error(str(exc))
    return args


def check_folders(train_path: str, test_path: str | None) -> list[str]:
    """The training classes; both folders exist, hold images, and (with a test folder) the
    same classes. ValueError otherwise."""
    from pokedex_trainer.data.scan import scan_dataset
    from pokedex_trainer.errors import UserError

    classes = {}
    for flag, path in (("--train_path", train_path), ("--test_path", test_path)):
        if path is None:
            continue
        if not Path(path).is_dir():
            raise ValueError(f"{flag} '{path}' is not a folder")
        try:
            index = scan_dataset(Path(path))
        except UserError as exc:
            raise ValueError(f"{flag}: {exc}") from None
        if len(index.class_names) < 2:
            raise ValueError(f"{flag} '{path}' needs class folders of images, at least two")
        classes[flag] = index.class_names
    if test_path is not None and classes["--test_path"] != classes["--train_path"]:
        raise ValueError(f"the test classes {classes['--test_path']} are not the training "
                         f"classes {classes['--train_path']}")
    return classes["--train_path"]


def check_trainer_options(name: str, argv: list[str]) -> None:
    """A row's options as the trainer reads them, before anything trains."""
    import contextlib
    import io

    from pokedex_trainer.cli.parsers import parse_train_command
    from pokedex_trainer.errors import UserError

    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors):
            config, _ = parse_train_command(argv)
        config.resolved()
    except SystemExit:
        last = (errors.getvalue().strip().splitlines() or ["invalid options"])[-1]
        raise ValueError(f"row '{name}': {last}") from None
    except UserError as exc:
        raise ValueError(f"row '{name}': {exc}") from None


def check_outputs(args) -> None:
    """Nothing written by someone else is replaced: the tool's run names must be free in
    --work_dir, and --output must be new or a result file of this script."""
    if args.work_dir:
        runs = Path(args.work_dir) / "runs"
        taken = [f"{name}_{budget}" for name in args.recipes for budget in args.budgets
                 if (runs / f"{name}_{budget}").exists()]
        if taken:
            raise ValueError(f"--work_dir {args.work_dir} already holds the run "
                             f"{taken[0]}: choose an empty --work_dir")
    if args.output:
        output = Path(args.output)
        if output.is_dir():
            raise ValueError(f"--output {output} is a folder: give a JSON file name")
        if output.exists():
            try:
                previous = json.loads(output.read_text(encoding="utf-8"))
                ours = isinstance(previous, dict) and {"recipes", "results"} <= set(previous)
            except (OSError, ValueError):
                ours = False
            if not ours:
                raise ValueError(f"--output {output} exists and is not a result of this "
                                 "script: choose a new file name")


def parse_recipes(specs: list[str], with_default: bool = True) -> dict[str, list[str]]:
    """``NAME=ARGS`` strings -> {name: extra tool arguments}, the default row first."""
    recipes = {TOOL: []} if with_default else {}
    for spec in specs:
        name, sep, extra = spec.partition("=")
        name = name.strip()
        if not sep or not name or name in recipes or name == BARE:
            raise ValueError(f"--recipe '{spec}': expected NAME=ARGS with a new NAME "
                             f"(not '{BARE}' or '{TOOL}')")
        recipes[name] = shlex.split(extra)
    if not recipes:
        raise ValueError("no tool row left: drop --no_default or add a --recipe")
    return recipes


def phase_epochs(budget: int, fine_tune_share: float) -> tuple[int, int]:
    """(epochs, fine_tune_epochs) of a budget: phase 2 gets its share, phase 1 at least one."""
    fine_tune = min(budget - 1, int(budget * fine_tune_share + 0.5))
    return budget - fine_tune, fine_tune


def tool_command(train_path: str, budget: int, args, extra: list[str], work: Path,
                 run_name: str) -> list[str]:
    """The trainer's command line for one row and budget (``extra`` last: it wins)."""
    epochs, fine_tune = phase_epochs(budget, args.fine_tune_share)
    size = str(args.image_size)
    return [sys.executable, str(ROOT / "train_professional_models.py"),
            "--data_path", train_path, "--model_type", "mobilenet", "--weights", "none",
            "--image_size", size, size, "--batch_size", str(args.batch_size),
            "--epochs", str(epochs), "--fine_tune_epochs", str(fine_tune),
            "--val_split", str(args.val_split), "--test_split", "0", "--seed", str(args.seed),
            "--output_dir", str(work / "runs"), "--log_dir", str(work / "tensorboard"),
            "--run_name", run_name, "--histogram_freq", "0", "--live_log", "none", *extra]


def run_tool(command: list[str], run_dir: Path):
    """Run the trainer as a user does; returns its best model and its summary."""
    import keras

    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise SystemExit(f"error: the trainer failed (exit code {result.returncode}): {last}")
    from pokedex_trainer.runs.store import RunStore

    store = RunStore(run_dir)
    summary, classes = store.summary(), store.class_names()
    model = keras.models.load_model(store.best_model(), compile=False)
    return model, summary, classes


def bare_keras_script(train_path: str, epochs: int, image_size: int = 64, batch_size: int = 32,
                      val_split: float = 0.2, seed: int = 42, dropout: float = 0.3):
    """What a Keras user writes: MobileNetV2 from scratch on the folder, no augmentation.

    The network is the tool's (inputs 0..255 scaled to [-1, 1], backbone, pooling, dropout,
    softmax head), so the rows differ by the recipe only. Returns (model, history dict).
    """
    import keras

    keras.utils.set_random_seed(seed)
    size = (image_size, image_size)
    folders = dict(validation_split=val_split, seed=seed, image_size=size,
                   batch_size=batch_size)
    train = keras.utils.image_dataset_from_directory(train_path, subset="training", **folders)
    val = keras.utils.image_dataset_from_directory(train_path, subset="validation", **folders)
    backbone = keras.applications.MobileNetV2(include_top=False, weights=None,
                                              input_shape=(*size, 3))
    for layer in backbone.layers:  # from scratch: the moving statistics must keep up
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.9
    inputs = keras.Input(shape=(*size, 3))
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(inputs)
    x = keras.layers.GlobalAveragePooling2D()(backbone(x))
    x = keras.layers.Dropout(dropout)(x)
    outputs = keras.layers.Dense(len(train.class_names), activation="softmax")(x)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.Adam(0.001),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    history = model.fit(train, validation_data=val, epochs=epochs, verbose=0)
    return model, history.history


def load_test_folder(test_path: str, image_size: int):
    """Every test image (0..255 float) and label, with the class names, in a fixed order."""
    import keras
    import numpy as np

    data = keras.utils.image_dataset_from_directory(
        test_path, image_size=(image_size, image_size), shuffle=False, batch_size=64)
    images, labels = zip(*[(x.numpy(), y.numpy()) for x, y in data])
    return np.concatenate(images), np.concatenate(labels), list(data.class_names)


def test_accuracy(model, images, labels) -> float:
    """Share of test images whose top class is right."""
    probabilities = model.predict(images, batch_size=64, verbose=0)
    return float((probabilities.argmax(axis=1) == labels).mean())


def format_table(results: list[dict], names: list[str]) -> str:
    """One line per budget: test accuracy of each row, side by side."""
    width = max([12] + [len(name) + 2 for name in names])
    lines = ["epochs" + "".join(f"{name:>{width}}" for name in names)]
    for budget in sorted({r["budget"] for r in results}):
        cells = {r["name"]: r["test_accuracy"] for r in results if r["budget"] == budget}
        lines.append(f"{budget:<6}" + "".join(
            f"{cells[name]:>{width}.3f}" if name in cells else f"{'-':>{width}}"
            for name in names))
    return "\n".join(lines)


def synthetic_test_folder(folder: Path, per_class: int, image_size: int) -> str:
    """New images of the demo's classes (data/demo is seed 0)."""
    from pokedex_trainer.data.synthetic import write_demo

    write_demo(folder, per_class=per_class, size=image_size, seed=1)
    return str(folder)


def main(argv=None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="pokedex_recipe_") as tmp:
        work = Path(args.work_dir or tmp)
        test_path = args.test_path or synthetic_test_folder(Path(tmp) / "test",
                                                            args.synthetic_test, args.image_size)
        images, labels, test_classes = load_test_folder(test_path, args.image_size)
        results = []
        names = ([] if args.no_bare else [BARE]) + list(args.recipes)
        for budget in args.budgets:
            if not args.no_bare:
                start = time.perf_counter()
                model, history = bare_keras_script(args.train_path, budget, args.image_size,
                                                   args.batch_size, args.val_split, args.seed)
                results.append({"name": BARE, "budget": budget,
                                "test_accuracy": test_accuracy(model, images, labels),
                                "train_accuracy": history["accuracy"][-1],
                                "val_accuracy": history["val_accuracy"][-1],
                                "seconds": time.perf_counter() - start})
                print(f"{BARE} {budget} epochs: test {results[-1]['test_accuracy']:.3f}",
                      flush=True)
            for name, extra in args.recipes.items():
                run_name = f"{name}_{budget}"
                command = tool_command(args.train_path, budget, args, extra, work, run_name)
                start = time.perf_counter()
                model, summary, classes = run_tool(command, work / "runs" / run_name)
                if classes != test_classes:
                    raise SystemExit(f"error: the test classes {test_classes} are not the "
                                     f"training classes {classes}")
                results.append({"name": name, "budget": budget, "args": extra,
                                "command": " ".join(command[1:]),
                                "test_accuracy": test_accuracy(model, images, labels),
                                "best_val_accuracy": float(summary["best_val_accuracy"]),
                                # its own test split, when the row keeps one (--test_split)
                                "own_test_accuracy": summary["test_accuracy"],
                                "best_epoch": summary["best_epoch"],
                                "epochs_run": summary["epochs_run"],
                                "seconds": time.perf_counter() - start})
                print(f"{name} {budget} epochs: test {results[-1]['test_accuracy']:.3f}",
                      flush=True)
    table = format_table(results, names)
    print(f"\ntest accuracy on {len(labels)} images ({len(test_classes)} classes), "
          f"MobileNetV2 from scratch, {args.image_size}x{args.image_size}\n{table}")
    if args.output:
        output = {"train_path": args.train_path, "test_path": args.test_path,
                  "synthetic_test": args.synthetic_test, "test_images": int(len(labels)),
                  "image_size": args.image_size, "batch_size": args.batch_size,
                  "val_split": args.val_split, "seed": args.seed,
                  "fine_tune_share": args.fine_tune_share,
                  "recipes": args.recipes, "results": results, "table": table,
                  "machine": platform.platform(), "python": platform.python_version()}
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(output, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
