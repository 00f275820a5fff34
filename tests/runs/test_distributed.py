"""Multi-device training: torchrun with gloo on CPU, MirroredStrategy on two logical CPUs."""

from __future__ import annotations

import csv
import subprocess
import sys

import pytest

from conftest import ROOT


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_torchrun_two_processes_train_and_write_one_set_of_outputs(tmp_path, tiny_dataset):
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
               "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), str(ROOT / "train_professional_models.py"),
               "--data_path", str(tiny_dataset), "--model_type", "resnet", "--weights", "none",
               "--image_size", "32", "32", "--batch_size", "4", "--epochs", "2",
               "--fine_tune_epochs", "0", "--val_split", "0.25", "--test_split", "0.25",
               "--workers", "0", "--output_dir", str(tmp_path / "runs"),
               "--log_dir", str(tmp_path / "tb")]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = [p for p in (tmp_path / "runs").iterdir() if p.is_dir()]
    assert len(runs) == 1
    rows = list(csv.DictReader(open(tmp_path / "runs" / "experiments.csv", encoding="utf-8")))
    assert len(rows) == 1 and rows[0]["status"] == "completed"
    history = list(csv.DictReader(open(runs[0] / "history.csv", encoding="utf-8")))
    assert len(history) == 2
    assert len(list((tmp_path / "tb").iterdir())) == 1
    assert result.stdout.count("done: best") + result.stderr.count("done: best") == 1


MIRRORED = """
import sys
sys.path.insert(0, {root!r})
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])
from pokedex_trainer.backends.keras import keras_backends
strategies = []
def two_cpus():
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    strategies.append(strategy)
    return strategy
keras_backends.make_strategy = two_cpus
from pokedex_trainer.cli.commands import run_main, train_main
code = run_main(train_main, {argv!r})
print("EXIT", code, "REPLICAS", strategies[0].num_replicas_in_sync)
"""


@pytest.mark.slow
def test_mirrored_strategy_over_two_logical_cpus_trains_a_keras_model(tmp_path, tiny_dataset):
    argv = ["--data_path", str(tiny_dataset), "--model_type", "mobilenet", "--weights", "none",
            "--image_size", "32", "32", "--batch_size", "8", "--epochs", "1",
            "--fine_tune_epochs", "1", "--val_split", "0.25", "--test_split", "0.25",
            "--workers", "0", "--output_dir", str(tmp_path / "runs"),
            "--log_dir", str(tmp_path / "tb"), "--run_name", "mirrored"]
    code = MIRRORED.format(root=str(ROOT), argv=argv)
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                            text=True, timeout=600)
    assert "EXIT 0 REPLICAS 2" in result.stdout, result.stderr[-3000:]
    run_dir = tmp_path / "runs" / "mirrored"
    assert (run_dir / "mobilenet_v2_best.keras").exists()
    history = list(csv.DictReader(open(run_dir / "history.csv", encoding="utf-8")))
    assert [r["phase"] for r in history] == ["head", "fine_tune"]
