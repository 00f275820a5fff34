"""Keras networks and the Keras trainer, end to end on tiny generated data."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from conftest import KERAS_STYLE_SCALARS, tensorboard_tags  # noqa: E402
from pokedex_trainer.cli.commands import run_main, train_main  # noqa: E402
from pokedex_trainer.errors import UserError  # noqa: E402
from pokedex_trainer.backends.keras import keras_networks as kmodels  # noqa: E402
from pokedex_trainer.networks import get_spec  # noqa: E402
from pokedex_trainer.core.phases import BATCHNORM, WEIGHTED, Phase, layers_to_unfreeze  # noqa: E402


@pytest.fixture(scope="module")
def mobilenet_weights(tmp_path_factory) -> Path:
    """A backbone weights file saved by the test: stands in for downloaded ImageNet weights."""
    path = tmp_path_factory.mktemp("weights") / "mobilenet_v2_notop_32.weights.h5"
    backbone = kmodels.build_backbone(get_spec("mobilenet"), (32, 32), "none")
    backbone.save_weights(path)
    return path


def _train(tmp_path, data, *extra) -> Path:
    argv = ["--data_path", str(data), "--output_dir", str(tmp_path / "runs"),
            "--log_dir", str(tmp_path / "tb"), "--image_size", "32", "32", "--batch_size", "8",
            "--workers", "0", "--val_split", "0.25", "--test_split", "0.25", *extra]
    assert run_main(train_main, argv) == 0
    runs = sorted(p for p in (tmp_path / "runs").iterdir() if p.is_dir())
    return runs[-1]


def _history(run_dir: Path) -> list[dict]:
    with open(run_dir / "history.csv", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_mobilenet_receives_minus_one_to_one():
    model = kmodels.build_model(get_spec("mobilenet"), 3, (32, 32), "none", 0.2)
    normalized = keras.Model(model.input, model.get_layer("normalize_minus_one_one").output)
    out = np.asarray(normalized(np.array([[[[0, 127.5, 255]] * 32] * 32], dtype="float32")))
    assert np.allclose(out[0, 0, 0], [-1, 0, 1])


def test_efficientnet_rescales_0_255_itself():
    backbone = kmodels.build_backbone(get_spec("efficientnet"), (32, 32), "none")
    rescale = [layer for layer in backbone.layers
               if isinstance(layer, keras.layers.Rescaling)][0]
    assert np.isclose(float(np.ravel(rescale.scale)[0]), 1 / 255)
    model = kmodels.build_model(get_spec("efficientnet"), 3, (32, 32), "none", 0.2)
    assert not any(l.name.startswith("normalize") for l in model.layers)  # not twice


def test_phase_one_trains_only_the_head_and_phase_two_the_last_n(mobilenet_weights):
    model = kmodels.build_model(get_spec("mobilenet"), 3, (32, 32), str(mobilenet_weights), 0.2)
    kmodels.apply_phase(model, Phase("head", 1, 1e-3, "head"))
    head = model.get_layer(kmodels.HEAD_NAME)
    assert {w.path for w in model.trainable_weights} == {w.path for w in head.weights}

    kmodels.apply_phase(model, Phase("fine_tune", 1, 1e-4, "last_n", 12))
    backbone = model.get_layer(kmodels.BACKBONE_NAME)
    kinds = kmodels.layer_kinds(backbone)
    expected = {backbone.layers[i].name for i in layers_to_unfreeze(kinds, 12)}
    trainable = {layer.name for layer in backbone.layers if layer.trainable and layer.weights}
    assert trainable == expected and len(expected) == 12
    assert not any(layer.trainable for layer, kind in zip(backbone.layers, kinds)
                   if kind == BATCHNORM)
    assert all(kind == WEIGHTED for layer, kind in zip(backbone.layers, kinds)
               if layer.name in expected)


def test_scratch_backbone_batchnorm_follows_the_weights():
    model = kmodels.build_model(get_spec("mobilenet"), 3, (32, 32), "none", 0.2)
    momenta = {layer.momentum for layer in model.get_layer(kmodels.BACKBONE_NAME).layers
               if isinstance(layer, keras.layers.BatchNormalization)}
    assert momenta == {kmodels.SCRATCH_BN_MOMENTUM}


def test_imagenet_download_failure_is_a_clear_message(monkeypatch):
    from keras.src.utils import file_utils

    def offline(*args, **kwargs):
        raise Exception("URL fetch failure on https://storage.googleapis.com/...: None -- "
                        "[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(file_utils, "get_file", offline)
    with pytest.raises(UserError, match="could not get the ImageNet weights of MobileNetV2.*"
                                        "--weights PATH.*--weights none"):
        kmodels.build_backbone(get_spec("mobilenet"), (96, 96), "imagenet")


def test_weights_file_that_does_not_fit_is_a_clear_message(tmp_path):
    bad = tmp_path / "other.weights.h5"
    kmodels.build_model(get_spec("mobilenet"), 2, (32, 32), "none", 0.1).save_weights(bad)
    with pytest.raises(UserError, match="could not load --weights") as error:
        kmodels.build_backbone(get_spec("mobilenet"), (32, 32), str(bad))
    assert "\n" not in str(error.value) and not str(error.value).endswith(":")  # a whole line


def test_mobilenet_run_writes_every_output(tmp_path, tiny_dataset, mobilenet_weights):
    run_dir = _train(tmp_path, tiny_dataset, "--model_type", "mobilenet", "--weights",
                     str(mobilenet_weights), "--epochs", "2", "--fine_tune_epochs", "1",
                     "--fine_tune_layers", "5", "--workers", "1", "--run_name", "mobile")
    names = {p.name for p in run_dir.iterdir()}
    assert {"mobilenet_v2_best.keras", "class_names.json", "config.json", "split_manifest.json",
            "history.csv", "training.log", "summary.json"} <= names
    assert any(n.startswith("mobilenet_v2_final_") and n.endswith(".keras") for n in names)
    assert not [n for n in names if n.startswith(".") and n != ".lock"]  # no temporary file
    assert json.loads((run_dir / "class_names.json").read_text("utf-8")) == ["Gato", "León",
                                                                             "Perro"]
    config = json.loads((run_dir / "config.json").read_text("utf-8"))
    assert config["model_type"] == "mobilenet" and config["image_size"] == [32, 32]
    history = _history(run_dir)
    assert [r["phase"] for r in history] == ["head", "head", "fine_tune"]
    assert float(history[2]["learning_rate"]) == pytest.approx(1e-4)
    log = (run_dir / "training.log").read_text("utf-8")
    assert "only 3 classes" in log and "fewer than 100 images" in log and "below the recommended"\
        in log
    rows = list(csv.DictReader(open(tmp_path / "runs" / "experiments.csv", encoding="utf-8")))
    assert len(rows) == 1 and rows[0]["run_name"] == "mobile"
    assert rows[0]["status"] == "completed" and rows[0]["epochs_run"] == "3"
    assert 0 <= float(rows[0]["best_val_accuracy"]) <= 1 and rows[0]["test_accuracy"]

    model = keras.models.load_model(run_dir / "mobilenet_v2_best.keras")
    probabilities = model.predict(np.full((2, 32, 32, 3), 200.0, "float32"), verbose=0)
    assert probabilities.shape == (2, 3) and np.allclose(probabilities.sum(axis=1), 1, atol=1e-5)

    _assert_tensorboard(tmp_path / "tb" / "mobile")


def _assert_tensorboard(log_dir: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = tensorboard_tags(log_dir)
    assert KERAS_STYLE_SCALARS | {"epoch_learning_rate", "augmented_samples"} <= tags["train"]
    assert any(t.endswith("/histogram") for t in tags["train"])
    assert any(t.startswith("gradients/") for t in tags["train"])
    assert KERAS_STYLE_SCALARS <= tags["validation"]
    val = EventAccumulator(str(log_dir / "validation"), size_guidance={"tensors": 0}).Reload()
    assert len(val.Tensors("epoch_accuracy")) == 3  # flushed every epoch


@pytest.mark.slow  # a Keras pipeline; the core's own test is in the default set
def test_weights_file_is_loaded_and_phase_one_leaves_the_backbone_untouched(
        tmp_path, tiny_dataset, mobilenet_weights):
    run_dir = _train(tmp_path, tiny_dataset, "--model_type", "mobilenet", "--weights",
                     str(mobilenet_weights), "--epochs", "2", "--fine_tune_epochs", "0")
    expected = kmodels.build_backbone(get_spec("mobilenet"), (32, 32), str(mobilenet_weights))
    trained = keras.models.load_model(next(run_dir.glob("mobilenet_v2_final_*.keras")))
    backbone = trained.get_layer(kmodels.BACKBONE_NAME)
    for a, b in zip(expected.weights, backbone.weights):
        assert np.array_equal(np.asarray(a), np.asarray(b)), a.path
    assert [r["phase"] for r in _history(run_dir)] == ["head", "head"]


def test_early_stopping_and_reduce_lr_fire_on_a_plateau(tmp_path, tiny_dataset):
    # A learning rate of 1e-6 barely moves the weights: validation metrics stay flat.
    run_dir = _train(tmp_path, tiny_dataset, "--model_type", "tiny_keras", "--weights",
                     "none", "--epochs", "10", "--fine_tune_epochs", "0",
                     "--learning_rate", "1e-6", "--patience", "3", "--lr_patience", "1",
                     "--lr_factor", "0.5")
    history = _history(run_dir)
    assert len(history) == 4  # best at epoch 1, then 3 epochs without improvement
    rates = [float(r["learning_rate"]) for r in history]
    assert rates[-1] < rates[0]
    assert "early stopping" in (run_dir / "training.log").read_text("utf-8")


@pytest.mark.slow
def test_efficientnet_seed_command_runs_on_small_images(tmp_path, tiny_dataset):
    run_dir = _train(tmp_path, tiny_dataset, "--model_type", "efficientnet", "--epochs", "1",
                     "--batch_size", "16", "--learning_rate", "0.001", "--weights", "none",
                     "--fine_tune_epochs", "0", "--histogram_freq", "0")
    names = {p.name for p in run_dir.iterdir()}
    assert "efficientnet_b7_best.keras" in names
    assert any(n.startswith("efficientnet_b7_final_") for n in names)
    assert len(_history(run_dir)) == 1
    model = keras.models.load_model(run_dir / "efficientnet_b7_best.keras")
    assert model.count_params() > 60_000_000  # the real B7, not a stand-in


@pytest.mark.slow  # a Keras pipeline; the core's own test is in the default set
def test_nan_loss_stops_the_run_and_keeps_no_broken_model(tmp_path, tiny_dataset):
    argv = ["--data_path", str(tiny_dataset), "--output_dir", str(tmp_path / "runs"),
            "--log_dir", str(tmp_path / "tb"), "--image_size", "32", "32", "--batch_size", "8",
            "--workers", "0", "--val_split", "0.25", "--test_split", "0.25",
            "--model_type", "mobilenet", "--weights", "none", "--epochs", "6",
            "--fine_tune_epochs", "2", "--learning_rate", "1e30", "--histogram_freq", "0"]
    assert run_main(train_main, argv) == 1
    run_dir = next(p for p in (tmp_path / "runs").iterdir() if p.is_dir())
    rows = list(csv.DictReader(open(tmp_path / "runs" / "experiments.csv", encoding="utf-8")))
    assert rows[0]["status"] == "nan_loss"
    assert int(rows[0]["epochs_run"]) < 8
    for model_file in run_dir.glob("*.keras"):  # whatever was kept is a usable model
        model = keras.models.load_model(model_file)
        assert np.isfinite(model.predict(np.full((1, 32, 32, 3), 100.0), verbose=0)).all()
    assert "loss is nan" in (run_dir / "training.log").read_text("utf-8").lower()
