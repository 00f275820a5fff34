"""The benchmark scripts run for a user: --help, and a tiny input-pipeline measurement."""

import json
import subprocess
import sys

import pytest

from conftest import ROOT


@pytest.mark.parametrize("script", ["input_pipeline.py", "train_throughput.py"])
def test_help(script):
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--help"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "usage:" in result.stdout


def test_input_pipeline_writes_a_table_and_json(tmp_path):
    output = tmp_path / "result.json"
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "input_pipeline.py"),
                             "--sizes", "64", "--images", "8", "--batch_size", "4",
                             "--max_workers", "1", "--data_dir", str(tmp_path / "data"),
                             "--output", str(output)], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = json.loads(output.read_text())["rows"]
    assert [(r["runner"], r["workers"]) for r in rows] == [("bare", 0), ("loader", 0),
                                                           ("loader", 1)]
    assert all(r["images_per_second"] > 0 for r in rows)
    assert "bare loop" in result.stdout
