"""A real TensorBoard server shows finished runs of both frameworks side by side."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import pytest

pytest.importorskip("tensorboard")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get(port: int, path: str, **params):
    query = f"?{urllib.parse.urlencode(params)}" if params else ""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}{query}", timeout=10) as reply:
        return json.loads(reply.read())


def test_live_server_reads_scalars_histograms_and_images_of_every_run(shared_runs,
                                                                      keras_run, torch_run):
    """The session's two shared runs (2 epochs each, histograms on) in one TensorBoard root."""
    res, mob = torch_run.name, keras_run.name
    expected_runs = {f"{res}/train", f"{res}/validation", f"{mob}/train", f"{mob}/validation"}
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "tensorboard.main", "--logdir",
                               str(shared_runs / "tb"), "--port", str(port), "--host", "127.0.0.1",
                               "--load_fast", "false"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 90
        runs = []
        while time.monotonic() < deadline:
            try:
                runs = _get(port, "/data/runs")
                if expected_runs <= set(runs):
                    break
            except OSError:
                pass
            if server.poll() is not None:
                pytest.fail(server.stderr.read()[-2000:])
            time.sleep(1)
        assert expected_runs <= set(runs)
        scalar_tags = _get(port, "/data/plugin/scalars/tags")
        for run in (res, mob):
            assert {"epoch_loss", "epoch_accuracy", "epoch_top5_accuracy",
                    "epoch_learning_rate"} <= set(scalar_tags[f"{run}/train"])
            assert {"epoch_loss", "epoch_accuracy"} <= set(scalar_tags[f"{run}/validation"])
            points = _get(port, "/data/plugin/scalars/scalars", run=f"{run}/validation",
                          tag="epoch_accuracy")
            assert [step for _, step, _ in points] == [0, 1, 2, 3]  # one per epoch
        histogram_tags = _get(port, "/data/plugin/histograms/tags")
        for run in (res, mob):
            assert any(t.startswith("gradients/") for t in histogram_tags[f"{run}/train"])
        image_tags = _get(port, "/data/plugin/images/tags")
        for run in (res, mob):
            assert "augmented_samples" in image_tags[f"{run}/train"]
    finally:
        server.terminate()
        server.wait(timeout=30)
