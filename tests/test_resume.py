"""A run killed mid-way continues at the right epoch and phase with the same best score."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT


def _start(tmp_path, data, model_type, *extra):
    argv = [sys.executable, str(ROOT / "train_professional_models.py"), "--data_path", str(data),
            "--model_type", model_type, "--weights", "none", "--image_size", "32", "32",
            "--batch_size", "8", "--val_split", "0.25", "--test_split", "0.25",
            "--epochs", "3", "--fine_tune_epochs", "2", "--workers", "1",
            "--output_dir", str(tmp_path / "runs"), "--log_dir", str(tmp_path / "tb"),
            "--run_name", "run", "--histogram_freq", "0", *extra]
    return subprocess.Popen(argv, cwd=tmp_path, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def _wait_for_epoch(process, state_path: Path, epochs: int, timeout: float = 300) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if state_path.exists():
            try:
                state = json.loads(state_path.read_text())
            except ValueError:
                state = None
            if state and state["next_epoch"] >= epochs:
                return state
        if process.poll() is not None:
            pytest.fail(f"training ended early: {process.stderr.read()[-2000:]}")
        time.sleep(0.2)
    process.kill()
    pytest.fail("training did not reach the epoch in time")


def _history(run_dir):
    with open(run_dir / "history.csv", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _resume(tmp_path):
    return subprocess.run([sys.executable, str(ROOT / "train_professional_models.py"),
                           "--resume", str(tmp_path / "runs" / "run"), "--workers", "0"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("model_type", ["resnet", "mobilenet"])
def test_sigkill_then_resume_continues_at_the_right_epoch_and_phase(tmp_path, tiny_dataset,
                                                                    model_type):
    run_dir = tmp_path / "runs" / "run"
    process = _start(tmp_path, tiny_dataset, model_type, "--save_every", "2")
    saved = _wait_for_epoch(process, run_dir / "resume" / "state.json", 2)
    process.send_signal(signal.SIGKILL)
    process.wait()
    best_before = saved["run_state"]["tracker"]["best"]
    result = _resume(tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    history = _history(run_dir)
    epochs = [int(r["epoch"]) for r in history]
    assert epochs == [1, 2, 3, 4, 5]  # nothing repeated, nothing skipped
    assert [r["phase"] for r in history] == ["head"] * 3 + ["fine_tune"] * 2
    log = (run_dir / "training.log").read_text("utf-8")
    assert f"resuming phase 'head' at epoch {saved['next_epoch'] + 1}" in log
    summary = json.loads((run_dir / "summary.json").read_text("utf-8"))
    assert float(summary["best_val_accuracy"]) >= best_before - 1e-4
    ext = ".pth" if model_type == "resnet" else ".keras"
    arch = "resnet152" if model_type == "resnet" else "mobilenet_v2"
    assert (run_dir / f"{arch}_epoch_002{ext}").exists()
    assert (run_dir / f"{arch}_epoch_004{ext}").exists()
    assert (run_dir / f"{arch}_best{ext}").exists()


def test_ctrl_c_saves_and_exits_cleanly(tmp_path, tiny_dataset):
    run_dir = tmp_path / "runs" / "run"
    process = _start(tmp_path, tiny_dataset, "resnet")
    _wait_for_epoch(process, run_dir / "resume" / "state.json", 1)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130
    assert "Traceback" not in stderr
    assert "--resume" in (run_dir / "training.log").read_text("utf-8")
    rows = list(csv.DictReader(open(tmp_path / "runs" / "experiments.csv", encoding="utf-8")))
    assert rows[-1]["status"] == "interrupted"
    assert _resume(tmp_path).returncode == 0
    assert [int(r["epoch"]) for r in _history(run_dir)] == [1, 2, 3, 4, 5]


def test_resume_of_a_folder_without_state_is_a_clear_error(tmp_path):
    (tmp_path / "runs" / "run").mkdir(parents=True)
    result = _resume(tmp_path)
    assert result.returncode == 2 and "not a run directory" in result.stderr
