"""--framework: every network in both frameworks, through the one training core.

EfficientNetB7 and MobileNetV2 as torchvision networks, ResNet152 as keras.applications';
each with its own normalization inside, the same freeze rule, run files, resume, exports and
evaluation; and --weights pointing at a local weights file.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import ROOT, nth_commit, run_with_signal_at, train_tiny_run  # noqa: E402
from pokedex_trainer.cli.commands import evaluate_main, export_main, run_main, train_main
from pokedex_trainer.cli.parsers import parse_train_args
from pokedex_trainer.config import TrainConfig  # noqa: E402
from pokedex_trainer.core.phases import Phase, layers_to_unfreeze  # noqa: E402
from pokedex_trainer.errors import UserError  # noqa: E402
from pokedex_trainer.networks import IMAGENET_MEAN, IMAGENET_STD, get_spec  # noqa: E402


@pytest.fixture(scope="module")
def tmodels():
    from pokedex_trainer.backends.torch import torch_networks as models

    return models


@pytest.mark.parametrize("model_type, given, framework, arch, extension", [
    ("efficientnet", "auto", "keras", "efficientnet_b7", ".keras"),
    ("mobilenet", "auto", "keras", "mobilenet_v2", ".keras"),
    ("resnet", "auto", "pytorch", "resnet152", ".pth"),
    ("efficientnet", "pytorch", "pytorch", "efficientnet_b7", ".pth"),
    ("mobilenet", "pytorch", "pytorch", "mobilenet_v2", ".pth"),
    ("resnet", "keras", "keras", "resnet152", ".keras"),
])
def test_framework_resolves_once_to_a_route(model_type, given, framework, arch, extension):
    config = parse_train_args(["--model_type", model_type, "--framework", given]).resolved()
    assert config.framework == framework  # recorded in the run's config.json as resolved
    assert (config.spec.arch, config.spec.model_extension) == (arch, extension)
    assert config.spec.image_size == get_spec(model_type).image_size  # the network's defaults


def test_a_network_without_that_framework_is_a_one_line_error():
    with pytest.raises(UserError, match="tiny_torch has no keras network"):
        TrainConfig(model_type="tiny_torch", framework="keras").resolved()


def _imagenet_normalized(model):
    mean_pixel = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255
    assert torch.allclose(model.normalize(mean_pixel.expand(1, 3, 4, 4)),
                          torch.zeros(1, 3, 4, 4), atol=1e-5)
    white = model.normalize(torch.full((1, 3, 1, 1), 255.0)).flatten()
    expected = (1 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    assert torch.allclose(white, expected, atol=1e-5)


def _freeze_rule_holds(tmodels, model, n=5):
    tmodels.apply_phase(model, Phase("head", 1, 1e-3, "head"))
    assert {n for n, p in model.named_parameters() if p.requires_grad} == \
        {"head.weight", "head.bias"}
    tmodels.apply_phase(model, Phase("fine_tune", 1, 1e-4, "last_n", n))
    layers = tmodels.backbone_layers(model)
    expected = {f"backbone.{layers[i][0]}"
                for i in layers_to_unfreeze([kind for _, _, kind in layers], n)}
    trainable = {name.rsplit(".", 1)[0] for name, p in model.named_parameters()
                 if p.requires_grad and not name.startswith("head.")}
    assert trainable == expected and len(expected) == n


def test_torch_mobilenet_builds_normalizes_and_freezes_like_the_others(tmodels):
    from torchvision.models import MobileNetV2

    model = tmodels.build_model(get_spec("mobilenet", "pytorch"), 3, "none", 0.2)
    assert isinstance(model.backbone, MobileNetV2) and model.head.in_features == 1280
    _imagenet_normalized(model)
    probabilities = model.eval().probabilities(torch.full((2, 3, 32, 32), 128.0))
    assert probabilities.shape == (2, 3)
    assert torch.allclose(probabilities.sum(dim=1), torch.ones(2))
    _freeze_rule_holds(tmodels, model)
    # TensorBoard's activation histograms: the ends of the stages at strides 4, 8, 16, 32
    stages = tmodels.stage_activations(model, torch.rand(1, 3, 64, 64) * 255, "mobilenet")
    assert [s.shape[1:] for s in stages] == [(24, 16, 16), (32, 8, 8), (96, 4, 4),
                                             (1280, 2, 2)]


@pytest.mark.slow
def test_torch_efficientnet_b7_builds_normalizes_and_freezes_like_the_others(tmodels):
    from torchvision.models import EfficientNet

    model = tmodels.build_model(get_spec("efficientnet", "pytorch"), 3, "none", 0.2)
    assert isinstance(model.backbone, EfficientNet) and model.head.in_features == 2560
    _imagenet_normalized(model)
    assert model.eval().probabilities(torch.full((1, 3, 32, 32), 128.0)).shape == (1, 3)
    _freeze_rule_holds(tmodels, model)


def test_caffe_normalization_is_resnets_preprocessing_and_loads_in_safe_mode(tmp_path):
    import keras
    from keras.applications.resnet import preprocess_input

    from pokedex_trainer.backends.keras.normalization import CaffeNormalization

    inputs = keras.Input((8, 8, 3))
    model = keras.Model(inputs, CaffeNormalization(name="normalize_caffe")(inputs))
    pixels = np.random.default_rng(0).uniform(0, 255, (2, 8, 8, 3)).astype("float32")
    expected = preprocess_input(pixels.copy())
    np.testing.assert_allclose(keras.ops.convert_to_numpy(model(pixels)), expected, atol=1e-4)
    model.save(tmp_path / "caffe.keras")
    loaded = keras.models.load_model(tmp_path / "caffe.keras", safe_mode=True)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded(pixels)), expected, atol=1e-4)


@pytest.mark.slow
def test_keras_resnet152_builds_with_caffe_normalization_inside():
    import keras
    from keras.applications.resnet import preprocess_input

    from pokedex_trainer.backends.keras.keras_networks import (
        BACKBONE_NAME,
        apply_phase,
        build_model,
    )

    model = build_model(get_spec("resnet", "keras"), 3, (32, 32), "none", 0.2)
    pixels = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    normalized = keras.ops.convert_to_numpy(model.get_layer("normalize_caffe")(pixels))
    np.testing.assert_allclose(normalized, preprocess_input(pixels.copy()), atol=1e-4)
    assert model(pixels).shape == (2, 3)
    apply_phase(model, Phase("fine_tune", 1, 1e-4, "last_n", 4))
    backbone = model.get_layer(BACKBONE_NAME)
    trainable = [layer for layer in backbone.layers if layer.trainable and layer.weights]
    assert len(trainable) == 4 and trainable[-1].name == "conv5_block3_3_conv"
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in trainable)


@pytest.mark.parametrize("model_type, display", [("mobilenet", "MobileNetV2"),
                                                 ("efficientnet", "EfficientNetB7")])
def test_torchvision_imagenet_download_failure_is_resnets_clear_message(tmodels, monkeypatch,
                                                                        model_type, display):
    import torchvision.models._api as api

    def offline(self, *args, **kwargs):
        raise OSError("<urlopen error [Errno -3] Temporary failure in name resolution>")

    monkeypatch.setattr(api.WeightsEnum, "get_state_dict", offline)
    with pytest.raises(UserError, match=f"ImageNet weights of {display} .*--weights PATH"):
        tmodels.build_model(get_spec(model_type, "pytorch"), 3, "imagenet", 0.1)


@pytest.fixture(scope="module")
def mobilenet_state_dict(tmp_path_factory):
    """A torchvision mobilenet_v2 state dict with its ImageNet classifier, saved by the test:
    what an offline machine copies over (torchvision's own .pth files have this form)."""
    from torchvision.models import mobilenet_v2

    torch.manual_seed(3)
    path = tmp_path_factory.mktemp("weights") / "mobilenet_v2_local.pth"
    network = mobilenet_v2(weights=None)
    torch.save(network.state_dict(), path)
    return path, network.state_dict()


def test_local_weights_file_round_trip(tmodels, mobilenet_state_dict):
    path, saved = mobilenet_state_dict
    model = tmodels.build_model(get_spec("mobilenet", "pytorch"), 3, str(path), 0.2)
    loaded = model.backbone.state_dict()
    assert set(loaded) == {k for k in saved if not k.startswith("classifier.")}
    assert all(torch.equal(loaded[k], saved[k]) for k in loaded)


@pytest.mark.parametrize("content, message", [
    ("resnet18", "does not fit MobileNetV2"),
    ("text", "could not read --weights .* as a PyTorch state dict"),
    ("code", "refused, since loading it could run code"),
])
def test_a_bad_local_weights_file_is_refused_in_one_line(tmp_path, tiny_dataset, capsys,
                                                         content, message):
    from pathlib import Path

    bad = tmp_path / "weights.pth"
    if content == "resnet18":
        from torchvision.models import resnet18

        torch.save(resnet18(weights=None).state_dict(), bad)
    elif content == "text":
        bad.write_text("not a weights file")
    else:
        torch.save({"conv": Path("x")}, bad)  # a pickled Python object
    out = tmp_path / "runs"
    code = run_main(train_main, ["--data_path", str(tiny_dataset), "--model_type",
                                      "mobilenet", "--framework", "pytorch", "--weights",
                                      str(bad), "--image_size", "32", "32", "--epochs", "1",
                                      "--fine_tune_epochs", "0", "--workers", "0",
                                      "--output_dir", str(out), "--log_dir",
                                      str(tmp_path / "tb"), "--run_name", "bad"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("error: ")
    assert re.search(message, err[-1]), err[-1]
    assert not (out / "bad").exists()  # stopped before training: nothing left behind


@pytest.fixture(scope="module")
def torch_mobilenet_run(tiny_dataset, tmp_path_factory):
    """The PyTorch MobileNetV2 route through the real trainer: 32 px, one epoch per phase."""
    out = tmp_path_factory.mktemp("routes")
    return train_tiny_run(tiny_dataset, out, "mobilenet", "--framework", "pytorch",
                          "--epochs", "1", "--fine_tune_epochs", "1", "--fine_tune_layers", "3")


@pytest.mark.slow
def test_torch_mobilenet_trains_both_phases_and_records_its_framework(torch_mobilenet_run):
    run = torch_mobilenet_run
    config = json.loads((run / "config.json").read_text("utf-8"))
    assert config["framework"] == "pytorch"
    assert (run / "mobilenet_v2_best.pth").is_file()
    assert not list(run.glob("*.keras"))
    payload = torch.load(run / "mobilenet_v2_best.pth", weights_only=True)
    assert payload["model_type"] == "mobilenet" and payload["arch"] == "mobilenet_v2"
    summary = json.loads((run / "summary.json").read_text("utf-8"))
    assert summary["status"] == "completed" and summary["epochs_run"] == 2


@pytest.mark.slow
def test_torch_mobilenet_exports_onnx_and_evaluates_without_a_framework_flag(
        torch_mobilenet_run):
    run = torch_mobilenet_run
    assert run_main(export_main, ["--run_dir", str(run), "--formats", "onnx",
                                  "--check_images", "6"]) == 0
    entries = json.loads((run / "exports.json").read_text("utf-8"))["files"]
    assert [(e["file"], e["passed"]) for e in entries] == [("mobilenet_v2_best.onnx", True)]
    sidecar = json.loads((run / "export" / "mobilenet_v2_best.onnx.json").read_text("utf-8"))
    assert sidecar["source_framework"] == "torch" and sidecar["arch"] == "mobilenet_v2"
    assert sidecar["input"]["range"] == [0, 255]
    assert run_main(evaluate_main, ["--run_dir", str(run), "--latency_runs", "2"]) == 0
    metrics = json.loads((run / "evaluation" / "metrics.json").read_text("utf-8"))
    assert 0 <= metrics["accuracy"] <= 1


@pytest.mark.parametrize("installed", [True, False])
def test_all_formats_of_a_pytorch_model_say_how_to_get_its_tflite(monkeypatch, caplog,
                                                                  installed):
    from pokedex_trainer.exporters import choices, torch_tflite

    monkeypatch.setattr(torch_tflite, "litert_torch_available", lambda: installed)
    with caplog.at_level("INFO", logger=choices.__name__):
        formats = choices.parse_formats(None, "torch")
    assert "tflite" not in formats
    said = [r.getMessage() for r in caplog.records if "TFLite" in r.getMessage()]
    assert len(said) == 1 and "--formats tflite" in said[0]
    assert ("requirements-tflite.txt" in said[0]) is not installed


@pytest.mark.slow
def test_tflite_of_a_pytorch_model_whose_environment_cannot_be_made_is_one_line(
        torch_mobilenet_run, capsys, monkeypatch, tmp_path):
    """POKEDEX_TFLITE_ENV at a folder that is no virtual environment: nothing is installed
    there, one line says why and what else there is, before any export."""
    from pokedex_trainer.exporters import torch_tflite

    monkeypatch.setattr(torch_tflite, "litert_torch_available", lambda: False)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine", encoding="utf-8")
    monkeypatch.setenv("POKEDEX_TFLITE_ENV", str(mine))
    out = tmp_path / "out"
    assert run_main(export_main, ["--run_dir", str(torch_mobilenet_run), "--formats",
                                  "tflite", "--output_dir", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not a virtual environment" in err[0], err
    assert "needs litert-torch" in err[0]
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"] and not out.exists()


@pytest.mark.slow
def test_torch_mobilenet_tflite_is_verified_in_litert(torch_mobilenet_run):
    """From the README's one install: litert-torch converts in its own environment, which
    export.py makes when it is missing (POKEDEX_TFLITE_ENV; .ci/run points it into the clone);
    where litert-torch is importable, in this process."""
    run = torch_mobilenet_run
    assert run_main(export_main, ["--run_dir", str(run), "--formats", "tflite",
                                  "--check_images", "6"]) == 0
    entries = {e["file"]: e for e in
               json.loads((run / "exports.json").read_text("utf-8"))["files"]}
    entry = entries["mobilenet_v2_best_float32.tflite"]
    assert entry["passed"] and entry["runtime"] == "litert"
    sidecar = json.loads((run / "export" / "mobilenet_v2_best_float32.tflite.json")
                         .read_text("utf-8"))
    assert sidecar["input"]["layout"] == "NHWC"
    from pokedex_trainer.exporters.metadata import read_tflite_metadata

    embedded = read_tflite_metadata(run / "export" / "mobilenet_v2_best_float32.tflite")
    assert embedded["class_names"] == sidecar["class_names"]
    assert embedded["input"]["layout"] == "NHWC"


@pytest.mark.slow
@pytest.mark.parametrize("model_type, framework, model_file", [
    ("mobilenet", "pytorch", "mobilenet_v2_best.pth"),
    ("efficientnet", "pytorch", "efficientnet_b7_best.pth"),
    ("resnet", "keras", "resnet152_best.keras"),
])
def test_new_route_killed_resumed_exported_and_evaluated(tmp_path, tiny_dataset, model_type,
                                                         framework, model_file):
    """Every route the guide's pairing lacks, at 32 px: SIGKILL after the first epoch's resume
    point, --resume to the end, then an ONNX export checked against the model and an
    evaluation, none of them told the framework again."""
    run_dir = tmp_path / "runs" / "run"
    argv = [ROOT / "train_professional_models.py", "--data_path", tiny_dataset,
            "--model_type", model_type, "--framework", framework, "--weights", "none",
            "--image_size", "32", "32", "--batch_size", "8", "--epochs", "2",
            "--fine_tune_epochs", "1", "--fine_tune_layers", "3", "--workers", "0",
            "--output_dir", tmp_path / "runs", "--log_dir", tmp_path / "tb", "--run_name",
            "run", "--histogram_freq", "0"]
    killed = run_with_signal_at(tmp_path, argv, nth_commit("state.json", 1), after=True)
    assert killed.returncode == -9, killed.stderr[-2000:]
    resumed = subprocess.run([sys.executable, str(ROOT / "train_professional_models.py"),
                              "--resume", str(run_dir), "--workers", "0"], cwd=tmp_path,
                             capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    history = (run_dir / "history.csv").read_text("utf-8").splitlines()[1:]
    assert [line.split(",")[0] for line in history] == ["1", "2", "3"]
    assert "resuming phase 'head' at epoch 2" in (run_dir / "training.log").read_text("utf-8")
    assert (run_dir / model_file).is_file()
    assert json.loads((run_dir / "config.json").read_text("utf-8"))["framework"] == framework
    for script, args in (("export.py", ["--run_dir", str(run_dir), "--formats", "onnx",
                                        "--check_images", "4"]),
                         ("evaluate.py", ["--run_dir", str(run_dir), "--latency_runs", "2"])):
        done = subprocess.run([sys.executable, str(ROOT / script), *args], cwd=tmp_path,
                              capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, f"{script}: {done.stderr[-3000:]}"
    entries = json.loads((run_dir / "exports.json").read_text("utf-8"))["files"]
    assert [e["passed"] for e in entries if e["file"].endswith(".onnx")] == [True]
    metrics = json.loads((run_dir / "evaluation" / "metrics.json").read_text("utf-8"))
    assert 0 <= metrics["accuracy"] <= 1


@pytest.mark.slow
def test_keras_resnet152_local_weights_round_trip_and_refusal(tmp_path):
    import keras

    from pokedex_trainer.backends.keras.keras_networks import (
        BACKBONE_NAME,
        build_backbone,
        build_model,
    )

    spec = get_spec("resnet", "keras")
    source = build_backbone(spec, (32, 32), "none")
    path = tmp_path / "resnet152_notop.weights.h5"
    source.save_weights(path)
    model = build_model(spec, 3, (32, 32), str(path), 0.2)
    for a, b in zip(source.get_weights(), model.get_layer(BACKBONE_NAME).get_weights()):
        np.testing.assert_array_equal(a, b)
    other = tmp_path / "mobilenet_notop.weights.h5"
    build_backbone(get_spec("mobilenet"), (32, 32), "none").save_weights(other)
    with pytest.raises(UserError, match="could not load --weights .* into ResNet152"):
        build_model(spec, 3, (32, 32), str(other), 0.2)
    keras.backend.clear_session()
