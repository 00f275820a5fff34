"""Keras networks on every Keras 3 backend: the choice, the feed, a run on PyTorch."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys

import numpy as np

import pytest

from conftest import KERAS_STYLE_SCALARS, ROOT, tensorboard_tags
from pokedex_trainer.errors import UserError
from pokedex_trainer.backends.keras import select


@pytest.fixture
def machine(monkeypatch):
    """A pretend machine: which backends are installed and which see a GPU."""
    state = {"installed": {"tensorflow", "torch", "jax"}, "gpu": set()}
    monkeypatch.setattr(select, "installed", lambda b: b in state["installed"])
    monkeypatch.setattr(select, "maybe_gpu", lambda: bool(state["gpu"]))
    monkeypatch.delenv("KERAS_BACKEND", raising=False)
    return state


def _choose(state, requested="auto"):
    return select.choose(requested, probe=lambda b: b in state["gpu"])


def test_auto_picks_tensorflow_then_the_fastest_measured_for_a_gpu_else_tensorflow(machine):
    assert _choose(machine)[0] == "tensorflow"  # no GPU: TensorFlow on the CPU
    machine["gpu"] = {"torch"}  # native Windows with an NVIDIA GPU, or a Mac
    backend, why = _choose(machine)
    assert backend == "torch" and "PyTorch sees a CUDA or MPS device" in why
    machine["gpu"] = {"jax"}
    assert _choose(machine)[0] == "jax"
    machine["gpu"] = {"torch", "jax"}  # no TensorFlow GPU: JAX stepped 2,053 img/s, torch 432
    backend, why = _choose(machine)
    assert backend == "jax" and "TensorFlow sees no GPU" in why and "2053 img/s" in why
    machine["gpu"] = {"tensorflow", "torch"}  # Linux with a GPU
    assert _choose(machine)[0] == "tensorflow"
    machine["installed"], machine["gpu"] = {"torch"}, set()  # a machine without TensorFlow
    assert _choose(machine)[0] == "torch"


def test_flag_wins_over_the_environment_which_wins_over_auto(machine, monkeypatch):
    monkeypatch.setenv("KERAS_BACKEND", "jax")
    assert _choose(machine) == ("jax", "from the environment variable KERAS_BACKEND")
    assert _choose(machine, "torch")[0] == "torch"


def test_an_absent_backend_is_a_one_line_error_with_the_install_command(machine):
    machine["installed"] = {"tensorflow", "torch"}
    with pytest.raises(UserError, match="jax is not installed; install it with: python -m pip"):
        _choose(machine, "jax")


def test_an_absent_backend_on_the_command_line_is_exit_code_2(machine, tmp_path, tiny_dataset,
                                                               capsys):
    from pokedex_trainer.cli.commands import run_main, train_main

    machine["installed"] = {"tensorflow"}
    assert run_main(train_main, ["--data_path", str(tiny_dataset), "--model_type", "tiny_keras",
                                 "--keras_backend", "torch", "--output_dir",
                                 str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: --keras_backend torch: torch is not installed")
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_a_process_running_keras_on_one_backend_refuses_another():
    import keras

    other = "torch" if keras.backend.backend() != "torch" else "tensorflow"
    with pytest.raises(UserError, match="a new process"):
        select.activate(other)


def test_every_backend_is_fed_the_same_augmented_batches(tiny_dataset):
    from pokedex_trainer.data.scan import scan_dataset
    from pokedex_trainer.data.feeding import BatchLoader, BatchSource
    from pokedex_trainer.backends.keras.keras_backends import LoaderFeed

    index = scan_dataset(tiny_dataset)
    source = BatchSource(index.root, index.samples, (32, 32), training=True, seed=3)
    loader = BatchLoader(source, 8, shuffle=True, seed=3)
    feed = LoaderFeed(loader, class_weights=[1.0, 2.0, 3.0])
    from pokedex_trainer.backends.keras.keras_backends import KerasOnTensorFlow

    tf_loader = BatchLoader(source, 8, shuffle=True, seed=3)
    tf_feed = KerasOnTensorFlow().feed(tf_loader, (32, 32), [1.0, 2.0, 3.0])
    for epoch in (0, 1):
        feed.epoch = epoch
        tf_loader.epoch = epoch
        expected = list(BatchLoader(source, 8, shuffle=True, seed=3).iter_epoch(epoch))
        got = [feed[i] for i in range(len(feed))]
        feed.on_epoch_end()
        on_tf = [tuple(np.asarray(t) for t in item) for item in tf_feed]
        assert len(got) == len(expected) == len(on_tf)
        for (images, labels, weights), batch, tf_batch in zip(got, expected, on_tf):
            assert images.dtype == np.float32
            np.testing.assert_array_equal(images, batch.images.astype(np.float32))
            np.testing.assert_array_equal(labels, batch.labels)
            np.testing.assert_array_equal(weights, np.array([1.0, 2.0, 3.0])[batch.labels])
            for ours, theirs in zip((images, labels, weights), tf_batch):  # the same on TF
                np.testing.assert_array_equal(ours, theirs)


TRAIN_AND_REPORT = """
import sys
sys.path.insert(0, {root!r})
from pokedex_trainer.cli.commands import run_main, train_main
code = run_main(train_main, {argv!r})
import keras
print("EXIT", code, "BACKEND", keras.backend.backend())
"""


def _torch_backend_run(tmp_path, data, model_type, *extra) -> subprocess.CompletedProcess:
    argv = ["--data_path", str(data), "--model_type", model_type, "--weights", "none",
            "--image_size", "32", "32", "--batch_size", "8", "--epochs", "2",
            "--fine_tune_epochs", "1", "--workers", "0", "--keras_backend", "torch",
            "--output_dir", str(tmp_path / "runs"), "--log_dir", str(tmp_path / "tb"),
            "--run_name", "on_torch", *extra]
    return subprocess.run([sys.executable, "-c", TRAIN_AND_REPORT.format(root=str(ROOT),
                                                                          argv=argv)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)


@pytest.mark.slow  # 22 s: the default set keeps the TensorFlow backend's pipeline test
def test_a_keras_network_trains_exports_and_evaluates_on_the_torch_backend(
        tmp_path, tiny_dataset, keras_run, shared_runs):
    result = _torch_backend_run(tmp_path, tiny_dataset, "tiny_keras", "--export", "onnx,tflite")
    assert "EXIT 0" in result.stdout, result.stderr[-3000:]
    assert "EXIT 0 BACKEND torch" in result.stdout
    run = tmp_path / "runs" / "on_torch"
    assert json.loads((run / "config.json").read_text("utf-8"))["keras_backend"] == "torch"
    with open(tmp_path / "runs" / "experiments.csv", encoding="utf-8") as handle:
        row = list(csv.DictReader(handle))[0]
    assert row["keras_backend"] == "torch" and row["status"] == "completed"
    summary = json.loads((run / "summary.json").read_text("utf-8"))
    assert "Keras on torch" in summary["environment"]["device"]
    exports = json.loads((run / "exports.json").read_text("utf-8"))["files"]
    assert {e["file"] for e in exports if e["passed"]} >= {"tiny_keras_best.onnx",
                                                           "tiny_keras_best_int8.tflite"}
    # the same TensorBoard tags as the TensorFlow run of the same network
    on_torch = tensorboard_tags(tmp_path / "tb" / "on_torch")
    on_tf = tensorboard_tags(shared_runs / "tb" / keras_run.name)
    assert on_torch == on_tf and KERAS_STYLE_SCALARS <= on_torch["validation"]
    # a .keras file written on the torch backend evaluates here, on TensorFlow
    from pokedex_trainer.cli.commands import evaluate_main, run_main

    assert run_main(evaluate_main, ["--run_dir", str(run), "--latency_runs", "2"]) == 0


@pytest.mark.slow
@pytest.mark.parametrize("model_type", ["mobilenet", "efficientnet"])
def test_the_real_keras_networks_train_resume_export_and_evaluate_on_torch(tmp_path,
                                                                          tiny_dataset,
                                                                          model_type):
    from conftest import nth_commit, run_with_signal_at

    argv = [ROOT / "train_professional_models.py", "--data_path", tiny_dataset,
            "--model_type", model_type, "--weights", "none", "--image_size", "32", "32",
            "--batch_size", "8", "--epochs", "2", "--fine_tune_epochs", "1", "--workers", "0",
            "--keras_backend", "torch", "--histogram_freq", "0", "--output_dir",
            tmp_path / "runs", "--log_dir", tmp_path / "tb", "--run_name", "run"]
    killed = run_with_signal_at(tmp_path, argv, nth_commit("state.json", 1), after=True)
    assert killed.returncode == -9, killed.stderr[-2000:]
    resumed = subprocess.run([sys.executable, str(ROOT / "train_professional_models.py"),
                              "--resume", str(tmp_path / "runs" / "run")], cwd=tmp_path,
                             capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    with open(tmp_path / "runs" / "run" / "history.csv", encoding="utf-8") as handle:
        assert [r["epoch"] for r in csv.DictReader(handle)] == ["1", "2", "3"]
    log = (tmp_path / "runs" / "run" / "training.log").read_text("utf-8")
    assert log.count("Keras backend: torch") == 2  # the resumed run kept its backend
    # EfficientNetB7 -> ONNX (tf2onnx) peaks above 20 GB, near all of this 24 GB machine: the
    # SavedModel export checks the same path from a torch-trained .keras at a fraction of it
    formats = "onnx" if model_type == "mobilenet" else "savedmodel"
    for script, extra in (("export.py", ["--formats", formats, "--check_images", "6"]),
                          ("evaluate.py", ["--latency_runs", "2"])):
        done = subprocess.run([sys.executable, str(ROOT / script), "--run_dir",
                               str(tmp_path / "runs" / "run"), *extra], cwd=tmp_path,
                              capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.slow
def test_every_training_option_works_on_the_torch_backend(tmp_path, tiny_dataset):
    result = _torch_backend_run(tmp_path, tiny_dataset, "tiny_keras", "--batch_size", "auto",
                                "--memory_limit_mb", "3000", "--mixed_precision",
                                "--deterministic", "--class_weight", "balanced", "--sampler",
                                "balanced", "--save_every", "1")
    assert "EXIT 0 BACKEND torch" in result.stdout, result.stderr[-3000:]
    run = tmp_path / "runs" / "on_torch"
    config = json.loads((run / "config.json").read_text("utf-8"))
    assert isinstance(config["batch_size"], int) and config["mixed_precision"]
    assert (run / "tiny_keras_epoch_003.keras").exists()


@pytest.mark.parametrize("gpu, model_type, expected", [
    (set(), "mobilenet", "keras"),                    # no GPU: the guide's pairing
    ({"tensorflow", "torch"}, "mobilenet", "keras"),  # TensorFlow sees it: Keras at speed
    ({"torch"}, "mobilenet", "pytorch"),              # native Windows: the torchvision twin
    ({"torch"}, "efficientnet", "pytorch"),
    ({"torch", "jax"}, "efficientnet", "pytorch"),    # JAX measured 0.25x: still PyTorch
    ({"jax"}, "mobilenet", "keras"),                  # PyTorch has no GPU: Keras on JAX
    ({"torch"}, "resnet", "pytorch"),
    (set(), "resnet", "pytorch"),
])
def test_framework_auto_takes_the_fast_route_on_this_machine(machine, gpu, model_type,
                                                             expected):
    from pokedex_trainer.config import TrainConfig
    from pokedex_trainer.backends.framework_choice import pick_training_framework

    machine["gpu"] = gpu
    framework, note = pick_training_framework(TrainConfig(model_type=model_type),
                                              probe=lambda b: b in gpu,
                                              maybe_gpu=lambda: bool(gpu))
    assert framework == expected
    switched = expected != ("pytorch" if model_type == "resnet" else "keras")
    assert (note is not None) == switched
    if switched:
        assert "--framework keras" in note and "0.19x" in note


@pytest.mark.parametrize("pinned", [{"keras_backend": "torch"}, {"weights": "my.weights.h5"}])
def test_framework_auto_keeps_keras_when_the_user_asked_for_keras_things(machine, pinned):
    from pokedex_trainer.config import TrainConfig
    from pokedex_trainer.backends.framework_choice import pick_training_framework

    config = TrainConfig(model_type="mobilenet", **pinned)
    assert pick_training_framework(config, probe=lambda b: b == "torch",
                                   maybe_gpu=lambda: True) == ("keras", None)


@pytest.mark.parametrize("gpu", [set(), {"tensorflow"}])
def test_framework_auto_takes_the_framework_of_a_weights_file(machine, gpu):
    from pokedex_trainer.config import TrainConfig
    from pokedex_trainer.backends.framework_choice import pick_training_framework

    framework, note = pick_training_framework(
        TrainConfig(model_type="mobilenet", weights="offline/mobilenet_v2-b0353104.PTH"),
        probe=lambda b: b in gpu, maybe_gpu=lambda: bool(gpu))
    assert framework == "pytorch" and "--weights" in note and "PyTorch" in note
    assert pick_training_framework(TrainConfig(model_type="resnet", weights="r.weights.h5"),
                                   probe=lambda b: b in gpu,
                                   maybe_gpu=lambda: bool(gpu))[0] == "keras"


@pytest.mark.parametrize("options, wanted", [
    ({"model_type": "mobilenet", "framework": "pytorch", "keras_backend": "jax"},
     "--keras_backend jax is for networks trained on Keras"),
    ({"model_type": "resnet", "framework": "auto", "keras_backend": "torch"},
     "add --framework keras"),
    ({"model_type": "mobilenet", "framework": "keras", "weights": "w.pth"},
     "--framework keras does not match --weights 'w.pth', a PyTorch state dict"),
    ({"model_type": "efficientnet", "framework": "pytorch", "weights": "w.weights.h5"},
     "use --framework keras"),
])
def test_options_of_the_other_framework_are_one_line_before_training(machine, options, wanted):
    from pokedex_trainer.config import TrainConfig
    from pokedex_trainer.errors import UserError
    from pokedex_trainer.runs.opening import settle_framework

    machine["gpu"] = set()
    with pytest.raises(UserError, match=re.escape(wanted)):
        settle_framework(TrainConfig(**options), probe=lambda b: False,
                         maybe_gpu=lambda: False)
