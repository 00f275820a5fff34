"""Shared fixtures: tiny generated image folders, written by the tests themselves."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# The tiny test networks (tiny_keras, tiny_torch) are registered in this process and in every
# script a test starts (they inherit the environment).
os.environ["POKEDEX_TEST_MODELS"] = "1"
# The record of code-bearing files export.py wrote (evaluation/safe_loading.py), kept out of the home folder.
os.environ["POKEDEX_TRUST_STORE"] = os.path.join(tempfile.mkdtemp(prefix="pokedex_trust_"),
                                                 "trusted_models.jsonl")
# litert-torch's own environment (TFLite from PyTorch, exporters/tflite_env.py): in the clone,
# made once by the first test that needs it (slow set), never in the home folder.
os.environ.setdefault("POKEDEX_TFLITE_ENV", str(ROOT / ".venv-tflite"))
# The shared live log runs append to (training.log in the current folder for a user), kept out
# of the repository; tests of the live log name their own with --live_log.
os.environ["POKEDEX_LIVE_LOG"] = os.path.join(tempfile.mkdtemp(prefix="pokedex_live_"),
                                              "training.log")

# This test process loads both frameworks, which a user's run never does. Two orders matter:
# importing torchvision after TensorFlow has initialized segfaults (torch._dynamo -> triton),
# and TensorFlow must be loaded before the PyTorch backend, which otherwise switches TensorBoard
# to its TensorFlow-free stub for the whole process (see backends/torch/__init__.py).
try:
    import torchvision.models  # noqa: E402,F401
except ImportError:
    pass
try:
    import tensorflow  # noqa: E402,F401
except ImportError:
    pass

from pokedex_trainer.data.synthetic import write_dataset  # noqa: E402

TINY_CLASSES = ("Gato", "León", "Perro")


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """3 classes x 12 JPEGs of 48x48 (one class name with an accent)."""
    return write_dataset(tmp_path_factory.mktemp("tiny") / "training", classes=TINY_CLASSES,
                         per_class=12, size=(48, 48), seed=1)


@pytest.fixture
def dataset_copy(tiny_dataset, tmp_path) -> Path:
    """A private copy of the tiny dataset that a test may damage."""
    import shutil

    target = tmp_path / "training"
    shutil.copytree(tiny_dataset, target)
    return target


def tensorboard_tags(log_dir: Path) -> dict[str, set[str]]:
    """Tags per subdirectory (train, validation) of a run, whatever summary kind wrote them."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = {}
    for sub in ("train", "validation"):
        events = EventAccumulator(str(log_dir / sub), size_guidance={"tensors": 0, "scalars": 0,
                                                                     "histograms": 0,
                                                                     "images": 0}).Reload()
        found = events.Tags()
        tags[sub] = {t for kind in ("scalars", "tensors", "histograms", "images")
                     for t in found.get(kind, [])}
    return tags


KERAS_STYLE_SCALARS = {"epoch_loss", "epoch_accuracy", "epoch_top5_accuracy"}


def tiny_run_argv(data: Path, out: Path, model_type: str, *extra: str,
                  run_name: str | None = None, epochs: int = 2, batch_size: int = 8
                  ) -> list[str]:
    """The arguments of a tiny training run: weights none, 32 px, ``epochs`` epochs and no
    fine-tuning, no loader workers, no histograms, outputs in ``out``/runs and ``out``/tb;
    named ``run_name`` (None: the trainer names it), then ``extra`` (a later option wins)."""
    argv = ["--data_path", str(data), "--model_type", model_type, "--weights", "none",
            "--image_size", "32", "32", "--batch_size", str(batch_size), "--epochs", str(epochs),
            "--fine_tune_epochs", "0", "--workers", "0", "--histogram_freq", "0",
            "--output_dir", str(out / "runs"), "--log_dir", str(out / "tb")]
    if run_name is not None:
        argv += ["--run_name", run_name]
    return argv + list(extra)


def train_tiny_run(data: Path, out: Path, model_type: str, *extra: str) -> Path:
    """Train a small run in this process (weights none, 32 px, 2 epochs unless overridden)."""
    from pokedex_trainer.cli.commands import run_main, train_main

    argv = tiny_run_argv(data, out, model_type, *extra, run_name=f"{model_type}_tiny")
    assert run_main(train_main, argv) == 0
    return out / "runs" / f"{model_type}_tiny"


@pytest.fixture(scope="session")
def shared_runs(tmp_path_factory) -> Path:
    """Output root of the session's shared runs: <root>/runs and one TensorBoard root, <root>/tb."""
    return tmp_path_factory.mktemp("shared")


