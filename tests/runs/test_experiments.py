"""Grid loops: concurrent runs never share files; the experiments view sorts and plots."""

from __future__ import annotations

import csv
import subprocess
import sys

from PIL import Image

from conftest import ROOT
from pokedex_trainer.runs.experiments_view import (
    show_experiments,
    sort_rows,
    varied_hyperparameters,
)
from pokedex_trainer.runs.experiments_table import append_experiment


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


def _grid_row(path, name, lr, fine_tune_epochs, epochs_run, run_dir=""):
    append_experiment(path, {"run_name": name, "model_type": "efficientnet",
                             "status": "completed", "learning_rate": lr, "epochs": 20,
                             "fine_tune_epochs": fine_tune_epochs,
                             "fine_tune_learning_rate": 0.0001, "epochs_run": epochs_run,
                             "best_val_accuracy": 0.5, "run_dir": run_dir})


def test_experiments_view_marks_what_varied_and_which_phases_ran(tmp_path, capsys):
    from pokedex_trainer.runs.experiments_view import phases_run

    table = tmp_path / "experiments.csv"
    for lr in ("0.0001", "0.001", "0.005"):
        _grid_row(table, f"lr_{lr}", lr, 30, 50)  # the guide's loop: phase 2 in every run
    show_experiments(tmp_path)
    out = capsys.readouterr().out.splitlines()
    header = out[0].split()
    assert "learning_rate*" in header and header[-1] == "phases"
    assert all(line.split()[-1] == "1+2" for line in out[1:4])
    assert "* varied across these runs: learning_rate (3 values)" in out
    assert any(line.startswith("the same in every run: ") and "fine_tune_epochs=30" in line
               for line in out)
    assert any(line.startswith("every run also trained phase 2 (30 fine-tune epochs at "
                               "0.0001)") for line in out)
    run = tmp_path / "phase1_only"
    run.mkdir()
    (run / "history.csv").write_text("epoch,phase,loss\n0,head,1.0\n1,head,0.9\n",
                                     encoding="utf-8")
    assert phases_run({"run_dir": str(run), "epochs": "20", "fine_tune_epochs": "30",
                       "epochs_run": "20"}) == "1"  # the history says what really ran
    assert phases_run({"epochs": "20", "fine_tune_epochs": "0", "epochs_run": "12"}) == "1"
    assert phases_run({"epochs": "0", "fine_tune_epochs": "5", "epochs_run": "5"}) == "2"


def test_a_grid_with_and_without_phase_2_says_so(tmp_path, capsys):
    table = tmp_path / "experiments.csv"
    _grid_row(table, "with", "0.001", 30, 50)
    _grid_row(table, "without", "0.001", 0, 20)
    show_experiments(tmp_path)
    out = capsys.readouterr().out.splitlines()
    assert "fine_tune_epochs*" in out[0].split()
    phases = {line.split()[0]: line.split()[-1] for line in out[1:3]}
    assert phases == {"with": "1+2", "without": "1"}
    assert not any(line.startswith("every run also trained phase 2") for line in out)
