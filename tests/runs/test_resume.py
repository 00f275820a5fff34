"""A run killed mid-way continues at the right epoch and phase with the same best score."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest

from conftest import (ROOT, SHOW_SEGMENTS, live_segments, nth_commit, run_with_signal_at,
                      shown_segments, tiny_run_argv)


def _argv(tmp_path, data, model_type, *extra):
    return [ROOT / "train_professional_models.py", *tiny_run_argv(
        data, tmp_path, model_type, "--val_split", "0.25", "--test_split", "0.25",
        "--epochs", "3", "--fine_tune_epochs", "2", "--workers", "1", *extra, run_name="run")]


def _history(run_dir):
    with open(run_dir / "history.csv", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _resume(tmp_path):
    return subprocess.run([sys.executable, str(ROOT / "train_professional_models.py"),
                           "--resume", str(tmp_path / "runs" / "run"), "--workers", "0"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("model_type", [
    "tiny_torch", pytest.param("tiny_keras", marks=pytest.mark.slow)])  # Keras: 22 s on 2 cores
def test_sigkill_then_resume_continues_at_the_right_epoch_and_phase(tmp_path, tiny_dataset,
                                                                    model_type):
    run_dir = tmp_path / "runs" / "run"
    killed = run_with_signal_at(tmp_path, _argv(tmp_path, tiny_dataset, model_type,
                                                "--save_every", "2"),
                                nth_commit("state.json", 2), after=True)
    assert killed.returncode == -9, killed.stderr[-2000:]
    saved = json.loads((run_dir / "resume" / "state.json").read_text("utf-8"))
    assert saved["next_epoch"] == 2
    best_before = saved["run_state"]["tracker"]["best"]
    result = _resume(tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    history = _history(run_dir)
    epochs = [int(r["epoch"]) for r in history]
    assert epochs == [1, 2, 3, 4, 5]  # nothing repeated, nothing skipped
    assert [r["phase"] for r in history] == ["head"] * 3 + ["fine_tune"] * 2
    log = (run_dir / "training.log").read_text("utf-8")
    assert "resuming phase 'head' at epoch 3" in log
    summary = json.loads((run_dir / "summary.json").read_text("utf-8"))
    assert float(summary["best_val_accuracy"]) >= best_before - 1e-4
    ext = ".pth" if model_type == "tiny_torch" else ".keras"
    for name in ("epoch_002", "epoch_004", "best"):
        assert (run_dir / f"{model_type}_{name}{ext}").exists()


# The Keras case (graceful stop through tf.data, about 20-30 s) runs in the slow set: the
# default set keeps the PyTorch one and stays within its time.
@pytest.mark.parametrize("model_type, workers", [
    ("tiny_torch", "1"), pytest.param("tiny_keras", "0", marks=pytest.mark.slow)])
def test_ctrl_c_saves_and_exits_cleanly(tmp_path, tiny_dataset, model_type, workers):
    """Ctrl-C right after an epoch is saved, to the trainer and its loader workers (Keras
    with no worker: the loader runs inside TensorFlow's data pipeline)."""
    run_dir = tmp_path / "runs" / "run"
    argv = _argv(tmp_path, tiny_dataset, model_type, "--workers", workers)
    result = run_with_signal_at(tmp_path, argv, nth_commit("state.json", 1), after=True,
                                action=SHOW_SEGMENTS + "os.killpg(os.getpgid(0), signal.SIGINT)")
    assert result.returncode == 130, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    pid, segments = shown_segments(result.stdout)
    rings = 2 if workers != "0" else 0  # train and validation loaders, with workers
    assert len(segments) == rings * (int(workers) * 2 + 1)
    assert live_segments(pid) == []  # unlinked by the trainer on its way out
    assert "--resume" in (run_dir / "training.log").read_text("utf-8")
    rows = list(csv.DictReader(open(tmp_path / "runs" / "experiments.csv", encoding="utf-8")))
    assert rows[-1]["status"] == "interrupted"
    assert _resume(tmp_path).returncode == 0
    assert [int(r["epoch"]) for r in _history(run_dir)] == [1, 2, 3, 4, 5]


@pytest.mark.slow
@pytest.mark.parametrize("model_type", ["tiny_torch", "tiny_keras"])
def test_sigterm_stops_like_ctrl_c(tmp_path, tiny_dataset, model_type):
    """kill, timeout, docker stop and scancel send SIGTERM, to the trainer alone."""
    run_dir = tmp_path / "runs" / "run"
    result = run_with_signal_at(tmp_path, _argv(tmp_path, tiny_dataset, model_type),
                                nth_commit("state.json", 1), after=True,
                                action="os.kill(os.getpid(), signal.SIGTERM)")
    assert result.returncode == 130, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    rows = list(csv.DictReader(open(tmp_path / "runs" / "experiments.csv", encoding="utf-8")))
    assert rows[-1]["status"] == "interrupted"
    assert "--resume" in (run_dir / "training.log").read_text("utf-8")
    assert _resume(tmp_path).returncode == 0
    assert [int(r["epoch"]) for r in _history(run_dir)] == [1, 2, 3, 4, 5]


def test_resume_of_a_folder_without_state_is_a_clear_error(tmp_path):
    (tmp_path / "runs" / "run").mkdir(parents=True)
    result = _resume(tmp_path)
    assert result.returncode == 2 and "not a run directory" in result.stderr
