"""No shared-memory segment outlives a trainer: killed alone (kill -9), its workers end and
Python's resource tracker unlinks the ring and the ram cache; killed with its whole process
group, the next trainer to start removes them."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from conftest import (ROOT, SHOW_SEGMENTS, live_segments, nth_commit, run_with_signal_at,
                      shown_segments, tiny_run_argv)


def _argv(tmp_path, data, model_type, *extra):
    return [ROOT / "train_professional_models.py", *tiny_run_argv(
        data, tmp_path, model_type, "--val_split", "0.25", "--test_split", "0.25",
        "--epochs", "3", "--workers", "2", "--cache", "ram", *extra)]


def _gone(pid: int, seconds: float = 30) -> bool:
    deadline = time.monotonic() + seconds
    while live_segments(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)
    return True


@pytest.mark.slow
@pytest.mark.parametrize("model_type", ["tiny_torch", "tiny_keras"])
def test_kill_9_of_the_trainer_alone_leaves_no_segment(tmp_path, tiny_dataset, model_type):
    result = run_with_signal_at(tmp_path, _argv(tmp_path, tiny_dataset, model_type),
                                nth_commit("state.json", 1), after=True,
                                action=SHOW_SEGMENTS + "os.kill(os.getpid(), signal.SIGKILL)")
    assert result.returncode == -9, result.stderr[-2000:]
    pid, segments = shown_segments(result.stdout)
    assert len(segments) == 2 * 5 + 2  # two rings of 2 workers x 2 + 1, the cache's 2
    assert _gone(pid), live_segments(pid)


@pytest.mark.slow
def test_segments_of_a_trainer_killed_with_its_group_are_removed_by_the_next(tmp_path,
                                                                             tiny_dataset):
    result = run_with_signal_at(tmp_path, _argv(tmp_path, tiny_dataset, "tiny_torch"),
                                nth_commit("state.json", 1), after=True,
                                action=SHOW_SEGMENTS + "os.killpg(os.getpgid(0), 9)")
    assert result.returncode == -9, result.stderr[-2000:]
    pid, segments = shown_segments(result.stdout)
    time.sleep(2)
    assert live_segments(pid) == segments  # nobody was left to clean up

    argv = [str(a) for a in _argv(tmp_path, tiny_dataset, "tiny_torch", "--epochs", "1")]
    nxt = subprocess.run([sys.executable, *argv], cwd=tmp_path, capture_output=True, text=True,
                         timeout=600)
    assert nxt.returncode == 0, nxt.stderr[-2000:]
    assert live_segments(pid) == []
    assert "removed 12 shared-memory segments left by a trainer that was killed" in nxt.stderr
