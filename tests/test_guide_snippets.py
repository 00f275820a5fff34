"""The guide's snippets as pasted (issue 26, items 11 and 12): the TorchScript snippet's
``ResNet152Model`` loads this tool's ``.pth`` with torch.load's weights-only default, and
``--save_h5`` writes the ``.h5`` file the evaluation, TFLite, ONNX and transfer snippets open."""

from __future__ import annotations

import json
import os
import shutil
import textwrap

import numpy as np
import pytest

from conftest import TINY_CLASSES, train_tiny_run
from pokedex_trainer.cli.commands import evaluate_main, export_main, run_main, train_main

# The guide's "PyTorch TorchScript" snippet, verbatim but for the import it leaves out: the
# loading lines, then the conversion (a full-size trace of ResNet152: slow on a small CPU).
SNIPPET_LOAD = textwrap.dedent("""
    import torch
    from train_professional_models import ResNet152Model

    # Cargar modelo
    model = ResNet152Model(num_classes=50)
    model.load_state_dict(torch.load('model/ultra/resnet152_best.pth'))
    model.eval()
""")
SNIPPET_CONVERT = textwrap.dedent("""
    # Convertir
    dummy_input = torch.randn(1, 3, 224, 224)
    traced_model = torch.jit.trace(model, dummy_input)

    # Guardar
    traced_model.save('model/ultra/resnet152.pt')
""")
GUIDE_CLASSES = [f"Especie{i:02d}" for i in range(50)]


@pytest.fixture(scope="module")
def resnet_pth(tmp_path_factory):
    """A 50-class ``resnet152_best.pth`` as the trainer saves it (``checkpoint_payload``), with
    weights none: the file format of a real run without the hours of training."""
    import torch

    from pokedex_trainer.networks import get_spec
    from pokedex_trainer.backends.torch.torch_networks import build_model, checkpoint_payload

    spec = get_spec("resnet")
    torch.manual_seed(0)
    model = build_model(spec, len(GUIDE_CLASSES), "none", 0.3)
    path = tmp_path_factory.mktemp("guide") / "model" / "ultra" / "resnet152_best.pth"
    path.parent.mkdir(parents=True)
    torch.save(checkpoint_payload(model, GUIDE_CLASSES, (224, 224), spec, 0.3), path)
    return path


def _run_snippet(code: str, scope: dict) -> dict:
    exec(compile(code, "guide_torchscript_snippet", "exec"), scope)
    return scope


def test_the_torchscript_snippets_loading_lines_run_as_pasted_on_this_tools_pth(resnet_pth,
                                                                                monkeypatch):
    import torch

    from pokedex_trainer.backends.torch.torch_networks import load_checkpoint

    monkeypatch.chdir(resnet_pth.parents[2])
    model = _run_snippet(SNIPPET_LOAD, {})["model"]
    # the checkpoint's metadata stays with the model
    assert model.class_names == GUIDE_CLASSES and model.image_size == (224, 224)
    assert model.checkpoint_info["model_type"] == "resnet"
    # the same network and weights the tool itself rebuilds from the file
    reference, _ = load_checkpoint(resnet_pth)
    assert {k: v.shape for k, v in model.state_dict().items()} == \
        {k: v.shape for k, v in reference.state_dict().items()}
    pixels = torch.rand(1, 3, 64, 64) * 255
    with torch.no_grad():
        assert torch.allclose(model(pixels), reference(pixels), atol=1e-5)


@pytest.mark.slow
def test_the_whole_torchscript_snippet_runs_as_pasted(resnet_pth, monkeypatch):
    import torch

    monkeypatch.chdir(resnet_pth.parents[2])
    scope = _run_snippet(SNIPPET_CONVERT, _run_snippet(SNIPPET_LOAD, {}))
    pixels = torch.rand(1, 3, 64, 64) * 255
    with torch.no_grad():
        traced = torch.jit.load("model/ultra/resnet152.pt")
        assert torch.allclose(traced(pixels), scope["model"](pixels), atol=1e-4)


def test_resnet152model_refuses_a_checkpoint_it_cannot_hold(resnet_pth, tmp_path):
    import torch

    from pokedex_trainer.networks import get_spec
    from pokedex_trainer.backends.torch.torch_networks import build_model, checkpoint_payload
    from train_professional_models import ResNet152Model

    payload = torch.load(resnet_pth)  # the weights-only default
    with pytest.raises(RuntimeError, match=r"50 classes.*ResNet152Model\(num_classes=50\)"):
        ResNet152Model(num_classes=10).load_state_dict(payload)
    tiny = checkpoint_payload(build_model(get_spec("tiny_torch"), 50, "none", 0.3),
                              GUIDE_CLASSES, (32, 32), get_spec("tiny_torch"), 0.3)
    torch.save(tiny, tmp_path / "tiny.pth")
    with pytest.raises(RuntimeError, match="'tiny_torch' network"):
        ResNet152Model(num_classes=50).load_state_dict(torch.load(tmp_path / "tiny.pth"))