@pytest.fixture(scope="session")
def keras_run(tiny_dataset, shared_runs) -> Path:
    """A finished run of the tiny Keras network on the tiny dataset, trained by the real
    trainer and shared by the report, export and TensorBoard tests."""
    return train_tiny_run(tiny_dataset, shared_runs, "tiny_keras", "--histogram_freq", "1",
                          "--epochs", "4", "--keep_resume")  # tests of resume files read it


@pytest.fixture(scope="session")
def torch_run(tiny_dataset, shared_runs) -> Path:
    """A finished run of the tiny PyTorch network on the tiny dataset."""
    return train_tiny_run(tiny_dataset, shared_runs, "tiny_torch", "--histogram_freq", "1",
                          "--epochs", "4", "--keep_resume")


@pytest.fixture(scope="session")
def keras_exports(keras_run) -> Path:
    """The Keras run after ``export.py --run_dir`` wrote every Keras format."""
    from pokedex_trainer.cli.commands import export_main, run_main

    assert run_main(export_main, ["--run_dir", str(keras_run), "--check_images", "12",
                                  "--calibration_images", "16"]) == 0
    return keras_run


# Runs a script and sends a signal to its own process group at one chosen moment of a save:
# just before (or after) the rename that commits a file. Every writer of the tool commits with
# os.replace, so this reaches any moment of any save, whatever the speed of the machine.
SIGNAL_AT = """
import os, signal, sys
sys.path.insert(0, {root!r})
real_replace, seen = os.replace, []
def replace(src, dst, *args, **kwargs):
    name = (os.path.basename(str(src)), os.path.basename(str(dst)))
    seen.append(name)
    if not {after} and ({condition}):
        {action}
    result = real_replace(src, dst, *args, **kwargs)
    if {after} and ({condition}):
        {action}
    return result
os.replace = replace
import runpy
sys.argv = {argv!r}
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def nth_commit(filename: str, n: int) -> str:
    """A SIGNAL_AT condition: the n-th rename onto ``filename``."""
    return f"name[1] == {filename!r} and sum(1 for s in seen if s[1] == {filename!r}) == {n}"


def run_with_signal_at(cwd: Path, argv: list[str], condition: str, signal: str = "SIGKILL",
                       after: bool = False, action: str | None = None
                       ) -> subprocess.CompletedProcess:
    """Run ``argv`` (a script and its arguments) in a new session and send ``signal`` to its
    process group (the script and its workers, as a terminal's Ctrl-C does) at ``condition``;
    or run ``action`` there instead (a Python statement, such as raising an OSError)."""
    action = action or f"os.killpg(os.getpgid(0), signal.{signal})"
    code = SIGNAL_AT.format(root=str(ROOT), argv=[str(a) for a in argv], condition=condition,
                            action=action, after=after)
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True,
                          text=True, timeout=600, start_new_session=True)


# A SIGNAL_AT action prefix: print the trainer's pid and its shared-memory segments first.
SHOW_SEGMENTS = ("print('TRAINER', os.getpid(), sorted(n for n in os.listdir('/dev/shm') "
                 "if n.startswith('pokedex_%d_' % os.getpid())), flush=True); ")


def shown_segments(stdout: str) -> tuple[int, list[str]]:
    """(pid, segment names) printed by a SHOW_SEGMENTS action."""
    import ast

    line = next(line for line in stdout.splitlines() if line.startswith("TRAINER "))
    pid, names = line[len("TRAINER "):].split(" ", 1)
    return int(pid), ast.literal_eval(names)


def live_segments(pid: int) -> list[str]:
    return sorted(n for n in os.listdir("/dev/shm") if n.startswith(f"pokedex_{pid}_"))


def force_unknown_rule(run: Path, **changes) -> dict:
    """Set the 'unknown' rule evaluate.py saved in ``run``'s calibration.json (for the run and
    every model of it) to another score or threshold, as if it had chosen that one; returns the
    rule. The tests of a score that the tiny runs do not choose by themselves use it."""
    import json

    from pokedex_trainer.evaluation import unknown as scoring

    path = run / "calibration.json"
    data = json.loads(path.read_text("utf-8"))
    rule = {**data["unknown"], **changes}
    if rule["score"] in scoring.GRAPH_SCORES:
        rule.update({"output": scoring.SCORE_OUTPUT, "rule": scoring.RULE_TEXT[rule["score"]]})
    if rule["score"] in scoring.BANK_SCORES:
        rule["k"] = scoring.KNN_K
    data["unknown"] = rule
    for entry in data["models"].values():
        entry["unknown"] = rule
    path.write_text(json.dumps(data), "utf-8")
    return rule
