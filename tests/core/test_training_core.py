"""The training core: one plateau scheduler, one phase loop over every backend, one saver."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from conftest import train_tiny_run
from pokedex_trainer.core.monitor import PlateauScheduler

# Fed to both backends as the validation loss: flat from the first epoch on.
FLAT = [1.0] * 8
# Keras' ReduceLROnPlateau with patience 2 and factor 0.5 on FLAT: halved after epochs 3 and 5
# (wait >= patience, then the count restarts), and after epoch 7.
FLAT_RATES = [1e-3, 1e-3, 1e-3, 5e-4, 5e-4, 2.5e-4, 2.5e-4, 1.25e-4]


def test_plateau_scheduler_reduces_after_patience_flat_epochs():
    plateau = PlateauScheduler(factor=0.5, patience=2)
    rates, rate = [], 1e-3
    for value in FLAT:
        rates.append(rate)
        rate = plateau.step(value, rate)
    assert rates == pytest.approx(FLAT_RATES)


def test_plateau_scheduler_matches_keras_reduce_lr_on_plateau():
    keras = pytest.importorskip("keras")
    losses = [1.0, 0.9, 0.9, 0.95, 0.90005, 0.91, 0.8, 0.8, 0.8, 0.8, 0.8, 0.7, 0.7, 0.7, 0.7,
              0.7, 0.7, 0.7, 0.7, 0.7]
    options = dict(factor=0.5, patience=2, min_delta=1e-4, cooldown=1, min_lr=1.5e-4)
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    callback = keras.callbacks.ReduceLROnPlateau(monitor="val_loss", **options)
    callback.set_model(model)
    callback.on_train_begin()
    plateau, rate = PlateauScheduler(**options), 1e-3
    for epoch, loss in enumerate(losses):
        callback.on_epoch_end(epoch, {"val_loss": loss})
        rate = plateau.step(loss, rate)
        assert rate == pytest.approx(float(model.optimizer.learning_rate), rel=1e-6), epoch
    assert rate == pytest.approx(1.5e-4)  # it did reach min_lr


def test_plateau_state_survives_a_resume():
    first = PlateauScheduler(factor=0.5, patience=3)
    for value in (1.0, 1.0, 1.0):
        first.step(value, 1e-3)
    second = PlateauScheduler(factor=0.5, patience=3)
    second.load_state_dict(json.loads(json.dumps(first.state_dict())))
    assert second.step(1.0, 1e-3) == pytest.approx(5e-4)


def _scripted_validation(monkeypatch, backend_class, losses):
    """Make ``backend_class.evaluate('val')`` report ``losses`` one epoch after the other."""
    original, calls = backend_class.evaluate, []

    def evaluate(self, split):
        if split != "val":
            return original(self, split)
        calls.append(split)
        return {"loss": losses[len(calls) - 1], "accuracy": 0.5, "top5_accuracy": 1.0}

    monkeypatch.setattr(backend_class, "evaluate", evaluate)


def _rates(run_dir: Path) -> list[float]:
    with open(run_dir / "history.csv", encoding="utf-8") as handle:
        return [float(row["learning_rate"]) for row in csv.DictReader(handle)]


def test_both_backends_give_the_same_learning_rates_for_the_same_metrics(
        monkeypatch, tmp_path, tiny_dataset):
    from pokedex_trainer.backends.keras.trainer import KerasTrainingBackend
    from pokedex_trainer.backends.torch.trainer import TorchTrainingBackend

    runs = {}
    for model_type, backend in (("tiny_keras", KerasTrainingBackend), ("tiny_torch", TorchTrainingBackend)):
        _scripted_validation(monkeypatch, backend, FLAT)
        runs[model_type] = train_tiny_run(
            tiny_dataset, tmp_path / model_type, model_type, "--epochs", str(len(FLAT)),
            "--patience", "100", "--lr_patience", "2", "--lr_factor", "0.5")
    assert _rates(runs["tiny_keras"]) == pytest.approx(FLAT_RATES)
    assert _rates(runs["tiny_torch"]) == pytest.approx(FLAT_RATES)
    log = (runs["tiny_torch"] / "training.log").read_text("utf-8")
    assert "epoch 3: val_loss has not improved for 2 epochs, learning rate 0.001 -> 0.0005" in log


LEGACY = Path(__file__).parents[1] / "fixtures" / "legacy_v1"


@pytest.fixture
def legacy(tmp_path, monkeypatch) -> Path:
    """A copy of run directories written by the version before the training core (e596e08):
    a finished and a killed run of each tiny network, their experiments.csv, their data."""
    root = tmp_path / "legacy"
    shutil.copytree(LEGACY, root)
    monkeypatch.chdir(root)  # the runs name their data and output folders relatively
    return root


def test_runs_of_the_previous_version_evaluate_export_and_resume(legacy):
    from pokedex_trainer.cli.commands import evaluate_main, export_main, run_main, train_main

    for name in ("tiny_keras_finished", "tiny_torch_finished"):
        assert run_main(evaluate_main, ["--run_dir", f"runs/{name}", "--latency_runs", "2"]) \
            == 0
        assert (legacy / "runs" / name / "evaluation" / "metrics.json").is_file()
        assert run_main(export_main, ["--run_dir", f"runs/{name}", "--formats", "onnx",
                                      "--check_images", "6"]) == 0
    for name in ("tiny_keras_killed", "tiny_torch_killed"):
        assert run_main(train_main, ["--resume", f"runs/{name}", "--workers", "0"]) == 0
        with open(legacy / "runs" / name / "history.csv", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        assert [(r["epoch"], r["phase"]) for r in rows] == [
            ("1", "head"), ("2", "head"), ("3", "head"), ("4", "fine_tune")]
        # finished now: its resume state is dropped (a config of the old version has no
        # keep_resume, which means the default)
        assert not (legacy / "runs" / name / "resume").exists()
    with open(legacy / "runs" / "experiments.csv", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["run_name"], r["status"]) for r in rows] == [
        ("tiny_keras_finished", "completed"), ("tiny_keras_killed", "interrupted"),
        ("tiny_torch_finished", "completed"), ("tiny_torch_killed", "interrupted"),
        ("tiny_keras_killed", "completed"), ("tiny_torch_killed", "completed")]
    assert all(Path(r["run_dir"]).name == r["run_name"] for r in rows)
    # the framework column came later: old rows leave it empty (unknown), new rows name it
    assert [r["framework"] for r in rows] == ["", "", "", "", "keras", "pytorch"]
    from pokedex_trainer.runs.experiments_table import read_experiment_rows

    upgraded = read_experiment_rows(legacy / "runs" / "experiments.csv")
    assert [r["framework"] for r in upgraded][-2:] == ["keras", "pytorch"]


def test_an_older_experiments_table_is_migrated_not_misaligned(tmp_path):
    from pokedex_trainer.runs.experiments_table import (
        EXPERIMENT_COLUMNS,
        append_experiment,
        read_experiments,
    )

    path = tmp_path / "experiments.csv"
    older = [c for c in EXPERIMENT_COLUMNS if c not in ("sampler", "class_weight")]
    old_row = {c: f"old_{c}" for c in older}
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=older + ["note_by_user"], lineterminator="\n")
        writer.writeheader()
        writer.writerow({**old_row, "note_by_user": "keep me"})
    append_experiment(path, {c: f"new_{c}" for c in EXPERIMENT_COLUMNS})
    rows = read_experiments(path)
    assert list(rows[0]) == EXPERIMENT_COLUMNS + ["note_by_user"]
    assert rows[0]["learning_rate"] == "old_learning_rate" and rows[0]["sampler"] == ""
    assert rows[0]["note_by_user"] == "keep me"
    assert rows[1]["sampler"] == "new_sampler" and rows[1]["run_dir"] == "new_run_dir"
    assert rows[1]["note_by_user"] == ""
