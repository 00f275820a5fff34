"""kill -9 at any moment of a save leaves a run that --resume, evaluate.py and export.py read."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, nth_commit, run_with_signal_at, tiny_run_argv

MOMENTS = {
    # the resume state of epoch 2 is written, its state.json not yet
    "before_state_json": nth_commit("state.json", 2),
    # the weights and optimizer of epoch 2 are written, not yet renamed into resume/
    "before_state_folder": "name[0] == 'resume_epoch_002'",
    # the periodic model of epoch 2 is half-way (its temporary file exists)
    "inside_model_save": "name[1] == 'tiny_torch_epoch_002.pth'",
}


def _run(tmp_path, *argv):
    return subprocess.run([sys.executable, *argv], cwd=tmp_path, capture_output=True,
                          text=True, timeout=600)


# all slow (about 30 s each on 2 cores): the default set's kill-and-resume case is
# test_resume.py's tiny_torch one
@pytest.mark.parametrize("moment", [
    pytest.param("before_state_json", marks=pytest.mark.slow),
    pytest.param("before_state_folder", marks=pytest.mark.slow),
    pytest.param("inside_model_save", marks=pytest.mark.slow)])
def test_kill_during_a_save_leaves_a_run_that_resumes_evaluates_and_exports(
        tmp_path, tiny_dataset, moment):
    run_dir = tmp_path / "runs" / "run"
    argv = [str(ROOT / "train_professional_models.py"),
            *tiny_run_argv(tiny_dataset, tmp_path, "tiny_torch", "--save_every", "1", epochs=3,
                           run_name="run")]
    killed = run_with_signal_at(tmp_path, argv, MOMENTS[moment])
    assert killed.returncode == -9, killed.stderr[-2000:]
    # a stray file that looks like the old temporary names must not be taken for a model
    (run_dir / ".tiny_torch_best.x1y2z3.pth").write_bytes(b"not a model")

    evaluated = _run(tmp_path, str(ROOT / "evaluate.py"), "--run_dir", str(run_dir),
                     "--latency_runs", "2")
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    assert "tiny_torch_best.pth" in evaluated.stdout
    resumed = _run(tmp_path, str(ROOT / "train_professional_models.py"), "--resume",
                   str(run_dir))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    with open(run_dir / "history.csv", encoding="utf-8") as handle:
        assert [row["epoch"] for row in csv.DictReader(handle)] == ["1", "2", "3"]
    assert not (run_dir / "resume").exists()  # finished: its resume state is dropped
    assert not (run_dir / ".partial").exists()
    exported = _run(tmp_path, str(ROOT / "export.py"), "--run_dir", str(run_dir),
                    "--formats", "onnx", "--check_images", "6")
    assert exported.returncode == 0, exported.stderr[-2000:]


def test_best_model_is_found_by_its_exact_name(tmp_path):
    from pokedex_trainer.runs.layout import RunLayout
    from pokedex_trainer.networks import get_spec
    from pokedex_trainer.config import TrainConfig
    from pokedex_trainer.runs.finished import best_model_of
    from pokedex_trainer.user_io.atomic import atomic_write_json

    atomic_write_json(tmp_path / "config.json", TrainConfig(model_type="tiny_torch").to_dict())
    for name in (".tiny_torch_best.abc.pth", "a_best.pth", "tiny_torch_best.pth.tmp"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / ".partial").mkdir()
    (tmp_path / ".partial" / "tiny_torch_best.q.pth").write_bytes(b"")
    with pytest.raises(Exception, match="holds no best model"):
        best_model_of(tmp_path)
    (tmp_path / "tiny_torch_best.pth").write_bytes(b"")
    assert best_model_of(tmp_path) == tmp_path / "tiny_torch_best.pth"
    assert RunLayout.for_spec(tmp_path, get_spec("tiny_torch")).best_model == \
        Path(tmp_path / "tiny_torch_best.pth")
