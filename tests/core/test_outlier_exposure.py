"""Outlier exposure (issue 33, --unknown_dir): one loss, by hand and in both frameworks; the
unknown photos in the one loader; bad input in one line; the effect on the network."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest

from conftest import train_tiny_run
from pokedex_trainer.core.outlier_exposure import reference_loss, sample_weights, soft_targets

PROBS = np.array([[0.8, 0.2], [0.8, 0.2], [0.3, 0.7]], np.float32)
LABELS = np.array([0, -1, 1])


def test_the_loss_worked_out_by_hand():
    # a labelled photo: -log p(class); an unknown one: -(log 0.8 + log 0.2) / 2, weighted 0.5
    expected = (-math.log(0.8) + 0.5 * -(math.log(0.8) + math.log(0.2)) / 2
                - math.log(0.7)) / 3
    assert reference_loss(PROBS, LABELS, 0.0, None, 0.5) == pytest.approx(expected, rel=1e-6)
    assert soft_targets(LABELS, 2, 0.2).ravel().tolist() == pytest.approx(
        [0.9, 0.1, 0.5, 0.5, 0.1, 0.9])
    assert sample_weights(LABELS, [2.0, 3.0], 0.5).tolist() == [2.0, 0.5, 3.0]


@pytest.mark.parametrize("smoothing, class_weights", [(0.0, None), (0.1, [2.0, 0.5])])
def test_both_frameworks_compute_the_core_loss(smoothing, class_weights):
    """Keras (its loss with the core's sample weights, as pack_batch feeds them) and PyTorch
    (the runner's exposure_loss) give the NumPy reference on the same batch."""
    import keras
    import torch

    from pokedex_trainer.backends.keras.exposure import ExposureCrossentropy
    from pokedex_trainer.backends.keras.keras_backends import pack_batch
    from pokedex_trainer.backends.torch.runner import Runner
    from pokedex_trainer.data.feeding import Batch

    expected = reference_loss(PROBS, LABELS, smoothing, class_weights, 0.5)
    _, labels, weights = pack_batch(Batch(np.zeros((3, 1, 1, 3), np.uint8),
                                          LABELS.astype(np.int32), []),
                                    class_weights=class_weights, unknown_weight=0.5)
    keras_loss = ExposureCrossentropy(2, smoothing)(labels, PROBS, sample_weight=weights)
    assert float(keras.ops.convert_to_numpy(keras_loss)) == pytest.approx(expected, rel=1e-5)
    runner = SimpleNamespace(
        context=SimpleNamespace(config=SimpleNamespace(label_smoothing=smoothing,
                                                       unknown_weight=0.5), num_classes=2),
        device=torch.device("cpu"), class_weight_list=class_weights)
    logits = torch.log(torch.from_numpy(PROBS))
    torch_loss = Runner.exposure_loss(runner, logits, torch.from_numpy(LABELS))
    assert float(torch_loss) == pytest.approx(expected, rel=1e-5)


def _noise(folder, count=40, side=40):
    from PIL import Image

    folder.mkdir(parents=True)
    rng = np.random.default_rng(5)
    for i in range(count):
        Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8)).save(
            folder / f"n{i}.png")
    return folder


def _mean_top_probability(run, folder):
    from pokedex_trainer.evaluation.predict import load_predictor
    from pokedex_trainer.runs.finished import LabelledImages

    predictor = load_predictor(next(run.glob("*_best.*")))
    images = LabelledImages(folder, predictor.info.class_names,
                            [(p.name, 0) for p in sorted(folder.iterdir())], "noise")
    x, _ = images.load_all(predictor.info.image_size)
    return float(predictor.predict(x).max(axis=1).mean())


