"""export.py: every format is written, verified in its own runtime, and usable on its own."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, train_tiny_run
from pokedex_trainer.cli.commands import export_main, run_main
from pokedex_trainer.data.synthetic import write_dataset

FAST = ["--check_images", "12", "--calibration_images", "16"]


def _entries(run_dir) -> dict:
    data = json.loads((run_dir / "exports.json").read_text(encoding="utf-8"))
    return {entry["file"]: entry for entry in data["files"]}


def _web_page_if_installed() -> list[str]:
    """"Every format" holds the web page where ONNX Runtime Web is installed (npm ci)."""
    from pokedex_trainer.errors import UserError
    from pokedex_trainer.exporters.web_page import check_runtime

    try:
        check_runtime()
    except UserError:
        return []
    return ["web/model.onnx"]


def test_keras_model_exports_every_format_and_each_passes_its_check(keras_exports):
    from pokedex_trainer.exporters.parity import TOLERANCES
    from pokedex_trainer.exporters.metadata import read_onnx_metadata, read_tflite_metadata

    export = keras_exports / "export"
    expected = ["tiny_keras_best_saved_model", "tiny_keras_best.onnx"] + [
        f"tiny_keras_best_{p}.tflite" for p in ("float32", "float16", "dynamic_int8", "int8")]
    expected += _web_page_if_installed()
    entries = _entries(keras_exports)
    assert sorted(entries) == sorted(expected)
    class_names = json.loads((keras_exports / "class_names.json").read_text(encoding="utf-8"))
    for name in expected:
        entry = entries[name]
        assert entry["passed"], entry
        assert (export / name).exists() and (export / f"{name}.json").is_file()
        assert entry["max_abs_diff"] <= TOLERANCES[entry["precision"]].max_abs_diff
        assert entry["images"] == 6 and entry["latency_ms"] > 0 and entry["size_mb"] > 0  # val
    assert entries["tiny_keras_best_int8.tflite"]["decisive_agreement"] >= 0.9
    assert read_onnx_metadata(export / "tiny_keras_best.onnx")["class_names"] == class_names
    assert read_tflite_metadata(export / "tiny_keras_best_int8.tflite")["class_names"] == \
        class_names


def test_onnx_export_takes_any_batch_size(keras_exports):
    import onnxruntime as ort

    session = ort.InferenceSession(str(keras_exports / "export" / "tiny_keras_best.onnx"),
                                   providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape[0] == "batch"
    for batch in (1, 5):
        x = np.random.default_rng(0).uniform(0, 255, (batch, 32, 32, 3)).astype(np.float32)
        probabilities = session.run(None, {session.get_inputs()[0].name: x})[0]
        assert probabilities.shape == (batch, 3)
        np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)


def test_exported_file_and_sidecar_classify_a_photo_without_the_project(keras_exports,
                                                                         tiny_dataset):
    """What an app does: only the file, its JSON, OpenCV and the runtime."""
    photo = next((tiny_dataset / "León").iterdir())
    script = f"""
import json, sys
import cv2, numpy as np, onnxruntime as ort
from PIL import Image
from ai_edge_litert.interpreter import Interpreter
results = []
for path in sys.argv[1:]:
    meta = json.load(open(path + ".json", encoding="utf-8"))
    h, w = meta["image_size"]
    rgb = np.asarray(Image.open({str(photo)!r}).convert("RGB"))
    x = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA).astype(np.float32)
    x = ((x - np.array(meta["input"]["mean"], np.float32)) / np.array(meta["input"]["std"],
         np.float32))[None]
    if path.endswith(".onnx"):
        s = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        p = s.run(None, {{s.get_inputs()[0].name: x}})[0][0]
    else:
        it = Interpreter(model_path=path); it.allocate_tensors()
        it.set_tensor(it.get_input_details()[0]["index"], x); it.invoke()
        p = it.get_tensor(it.get_output_details()[0]["index"])[0]
    results.append([meta["class_names"][int(p.argmax())], float(p.max())])
