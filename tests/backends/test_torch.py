"""ResNet152 on PyTorch: same contract as the Keras trainers."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from conftest import KERAS_STYLE_SCALARS, ROOT, tensorboard_tags  # noqa: E402
from pokedex_trainer.errors import UserError  # noqa: E402
from pokedex_trainer.networks import IMAGENET_MEAN, get_spec  # noqa: E402
from pokedex_trainer.core.phases import BATCHNORM, Phase, layers_to_unfreeze  # noqa: E402


@pytest.fixture(scope="module")
def tmodels():
    """Imported by the tests, not at collection: this module switches TensorBoard to its
    TensorFlow-free stub when TensorFlow is not loaded yet, which the Keras tests must not see."""
    from pokedex_trainer.backends.torch import torch_networks as models

    return models


@pytest.fixture(scope="module")
def resnet_weights(tmp_path_factory) -> Path:
    """A torchvision resnet152 state dict saved by the test, standing in for ImageNet."""
    from torchvision.models import resnet152

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "resnet152_test.pth"
    torch.save(resnet152(weights=None).state_dict(), path)
    return path


def test_model_takes_0_255_and_normalizes_inside(tmodels):
    model = tmodels.build_model(get_spec("resnet"), 3, "none", 0.1)
    mean_pixel = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255
    assert torch.allclose(model.normalize(mean_pixel.expand(1, 3, 4, 4)), torch.zeros(1, 3, 4, 4),
                          atol=1e-5)
    white = model.normalize(torch.full((1, 3, 2, 2), 255.0))
    assert white.max() > 2.0  # (1 - mean) / std, not 255-scale input
    probabilities = model.eval().probabilities(torch.full((2, 3, 32, 32), 128.0))
    assert torch.allclose(probabilities.sum(dim=1), torch.ones(2))


def test_phases_freeze_the_backbone_then_unfreeze_the_last_n(tmodels, resnet_weights):
    model = tmodels.build_model(get_spec("resnet"), 3, str(resnet_weights), 0.1)
    tmodels.apply_phase(model, Phase("head", 1, 1e-3, "head"))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"head.weight", "head.bias"}

    fine = Phase("fine_tune", 1, 1e-4, "last_n", 7)
    tmodels.apply_phase(model, fine)
    layers = tmodels.backbone_layers(model)
    chosen = layers_to_unfreeze([kind for _, _, kind in layers], 7)
    expected = {f"backbone.{layers[i][0]}" for i in chosen}
    trainable_modules = {n.rsplit(".", 1)[0] for n, p in model.named_parameters()
                         if p.requires_grad and not n.startswith("head.")}
    assert trainable_modules == expected and len(expected) == 7
    assert all(isinstance(layers[i][1], (torch.nn.Conv2d, torch.nn.Linear)) for i in chosen)
    tmodels.set_train_mode(model, fine)
    assert all(not m.training for _, m, kind in layers if kind == BATCHNORM)
    assert model.head.training and model.dropout.training


def test_a_checkpoint_cannot_execute_code(tmodels, tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (Path.touch, (marker,))

    evil = tmp_path / "evil.pth"
    torch.save({"state_dict": {"x": Exploit()}}, evil)
    with pytest.raises(UserError, match="holds more than tensors .*refused, since loading it could run code"):
        tmodels.load_backbone_file(tmodels._resnet152("none"), evil, "ResNet152")
    import pickle

    from pokedex_trainer.backends.torch.tensor_files import why_not_tensors

    with pytest.raises(pickle.UnpicklingError) as caught:  # weights_only refused the object
        tmodels.load_checkpoint(evil)
    assert why_not_tensors(caught.value).endswith("refused, since loading it could run code")
    assert not marker.exists()


@pytest.mark.parametrize("content, reason", [
    (b"", "the file is empty"),
    (b"epoch,loss\n1,0.5\n", "it is not a file written by torch.save"),
    (b"\x89HDF\r\n\x1a\n" + bytes(64), "it is not a file written by torch.save"),
])
def test_a_weights_file_torch_did_not_write_says_what_it_is(tmodels, tmp_path, content,
                                                            reason):
    path = tmp_path / "w.pth"
    path.write_bytes(content)
    with pytest.raises(UserError, match=f"could not read --weights .*: {reason}"):
        tmodels.load_backbone_file(tmodels._resnet152("none"), path, "ResNet152")


class _Exploit:
    def __reduce__(self):
        return (print, ("ran",))


def test_a_refused_pickle_prints_no_pytorch_warning(tmodels, tmp_path, recwarn):
    import pickle

    evil = tmp_path / "evil.pth"  # a plain pickle (protocol 4): PyTorch warns about it
    evil.write_bytes(pickle.dumps({"x": _Exploit()}, protocol=4))
    with pytest.raises(UserError, match="holds more than tensors"):
        tmodels.load_backbone_file(tmodels._resnet152("none"), evil, "ResNet152")
    assert not [w for w in recwarn if "weights_only" in str(w.message)]


def test_weights_file_that_does_not_fit_is_a_clear_message(tmodels, tmp_path):
    bad = tmp_path / "small.pth"
    torch.save(torch.nn.Linear(3, 3).state_dict(), bad)
    with pytest.raises(UserError, match="does not fit ResNet152"):
        tmodels.build_model(get_spec("resnet"), 3, str(bad), 0.1)


def test_imagenet_download_failure_is_a_clear_message(tmodels, monkeypatch):
    import torchvision.models._api as api

    def offline(self, *args, **kwargs):
        raise OSError("<urlopen error [Errno -3] Temporary failure in name resolution>")

    monkeypatch.setattr(api.WeightsEnum, "get_state_dict", offline)
    with pytest.raises(UserError, match="ImageNet weights of ResNet152.*--weights PATH"):
        tmodels.build_model(get_spec("resnet"), 3, "imagenet", 0.1)


RUN_AND_REPORT = """
import runpy, sys
sys.path.insert(0, {root!r})
sys.argv = ["train_professional_models.py"] + {argv!r}
try:
    runpy.run_path({script!r}, run_name="__main__")