def test_unknown_photos_teach_the_network_to_not_know(tiny_dataset, tmp_path):
    """A tiny PyTorch network trained with a folder of noise answers unseen noise with a lower
    top probability than the same run without it; the unknown photos join the training
    split only, and the experiments table records the option."""
    unknown, unseen = _noise(tmp_path / "noise"), _noise(tmp_path / "unseen", 20, 36)
    recipe = ("--epochs", "8", "--learning_rate", "0.003")
    plain = train_tiny_run(tiny_dataset, tmp_path / "plain", "tiny_torch", *recipe)
    taught = train_tiny_run(tiny_dataset, tmp_path / "taught", "tiny_torch", *recipe,
                            "--unknown_dir", str(unknown), "--unknown_weight", "1")
    # measured: 0.41 -> 0.36 (3 classes: 1/3 is uniform)
    assert _mean_top_probability(taught, unseen) < _mean_top_probability(plain, unseen) - 0.02
    manifest = json.loads((taught / "split_manifest.json").read_text("utf-8"))
    assert not [p for split in manifest["splits"].values() for p, _ in split if "n1" in p]
    table = (tmp_path / "taught" / "runs" / "experiments.csv").read_text("utf-8")
    assert "unknown_dir" in table.splitlines()[0] and str(unknown) in table
    history = (taught / "history.csv").read_text("utf-8").splitlines()
    accuracy = float(history[-1].split(",")[3])
    assert 0.0 <= accuracy <= 1.0
    # a fifth of the folder (8 of 40) is held out, and chooses the score that ships
    from pokedex_trainer.cli.commands import evaluate_main, run_main
    from pokedex_trainer.data.unknown_photos import split_unknown
    from pokedex_trainer.evaluation.unknown import SCORES

    trained, held = split_unknown(sorted(unknown.iterdir()), 42)
    assert len(held) == 8 and not set(trained) & set(held)
    assert run_main(evaluate_main, ["--run_dir", str(taught), "--output_dir",
                                    str(tmp_path / "report"), "--latency_runs", "1",
                                    "--latency_batch", "2"]) == 0
    rule = json.loads((taught / "calibration.json").read_text("utf-8"))["unknown"]
    assert rule["chosen_on"]["photos"] == "8 held-out photos of --unknown_dir"
    aurocs = rule["chosen_on"]["auroc"]
    assert set(aurocs) == set(SCORES)
    assert aurocs[rule["score"]] == pytest.approx(max(aurocs.values()), abs=1e-4)
    assert 0.0 <= rule["unknown_named"] <= 1.0


@pytest.mark.slow
def test_keras_trains_with_the_builtin_source(tiny_dataset, tmp_path):
    """--unknown_dir builtin: 500 generated images, written once beside the runs; a Keras run
    trains with them (labels of -1 through the tf.data feed and its masked metrics)."""
    run = train_tiny_run(tiny_dataset, tmp_path, "tiny_keras", "--epochs", "2",
                         "--unknown_dir", "builtin", "--class_weight", "balanced")
    folder = tmp_path / "runs" / ".pokedex_unknown_builtin" / "v1"
    assert len(list(folder.glob("*.png"))) == 500
    rows = (run / "history.csv").read_text("utf-8").splitlines()
    header = rows[0].split(",")
    for row in rows[1:]:
        values = dict(zip(header, row.split(",")))
        assert 0.0 <= float(values["accuracy"]) <= 1.0 and math.isfinite(float(values["loss"]))


def test_bad_unknown_options_are_one_line(tiny_dataset, tmp_path, capsys):
    from test_hostile import _one_line_error

    from conftest import tiny_run_argv
    from pokedex_trainer.cli.commands import run_main, train_main

    empty = tmp_path / "empty"
    empty.mkdir()
    shared = tmp_path / "shared"
    shared.mkdir()
    twin = next(tiny_dataset.rglob("*.jpg"))
    (shared / "other_name.jpg").write_bytes(twin.read_bytes())
    cases = [(["--unknown_dir", str(empty)], "holds no photo"),
             (["--unknown_dir", str(shared)], "is also the class photo"),
             (["--unknown_dir", str(tmp_path / "absent")], "is not a folder"),
             (["--unknown_dir", str(shared), "--unknown_weight", "0"], "--unknown_weight"),
             (["--unknown_weight", "2"], "--unknown_weight weighs the photos of --unknown_dir"),
             (["--unknown_dir", "builtin", "--sampler", "balanced"], "--sampler balanced")]
    for extra, message in cases:
        out = tmp_path / "out"
        argv = tiny_run_argv(tiny_dataset, out, "tiny_torch", *extra, run_name="bad")
        assert run_main(train_main, argv) == 2, extra
        assert message in _one_line_error(capsys), extra
        assert not (out / "runs" / "bad").exists(), extra


def test_an_empty_or_unreadable_unknown_dir_is_one_line_and_the_folder_is_kept_absolute(
        tiny_dataset, tmp_path, capsys, monkeypatch):
    """Found by a probe: --unknown_dir "" read the current folder; a folder of files none of
    which decodes trained with no unknown photo; a relative folder broke --resume elsewhere."""
    from test_hostile import _one_line_error

    from conftest import tiny_run_argv
    from pokedex_trainer.cli.commands import run_main, train_main
    from pokedex_trainer.config import TrainConfig

    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "b.jpg").write_bytes(b"")
    for extra, message in [(["--unknown_dir", ""], "--unknown_dir needs a folder"),
                           (["--unknown_dir", str(junk)], "can be read as a photo")]:
        argv = tiny_run_argv(tiny_dataset, tmp_path / "out", "tiny_torch", *extra,
                             run_name="bad")
        assert run_main(train_main, argv) == 2
        assert message in _one_line_error(capsys)
    monkeypatch.chdir(tmp_path)
    config = TrainConfig(data_path=str(tiny_dataset), model_type="tiny_torch",
                         framework="pytorch", unknown_dir="junk").resolved()
    assert config.unknown_dir == str(junk)
