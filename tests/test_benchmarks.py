"""The benchmark scripts run for a user: --help, and a tiny input-pipeline measurement."""

import json
import subprocess
import sys

import pytest

from conftest import ROOT


@pytest.mark.parametrize("script", ["input_pipeline.py", "train_throughput.py", "inference.py",
                                    "trainer_overhead.py"])
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


@pytest.mark.slow
def test_inference_benchmark_times_the_eager_call_and_every_export(tmp_path):
    output = tmp_path / "inference.json"
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "inference.py"),
                             "--model_types", "mobilenet", "--image_size", "32", "--batch", "2",
                             "--runs", "2", "--tflite_precisions", "float16",
                             "--output", str(output)], capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = json.loads(output.read_text())["rows"]
    assert [r["runtime"] for r in rows] == ["eager", "keras", "tf.saved_model", "onnxruntime",
                                            "litert"]
    assert all(r["batch1_median_ms"] > 0 and r["throughput_images_per_s"] > 0 for r in rows)
    assert all(r["peak_rss_mb"] > 50 for r in rows[1:])
    assert rows[0]["latency_vs_eager"] == 1.0
