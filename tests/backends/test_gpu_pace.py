"""The GPU's own pace (issue #23), what a CPU can check: a step that never waits for the
device, --compile on every route, the backend order by measured speed, and the one GPU check
(benchmarks/gpu_smoke.sh) kept working with ALLOW_CPU=1."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from conftest import ROOT
from pokedex_trainer.backends.torch.runner import EpochMeter


def _reference(batches, k=5):
    loss = correct = top5 = count = 0.0
    for value, logits, labels in batches:
        n = len(labels)
        top = logits.topk(k, dim=1).indices
        loss += float(value) * n
        correct += float((top[:, 0] == labels).sum())
        top5 += float((top == labels[:, None]).any(dim=1).sum())
        count += n
    return {"loss": loss / count, "accuracy": correct / count, "top5_accuracy": top5 / count}


def test_the_epoch_meter_adds_up_on_the_device_without_reading_it(monkeypatch):
    """No host synchronization per step: update() never turns a tensor into a Python number
    (on a GPU each would wait for the step to finish); results() reads once, and agrees."""
    generator = torch.Generator().manual_seed(0)
    batches = [(torch.rand((), generator=generator) * 3, torch.randn(8, 7, generator=generator),
                torch.randint(0, 7, (8,), generator=generator)) for _ in range(5)]
    meter = EpochMeter(7, torch.device("cpu"))

    def refuse(*args, **kwargs):
        raise AssertionError("a device tensor was read on the host inside the step")

    with monkeypatch.context() as patched:
        for name in ("item", "tolist", "__float__", "__int__", "__bool__"):
            patched.setattr(torch.Tensor, name, refuse)
        for value, logits, labels in batches:
            meter.update(value, logits, labels)
    results = meter.results()
    expected = _reference(batches)
    assert results == pytest.approx(expected, rel=1e-6)
    assert meter.finite
    meter.update(torch.tensor(float("nan")), batches[0][1], batches[0][2])
    assert not meter.snapshot().finite  # the NaN check reads the device at the redraws


def test_compile_is_one_option_for_every_route(tmp_path):
    """--compile: torch.compile on PyTorch, jit_compile=True on Keras (which on PyTorch wraps
    the step in torch.compile); off by default, where Keras' own 'auto' stands."""
    import keras

    from pokedex_trainer.cli.parsers import build_train_parser
    from pokedex_trainer.config import TrainConfig
    from pokedex_trainer.backends.keras.trainer import compile_model

    parser = build_train_parser()
    assert parser.parse_args(["--compile"]).compile is True
    assert parser.parse_args([]).compile is False
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax")])
    compile_model(model, 1e-3, 3, TrainConfig(compile=True))
    assert model.jit_compile is True


@pytest.mark.slow
def test_gpu_smoke_runs_without_a_gpu_and_prints_one_table(tmp_path):
    """ALLOW_CPU=1: the bare loops, the step and the trainer of two routes, one table."""
    env = dict(os.environ, ALLOW_CPU="1", MODELS="mobilenet", BACKENDS="torch",
               RESULTS=str(tmp_path / "results"), PATH=os.environ["PATH"])
    result = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_smoke.sh")], cwd=ROOT,
                            env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    table = (tmp_path / "results" / "gpu_smoke_table.md").read_text()
    for route in ("| mobilenet | PyTorch |", "| mobilenet | Keras on torch |"):
        line = next((row for row in table.splitlines() if row.startswith(route)), None)
        assert line is not None, table
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        assert "-" not in (cells[4], cells[5], cells[8]), line  # bare, step, trainer measured
    assert "failed or timed out" not in result.stdout, result.stdout


def test_the_jax_route_writes_tensorboard_without_loading_pytorch(tmp_path):
    """A Keras/JAX run must load neither PyTorch nor TensorFlow (and their own CUDA
    libraries) into the process whose GPU JAX drives: its event files come from the
    tensorboard package alone, with the tags and summaries of the other writers."""
    code = f"""
import sys
import numpy as np
from pathlib import Path
sys.path.insert(0, {str(ROOT)!r})
from pokedex_trainer.backends.keras.tensorboard_writers import EventWriter
loaded = set(sys.modules)
writer = EventWriter(Path({str(tmp_path)!r}))
writer.scalar("train", "epoch_loss", 0.5, 0)
writer.scalar("val", "epoch_accuracy", 0.75, 0)
writer.histogram("dense/kernel/histogram", np.linspace(-1, 1, 100), 0)
writer.image("augmented_samples", np.zeros((16, 24, 3), np.uint8), 0)
writer.close()
new = sorted(m for m in set(sys.modules) - loaded
             if m.split(".")[0] == "tensorflow" or m.startswith("torch.utils.tensorboard"))
assert not new, new
"""
    # Keras itself runs on PyTorch here (this machine's test environment has no JAX); what
    # the writer adds to the process is what is checked.
    env = dict(os.environ, KERAS_BACKEND="torch")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train = EventAccumulator(str(tmp_path / "train"), size_guidance={"histograms": 0,
                                                                     "images": 0}).Reload()
    assert train.Scalars("epoch_loss")[0].value == 0.5
    histogram = train.Histograms("dense/kernel/histogram")[0].histogram_value
    assert histogram.num == 100 and histogram.min == -1 and histogram.max == 1
    image = train.Images("augmented_samples")[0]
    assert (image.width, image.height) == (24, 16)
    validation = EventAccumulator(str(tmp_path / "validation")).Reload()
    assert validation.Scalars("epoch_accuracy")[0].value == 0.75


@pytest.mark.slow
def test_compile_trains_a_pytorch_run_with_cudnn_benchmark_on(tmp_path, tiny_dataset):
    """--compile on the PyTorch route: the training forward pass through torch.compile (a
    compiled module has no len(): ``module or self.model`` broke it); cuDNN's kernel search is
    on unless --deterministic."""
    import json

    from conftest import train_tiny_run

    torch.backends.cudnn.benchmark = False
    run = train_tiny_run(tiny_dataset, tmp_path, "tiny_torch", "--compile")
    assert json.loads((run / "summary.json").read_text("utf-8"))["status"] == "completed"
    assert json.loads((run / "config.json").read_text("utf-8"))["compile"] is True
    assert torch.backends.cudnn.benchmark is True
