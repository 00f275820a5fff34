"""--batch_size auto: doubling then bisecting against a memory limit the test sets."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT
from pokedex_trainer.core.batch_size import PeakRSS, find_batch_size
from pokedex_trainer.errors import UserError

MB = 2**20


def _allocating_step(batch: int) -> int:
    """A real "training step" whose memory grows with the batch: 4 MB of activations each."""
    with PeakRSS(interval=0.0005) as watch:
        activations = np.ones((batch, MB), dtype=np.float32)
        activations.sum()
        del activations
    return watch.peak


@pytest.mark.parametrize("resettable", [True, False])
def test_a_smaller_memory_limit_gives_a_smaller_batch(resettable):
    import psutil

    base = psutil.Process().memory_info().rss
    large = find_batch_size(_allocating_step, base + 600 * MB, "RAM", resettable, cap=512)
    small = find_batch_size(_allocating_step, base + 150 * MB, "RAM", resettable, cap=512)
    assert small.chosen < large.chosen
    assert 20 <= small.largest <= 40      # 150 MB / 4 MB per image ~ 37
    assert 80 <= large.largest <= 150     # 600 MB / 4 MB ~ 150
    assert small.chosen == int(small.largest * 0.9)
    assert any(p is None or p > small.limit_bytes for p in small.tried.values())


def test_out_of_memory_answers_stop_the_doubling():
    def measure(batch):
        return None if batch > 40 else batch * MB  # the framework's OOM above 40

    result = find_batch_size(measure, 2**40, "GPU memory", resettable=True)
    assert result.largest == 40 and result.chosen == 36


def test_nothing_fits_is_a_clear_message():
    with pytest.raises(UserError, match="even a batch of 2 does not fit"):
        find_batch_size(lambda batch: None, 2**30, "GPU memory", resettable=True)


def test_batch_size_auto_trains_with_the_found_batch(tmp_path, tiny_dataset):
    argv = [sys.executable, str(ROOT / "train_professional_models.py"), "--data_path",
            str(tiny_dataset), "--model_type", "tiny_torch", "--weights", "none", "--image_size",
            "32", "32", "--batch_size", "auto", "--epochs", "1", "--fine_tune_epochs", "0",
            "--val_split", "0.25", "--test_split", "0.25", "--workers", "0",
            "--histogram_freq", "0", "--output_dir", str(tmp_path / "runs"),
            "--log_dir", str(tmp_path / "tb"), "--run_name", "auto"]
    import psutil

    # A budget of about 1 GB above what a fresh process needs keeps the search short.
    limit = (psutil.Process().memory_info().rss // MB) + 1024
    result = subprocess.run(argv + ["--memory_limit_mb", str(limit)], cwd=tmp_path,
                            capture_output=True, text=True, timeout=600)
    if "even a batch of 2 does not fit" in result.stderr:
        pytest.fail("the budget is below a fresh process's needs: " + result.stderr[-500:])
    assert result.returncode == 0, result.stderr[-3000:]
    config = json.loads((tmp_path / "runs" / "auto" / "config.json").read_text("utf-8"))
    assert isinstance(config["batch_size"], int) and config["batch_size"] >= 1
    log = (tmp_path / "runs" / "auto" / "training.log").read_text("utf-8")
    assert f"--batch_size auto chose batch size {config['batch_size']}" in log
    tiny = subprocess.run(argv[:-2] + ["--find_batch_size", "--memory_limit_mb", "1"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert tiny.returncode == 2 and "even a batch of 2 does not fit" in tiny.stderr
