"""Grid loops: concurrent runs never share files; the experiments view sorts and plots."""

from __future__ import annotations

import csv
import subprocess
import sys

from PIL import Image

from conftest import ROOT
from pokedex_trainer.experiments import show_experiments, sort_rows, varied_hyperparameters
from pokedex_trainer.records import append_experiment


def test_two_runs_started_at_once_append_two_rows_and_share_no_files(tmp_path, tiny_dataset):
    def start(lr):
        return subprocess.Popen(
            [sys.executable, str(ROOT / "train_professional_models.py"), "--data_path",
             str(tiny_dataset), "--model_type", "tiny_torch", "--weights", "none", "--image_size",
             "32", "32", "--batch_size", "8", "--epochs", "1", "--fine_tune_epochs", "0",
             "--val_split", "0.25", "--test_split", "0.25", "--workers", "0",
             "--learning_rate", lr, "--histogram_freq", "0",
             "--output_dir", str(tmp_path / "runs"), "--log_dir", str(tmp_path / "tb")],
            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    processes = [start("0.001"), start("0.0001")]
    for process in processes:
        _, err = process.communicate(timeout=600)
        assert process.returncode == 0, err[-2000:]
    rows = list(csv.DictReader(open(tmp_path / "runs" / "experiments.csv", encoding="utf-8")))
    assert sorted(r["learning_rate"] for r in rows) == ["0.0001", "0.001"]
    run_dirs = {r["run_dir"] for r in rows}
    assert len(run_dirs) == 2  # same model type, same second: still two directories
    assert len(list((tmp_path / "tb").iterdir())) == 2


def _row(path, name, lr, accuracy, status="completed"):
    append_experiment(path, {"run_name": name, "model_type": "mobilenet", "status": status,
                             "learning_rate": lr, "best_val_accuracy": accuracy,
                             "batch_size": 64, "image_size": "224x224"})


def test_experiments_view_sorts_and_plots(tmp_path, capsys):
    table = tmp_path / "experiments.csv"
    _row(table, "lr_0.0001", 0.0001, "0.8100")
    _row(table, "lr_0.001", 0.001, "0.9300")
    _row(table, "lr_0.005", 0.005, "0.7000")
    _row(table, "lr_0.0005", 0.0005, "", status="interrupted")
    rows = show_experiments(tmp_path)
    assert [r["run_name"] for r in rows] == ["lr_0.001", "lr_0.0001", "lr_0.005", "lr_0.0005"]
    out = capsys.readouterr().out
    assert "best best_val_accuracy: 0.9300 -- lr_0.001 (learning_rate=0.001)" in out
    assert varied_hyperparameters(rows) == ["learning_rate"]
    with Image.open(tmp_path / "experiments.png") as image:
        assert image.size[0] >= 400 and image.size[1] >= 300
    assert [r["run_name"] for r in sort_rows(rows, "duration_s")][-1] == "lr_0.0005"


def test_experiments_command_line(tmp_path):
    table = tmp_path / "experiments.csv"
    _row(table, "a", 0.001, "0.5")
    _row(table, "b", 0.01, "0.6")
    result = subprocess.run([sys.executable, "evaluate.py", "--experiments", str(tmp_path)],
                            cwd=ROOT, capture_output=True, text=True)
    lines = result.stdout.splitlines()
    assert result.returncode == 0, result.stderr
    assert lines[1].startswith("b ") and lines[2].startswith("a ")
    missing = subprocess.run([sys.executable, "evaluate.py", "--experiments",
                              str(tmp_path / "none")], cwd=ROOT, capture_output=True, text=True)
    assert missing.returncode == 2 and "no experiments table" in missing.stderr