print(json.dumps(results))
"""
    export = keras_exports / "export"
    files = [str(export / "tiny_keras_best.onnx"), str(export / "tiny_keras_best_float32.tflite")]
    done = subprocess.run([sys.executable, "-c", script, *files], capture_output=True,
                          text=True, encoding="utf-8", timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    answers = json.loads(done.stdout.strip().splitlines()[-1])

    from pokedex_trainer.evaluation.predict import load_predictor
    from pokedex_trainer.runs.finished import folder_images

    source = load_predictor(keras_exports / "tiny_keras_best.keras")
    images = folder_images(tiny_dataset, source.info.class_names)
    index = [p for p, _ in images.samples].index(f"León/{photo.name}")
    image = images.subset(None).load_all((32, 32))[0][index]
    expected = source.predict(image[None])[0]
    for name, confidence in answers:
        assert name == source.info.class_names[int(expected.argmax())]
        assert confidence == pytest.approx(float(expected.max()), abs=1e-4)


def test_wrong_normalization_in_the_sidecar_fails_the_check(keras_exports, tmp_path):
    from pokedex_trainer.evaluation.model_files import sidecar_path
    from pokedex_trainer.evaluation.predict import load_predictor
    from pokedex_trainer.exporters.parity import predict_all, verify_file
    from pokedex_trainer.runs.finished import run_split

    onnx_file = tmp_path / "broken.onnx"
    shutil.copy(keras_exports / "export" / "tiny_keras_best.onnx", onnx_file)
    sidecar = json.loads(sidecar_path(keras_exports / "export" / "tiny_keras_best.onnx")
                         .read_text(encoding="utf-8"))
    images, labels = run_split(keras_exports, "val").load_all((32, 32))
    reference = predict_all(load_predictor(keras_exports / "tiny_keras_best.keras"), images)

    sidecar_path(onnx_file).write_text(json.dumps(sidecar), encoding="utf-8")
    assert verify_file(onnx_file, "onnx", "float32", reference, images, labels).passed
    # ImageNet mean/std in pixel units: what a user copying a PyTorch recipe would write
    sidecar["input"]["mean"] = [123.7, 116.3, 103.5]
    sidecar["input"]["std"] = [58.4, 57.1, 57.4]
    sidecar_path(onnx_file).write_text(json.dumps(sidecar), encoding="utf-8")
    result = verify_file(onnx_file, "onnx", "float32", reference, images, labels)
    assert not result.passed and "max |Δp|" in result.reason


def test_a_failed_check_deletes_the_file_and_exits_1(keras_exports, tmp_path, monkeypatch,
                                                     capsys):
    import pokedex_trainer.exporters.writers as exporters

    original = exporters._sidecar

    def broken_sidecar(*args):
        sidecar = original(*args)
        sidecar["input"]["std"] = [255.0, 255.0, 255.0]  # a "0..1" mistake
        return sidecar

    monkeypatch.setattr(exporters, "_sidecar", broken_sidecar)
    out = tmp_path / "export"
    code = run_main(export_main, ["--run_dir", str(keras_exports), "--formats", "onnx",
                                  "--output_dir", str(out), *FAST])
    assert code == 1
    assert "failed their check" in capsys.readouterr().err
    assert not (out / "tiny_keras_best.onnx").exists()
    assert not _entries(out)["tiny_keras_best.onnx"]["passed"]  # the record beside the files


def test_torch_model_exports_torchscript_torch_export_and_onnx(torch_run):
    from pokedex_trainer.exporters.torch_formats import read_extra_metadata

    assert run_main(export_main, ["--run_dir", str(torch_run), *FAST]) == 0
    entries = _entries(torch_run)
    assert sorted(entries) == sorted(["tiny_torch_best.onnx", "tiny_torch_best.pt",
                                      "tiny_torch_best.pt2"] + _web_page_if_installed())
    assert all(e["passed"] and e["max_abs_diff"] <= 1e-4 for e in entries.values())
    assert {e["runtime"] for e in entries.values()} == {"torchscript", "torch.export",
                                                        "onnxruntime"}
    class_names = json.loads((torch_run / "class_names.json").read_text(encoding="utf-8"))
    for name in ("tiny_torch_best.pt", "tiny_torch_best.pt2"):
        meta = read_extra_metadata(torch_run / "export" / name)
        assert meta["class_names"] == class_names and meta["input"]["layout"] == "NCHW"


@pytest.mark.parametrize("argv_tail, message", [
    (["--formats", "torchscript"], "tflite, onnx, savedmodel"),
    (["--formats", "onnx", "--tflite_precisions", "int4"], "unknown TFLite precision"),
])
def test_bad_export_requests_are_one_line_errors(keras_run, capsys, argv_tail, message):
    assert run_main(export_main, ["--run_dir", str(keras_run), *argv_tail]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_model_outside_a_run_needs_labelled_images(keras_run, tmp_path, capsys):
    loose = tmp_path / "tiny_keras_best.keras"
    shutil.copy(keras_run / "tiny_keras_best.keras", loose)
    shutil.copy(keras_run / "class_names.json", tmp_path / "class_names.json")
    assert run_main(export_main, ["--model", str(loose), "--formats", "onnx"]) == 2
    assert "--data_path" in capsys.readouterr().err


def test_trainer_refuses_an_unknown_export_format_before_training(tiny_dataset, tmp_path):
    done = subprocess.run([sys.executable, "train_professional_models.py", "--data_path",
                           str(tiny_dataset), "--model_type", "tiny_torch", "--export",
                           "savedmodel",
                           "--output_dir", str(tmp_path / "runs")], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "torchscript, torch_export, onnx" in done.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "runs").exists()


def test_base_model_keeps_the_backbone_and_trains_a_new_head_then_exports(keras_run,
                                                                          tmp_path):
    import keras

    four = write_dataset(tmp_path / "four", classes=("Aguila", "Gato", "León", "Zorro"),
                         per_class=10, size=(40, 40), seed=5)
    base = keras_run / "tiny_keras_best.keras"
    run_dir = train_tiny_run(four, tmp_path, "tiny_keras", "--base_model", str(base),
                             "--epochs", "1", "--export", "onnx")
    new = keras.models.load_model(run_dir / "tiny_keras_best.keras", compile=False)
    old = keras.models.load_model(base, compile=False)
    assert new.get_layer("predictions").units == 4 and old.get_layer("predictions").units == 3
    # phase 1 trains only the head: the backbone is the base model's, weight for weight
    for a, b in zip(new.get_layer("backbone").get_weights(),
                    old.get_layer("backbone").get_weights()):
        np.testing.assert_array_equal(a, b)
    assert not np.allclose(new.get_layer("predictions").get_weights()[0][:, :3],
                           old.get_layer("predictions").get_weights()[0])
    assert _entries(run_dir)["tiny_keras_best.onnx"]["passed"]
    summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    assert summary["weights"] == "base_model:tiny_keras_best.keras"


def test_torch_base_model_carries_the_backbone_over(torch_run):
    import torch

    from pokedex_trainer.networks import get_spec
    from pokedex_trainer.backends.torch.torch_networks import build_model

    base = torch_run / "tiny_torch_best.pth"
    saved = torch.load(base, map_location="cpu", weights_only=True)["state_dict"]
    model = build_model(get_spec("tiny_torch"), 5, "none", 0.3, base_model=str(base))
    assert model.head.out_features == 5
    for name, tensor in model.state_dict().items():
        if name.startswith("backbone."):
            assert torch.equal(tensor, saved[name]), name


@pytest.mark.parametrize("framework", ["auto", "pytorch"])
def test_a_base_model_alone_names_the_network_and_the_framework(torch_run, keras_run, framework,
                                                                monkeypatch):
    """`--base_model FILE` without --model_type (docs/training.md): the file's network and
    framework, under --framework auto too (it once crashed there with a KeyError)."""
    from pokedex_trainer.cli.parsers import parse_train_command
    from pokedex_trainer.errors import UserError
    from pokedex_trainer.runs.opening import settle_framework

    monkeypatch.delenv("KERAS_BACKEND", raising=False)
    no_gpu = {"probe": lambda backend: False, "maybe_gpu": lambda: False}
    config, _ = parse_train_command(["--base_model", str(torch_run / "tiny_torch_best.pth"),
                                     "--framework", framework])
    settled = settle_framework(config, **no_gpu)
    assert (settled.model_type, settled.framework) == ("tiny_torch", "pytorch")
    config, _ = parse_train_command(["--base_model", str(keras_run / "tiny_keras_best.keras")])
    settled = settle_framework(config, **no_gpu)
    assert (settled.model_type, settled.framework) == ("tiny_keras", "keras")
    config, _ = parse_train_command(["--base_model", str(torch_run / "tiny_torch_best.pth"),
                                     "--framework", "keras"])
    with pytest.raises(UserError, match="a pytorch model"):
        settle_framework(config, **no_gpu)