except SystemExit as exc:
    code = exc.code
print("EXIT", code)
print("TENSORFLOW_IMPORTED", "tensorflow" in sys.modules)
"""


@pytest.fixture(scope="module")
def tiny_torch_weights(tmp_path_factory) -> Path:
    """A backbone state dict of the tiny PyTorch network, saved by the test."""
    from pokedex_trainer.backends.torch.torch_networks import TinyConvNet

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "tiny_torch_test.pth"
    torch.save(TinyConvNet().state_dict(), path)
    return path


@pytest.mark.parametrize("model_type, arch", [
    ("tiny_torch", "tiny_torch"),
    pytest.param("resnet", "resnet152", marks=pytest.mark.slow)])
def test_seed_command_runs_and_writes_every_output(tmodels, tmp_path, tiny_dataset, request,
                                                   model_type, arch):
    weights = request.getfixturevalue("resnet_weights" if model_type == "resnet"
                                      else "tiny_torch_weights")
    argv = ["--data_path", str(tiny_dataset), "--model_type", model_type, "--epochs", "2",
            "--batch_size", "8", "--learning_rate", "0.001", "--image_size", "32", "32",
            "--weights", str(weights), "--fine_tune_epochs", "1", "--fine_tune_layers",
            "3", "--val_split", "0.25", "--test_split", "0.25", "--workers", "1",
            "--output_dir", str(tmp_path / "runs"), "--log_dir", str(tmp_path / "tb"),
            "--run_name", "res"]
    code = RUN_AND_REPORT.format(root=str(ROOT), argv=argv,
                                 script=str(ROOT / "train_professional_models.py"))
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                            text=True, timeout=600)
    assert "EXIT 0" in result.stdout, result.stderr[-3000:]
    assert "TENSORFLOW_IMPORTED False" in result.stdout  # a ResNet run never loads TensorFlow
    run_dir = tmp_path / "runs" / "res"
    names = {p.name for p in run_dir.iterdir()}
    assert {f"{arch}_best.pth", "class_names.json", "config.json", "split_manifest.json",
            "history.csv", "training.log", "summary.json"} <= names
    assert any(n.startswith(f"{arch}_final_") and n.endswith(".pth") for n in names)
    history = list(csv.DictReader(open(run_dir / "history.csv", encoding="utf-8")))
    assert [r["phase"] for r in history] == ["head", "head", "fine_tune"]
    rows = list(csv.DictReader(open(tmp_path / "runs" / "experiments.csv", encoding="utf-8")))
    assert rows[0]["model_type"] == model_type and rows[0]["status"] == "completed"

    model, payload = tmodels.load_checkpoint(run_dir / f"{arch}_best.pth")
    assert payload["class_names"] == ["Gato", "León", "Perro"]
    assert payload["image_size"] == [32, 32] and payload["input"]["range"] == [0, 255]
    probabilities = model.probabilities(torch.full((1, 3, 32, 32), 100.0))
    assert probabilities.shape == (1, 3)

    tags = tensorboard_tags(tmp_path / "tb" / "res")
    assert KERAS_STYLE_SCALARS | {"epoch_learning_rate", "augmented_samples"} <= tags["train"]
    assert KERAS_STYLE_SCALARS <= tags["validation"]
    assert any(t.endswith("/histogram") for t in tags["train"])
    assert any(t.startswith("gradients/") for t in tags["train"])


def test_nan_loss_stops_a_resnet_run(tmodels, tmp_path, tiny_dataset):
    from pokedex_trainer.cli.commands import run_main, train_main

    argv = ["--data_path", str(tiny_dataset), "--output_dir", str(tmp_path / "runs"),
            "--log_dir", str(tmp_path / "tb"), "--image_size", "32", "32", "--batch_size", "8",
            "--workers", "0", "--val_split", "0.25", "--test_split", "0.25",
            "--model_type", "tiny_torch", "--weights", "none", "--epochs", "6",
            "--fine_tune_epochs", "2", "--learning_rate", "1e30", "--histogram_freq", "0",
            "--mixed_precision"]
    assert run_main(train_main, argv) == 1
    rows = list(csv.DictReader(open(tmp_path / "runs" / "experiments.csv", encoding="utf-8")))
    assert rows[0]["status"] == "nan_loss" and int(rows[0]["epochs_run"]) < 8


def test_dataloader_carries_unreadable_files_to_the_warning(tmodels, dataset_copy, caplog):
    from pokedex_trainer.data.scan import scan_dataset
    from pokedex_trainer.data.feeding import BatchLoader, BatchSource
    from pokedex_trainer.backends.torch.feeding import make_data_loader

    bad = dataset_copy / "León" / "León_0002.jpg"
    bad.write_bytes(bad.read_bytes()[:150])
    index = scan_dataset(dataset_copy)
    plan = BatchLoader(BatchSource(index.root, index.samples, (32, 32), training=False), 9,
                       shuffle=False)
    loader = make_data_loader(plan, use_cuda=False)
    failures = []
    with caplog.at_level("WARNING"):
        for epoch in range(2):  # two epochs, one warning
            loader.set_epoch(epoch)
            for images, labels, failed in loader:
                assert images.shape == (9, 32, 32, 3)
                failures += failed
    assert {path for path, _ in failures} == plan.unreadable == {"León/León_0002.jpg"}
    assert caplog.text.count("skipped unreadable image León/León_0002.jpg") == 1
