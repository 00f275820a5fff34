"""Class imbalance and reproducibility: same meaning in Keras and PyTorch, recorded per run."""

from __future__ import annotations

import csv
import json
import shutil
from dataclasses import replace

import numpy as np
import pytest

from pokedex_trainer.data.balance import balanced_class_weights, imbalance_ratio
from pokedex_trainer.config import TrainConfig
from pokedex_trainer.data.scan import scan_dataset
from pokedex_trainer.data.feeding import BatchLoader, BatchSource


def test_balanced_class_weights_as_computed_by_hand():
    weights = balanced_class_weights([0] * 10 + [1] * 5, 2)
    assert np.allclose(weights, [15 / (2 * 10), 15 / (2 * 5)])  # 0.75, 1.5
    assert imbalance_ratio([10, 5]) == 2.0


def test_weighted_loss_is_the_same_in_pytorch_and_keras():
    torch = pytest.importorskip("torch")
    from pokedex_trainer.backends.torch.runner import _WeightedLoss

    logits = np.array([[2.0, 0.5], [0.1, 1.0], [1.5, 1.4]], dtype=np.float32)
    labels = np.array([0, 1, 1])
    weights = np.array([0.75, 1.5], dtype=np.float32)
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    by_hand = np.mean(weights[labels] * -np.log(probabilities[np.arange(3), labels]))
    torch_loss = _WeightedLoss(torch.tensor(weights))(torch.tensor(logits), torch.tensor(labels))
    assert float(torch_loss) == pytest.approx(by_hand, rel=1e-5)
    unweighted = np.mean(-np.log(probabilities[np.arange(3), labels]))
    assert by_hand != pytest.approx(unweighted)

    keras = pytest.importorskip("keras")
    keras_loss = keras.losses.SparseCategoricalCrossentropy()(
        labels, probabilities, sample_weight=weights[labels])
    assert float(keras_loss) == pytest.approx(by_hand, rel=1e-5)


def test_keras_dataset_carries_the_class_weights(tiny_dataset):
    pytest.importorskip("keras")
    from pokedex_trainer.backends.keras.keras_backends import keras_on_current_backend

    index = scan_dataset(tiny_dataset)
    loader = BatchLoader(BatchSource(index.root, index.samples, (32, 32), training=False), 12,
                         shuffle=False)
    feed = keras_on_current_backend().feed(loader, (32, 32), class_weights=[0.5, 1.0, 2.0])
    images, labels, weights = next(iter(feed))
    assert np.allclose(weights.numpy(), np.array([0.5, 1.0, 2.0])[labels.numpy()])


def test_balanced_sampler_evens_out_the_classes(tiny_dataset):
    index = scan_dataset(tiny_dataset)
    skewed = [s for s in index.samples if s[1] == 0] + \
        [s for s in index.samples if s[1] == 1][:3]  # 12 vs 3
    source = BatchSource(index.root, skewed, (32, 32), training=False)
    plain = BatchLoader(source, 5, shuffle=True, seed=1)
    balanced = BatchLoader(source, 5, shuffle=True, seed=1, balanced=True)
    labels = [s[1] for s in skewed]

    def counts(loader):
        drawn = [labels[i] for epoch in range(20) for b in loader.batch_indices(epoch)
                 for i in b]
        return np.bincount(drawn, minlength=2)

    assert counts(plain).tolist() == [240, 60]
    balanced_counts = counts(balanced)
    assert balanced_counts.sum() == 300 and abs(balanced_counts[0] - 150) < 30


def test_imbalance_warning_suggests_the_flags(dataset_copy):
    from pokedex_trainer.runs.opening import prepare_data

    for path in sorted((dataset_copy / "Gato").iterdir())[4:]:
        path.unlink()
    extra = dataset_copy / "Perro"
    for i, path in enumerate(sorted(extra.iterdir())):
        shutil.copy(path, extra / f"copy_{i}.jpg")  # Perro 24, Gato 4
    config = TrainConfig(data_path=str(dataset_copy), model_type="mobilenet",
                         image_size=(32, 32), val_split=0.25, test_split=0.25).resolved()
    notes = prepare_data(config)[2]
    assert any("--class_weight balanced or --sampler balanced" in n for n in notes)
    config = replace(config, class_weight="balanced")
    assert not any("imbalanced" in n for n in prepare_data(config)[2])


def _seeded_run(tmp_path, data, name, *extra):
    from pokedex_trainer.cli.commands import run_main, train_main

    argv = ["--data_path", str(data), "--output_dir", str(tmp_path / "runs"), "--log_dir",
            str(tmp_path / "tb"), "--image_size", "32", "32", "--batch_size", "8",
            "--workers", "0", "--val_split", "0.25", "--test_split", "0.25", "--model_type",
            "tiny_torch", "--weights", "none", "--epochs", "1", "--fine_tune_epochs", "0",
            "--seed", "7", "--deterministic", "--histogram_freq", "0", "--run_name", name,
            *extra]
    assert run_main(train_main, argv) == 0
    return tmp_path / "runs" / name


def test_seeded_runs_repeat_and_record_what_it_takes(tmp_path, tiny_dataset):
    pytest.importorskip("torch")
    first = _seeded_run(tmp_path, tiny_dataset, "a", "--class_weight", "balanced",
                        "--sampler", "balanced")
    second = _seeded_run(tmp_path, tiny_dataset, "b", "--class_weight", "balanced",
                         "--sampler", "balanced")
    manifests = [json.loads((d / "split_manifest.json").read_text("utf-8"))["splits"]
                 for d in (first, second)]
    assert manifests[0] == manifests[1]
    histories = [list(csv.DictReader(open(d / "history.csv", encoding="utf-8")))[0]
                 for d in (first, second)]
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        assert histories[0][key] == histories[1][key], key
    config = json.loads((first / "config.json").read_text("utf-8"))
    assert (config["class_weight"], config["sampler"], config["seed"]) == ("balanced",
                                                                           "balanced", 7)
    environment = json.loads((first / "summary.json").read_text("utf-8"))["environment"]
    assert environment["device"] == "cpu"
    assert environment["libraries"]["torch"] and environment["libraries"]["albumentations"]
    rows = list(csv.DictReader(open(tmp_path / "runs" / "experiments.csv", encoding="utf-8")))
    assert rows[0]["class_weight"] == "balanced" and rows[0]["sampler"] == "balanced"