def test_save_h5_writes_the_final_model_the_guides_snippets_open(tiny_dataset, tmp_path):
    import keras

    run = train_tiny_run(tiny_dataset, tmp_path, "tiny_keras", "--epochs", "1", "--save_h5")
    finals = sorted(p.name for p in run.glob("tiny_keras_final_*"))
    assert len(finals) == 2 and finals[0].endswith(".h5") and finals[1].endswith(".keras")
    assert finals[0][:-len(".h5")] == finals[1][:-len(".keras")]  # one stamp
    h5, native = run / finals[0], run / finals[1]
    with open(h5, "rb") as handle:
        assert handle.read(8) == b"\x89HDF\r\n\x1a\n"  # legacy HDF5, not a renamed .keras
    # the snippets' own line: tf.keras.models.load_model('..._final_<stamp>.h5')
    images = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    from_h5 = keras.models.load_model(h5).predict(images, verbose=0)
    from_native = keras.models.load_model(native).predict(images, verbose=0)
    np.testing.assert_allclose(from_h5, from_native, atol=1e-6)
    out = tmp_path / "report"
    assert run_main(evaluate_main, ["--model", str(h5), "--data_path", str(tiny_dataset),
                                    "--output_dir", str(out), "--latency_runs", "1",
                                    "--latency_batch", "2"]) == 0
    assert json.loads((out / "metrics.json").read_text("utf-8"))["model"] == str(h5)


def _errors(capsys) -> str:
    """What stderr says besides the log's INFO and WARNING lines (Keras's own "HDF5 is legacy"
    advice when the test saves its .h5), with no traceback."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return "\n".join(line for line in err.splitlines()
                     if line.strip() and not line.startswith(("INFO: ", "WARNING: ")))


def test_save_h5_on_a_pytorch_network_is_one_line_before_training(tiny_dataset, tmp_path,
                                                                   capsys):
    code = run_main(train_main, ["--data_path", str(tiny_dataset), "--model_type", "tiny_torch",
                                 "--weights", "none", "--save_h5", "--output_dir",
                                 str(tmp_path / "runs"), "--log_dir", str(tmp_path / "tb")])
    assert code == 2
    err = _errors(capsys)
    assert len(err.splitlines()) == 1 and "--save_h5" in err and "Keras" in err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "tb").exists()


def test_an_h5_with_a_lambda_layer_is_refused_by_evaluate_and_export(tiny_dataset, tmp_path,
                                                                     capsys):
    import keras

    marker = tmp_path / "ran"
    inputs = keras.Input((32, 32, 3))
    outputs = keras.layers.Lambda(
        lambda x, m=str(marker): (open(m, "w").close(), x)[1] * 0.0 + 1.0 / 3)(inputs)
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(outputs), name="tiny")
    hostile = tmp_path / "hostile.h5"
    model.save(hostile)
    marker.unlink(missing_ok=True)  # saving may trace the function once
    (tmp_path / "class_names.json").write_text(json.dumps(list(TINY_CLASSES)), "utf-8")
    for main, argv in ((evaluate_main, ["--model", str(hostile), "--data_path",
                                        str(tiny_dataset), "--output_dir", str(tmp_path / "r")]),
                       (export_main, ["--model", str(hostile), "--data_path", str(tiny_dataset),
                                      "--formats", "onnx", "--output_dir", str(tmp_path / "e")])):
        assert run_main(main, argv) == 2
        err = _errors(capsys)
        assert len(err.splitlines()) == 1 and "Lambda" in err
        assert not marker.exists()


@pytest.mark.slow
def test_the_torchscript_snippet_loads_the_pth_of_a_real_resnet_run(tiny_dataset, tmp_path):
    """A real (tiny) ResNet152 run's best .pth, not a hand-built one."""
    import torch

    from train_professional_models import ResNet152Model

    run = train_tiny_run(tiny_dataset, tmp_path, "resnet", "--epochs", "1", "--batch_size", "4")
    model = ResNet152Model(num_classes=len(TINY_CLASSES))
    model.load_state_dict(torch.load(run / "resnet152_best.pth"))
    model.eval()
    assert model.class_names == list(TINY_CLASSES)
    traced = torch.jit.trace(model, torch.randn(1, 3, 32, 32) * 255)
    target = tmp_path / "resnet152.pt"
    traced.save(str(target))
    assert target.stat().st_size > 0 and os.path.getsize(run / "resnet152_best.pth") > 0
    shutil.rmtree(run)
