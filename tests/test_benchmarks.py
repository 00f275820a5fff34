"""The benchmark scripts run for a user: --help, and a tiny input-pipeline measurement."""

import json
import subprocess
import sys

import pytest

from conftest import ROOT


@pytest.mark.parametrize("script", ["input_pipeline.py", "train_throughput.py", "inference.py",
                                    "trainer_overhead.py", "gpu_smoke_table.py"])
def test_help(script):
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--help"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "usage:" in result.stdout


def test_input_pipeline_writes_a_table_and_json(tmp_path):
    output = tmp_path / "result.json"
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "input_pipeline.py"),
                             "--sizes", "64", "--images", "8", "--batch_size", "4",
                             "--max_workers", "0", "--formats", "png", "--cache", "none", "ram",
                             "--data_dir", str(tmp_path / "data"),
                             "--output", str(output)], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = json.loads(output.read_text())["rows"]
    assert [(r["runner"], r["workers"], r["cache"]) for r in rows] == [
        ("bare", 0, "-"), ("loader", 0, "none"), ("loader", 0, "ram")]
    assert all(r["images_per_second"] > 0 and r["format"] == "png" for r in rows)
    assert "bare" in result.stdout and "loader" in result.stdout


def test_gpu_smoke_table_reads_throughput_results(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from gpu_smoke_table import table

    base = {"model_type": "resnet", "batch_size": 32, "image_size": [224, 224],
            "device": "NVIDIA H200", "workers": 8, "gpu_peak_mb": 3890.0}
    rows = [{**base, "loader": "off", "images_per_second": 400.0},
            {**base, "loader": "on", "cache": "none", "images_per_second": 300.0,
             "loader_wait_share": 0.25},
            {**base, "model_type": "mobilenet", "device": "NVIDIA H200, Keras on torch",
             "loader": "off", "images_per_second": 400.0},
            {**base, "model_type": "mobilenet", "device": "NVIDIA H200, Keras on torch",
             "loader": "on", "cache": "ram", "images_per_second": 300.0}]
    lines = table(rows)
    assert any("| resnet | torch | on (8 workers) | none |" in line and "0.25 (wait)" in line
               for line in lines)
    assert any("| mobilenet | torch | on (8 workers) | ram |" in line and "0.25 (vs off)" in line
               for line in lines)


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
