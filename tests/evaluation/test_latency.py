"""Where a loaded model answers: the device a Keras model reports is its own Keras backend's."""

from __future__ import annotations

import os
import subprocess
import sys

from conftest import ROOT

NO_TENSORFLOW = """
import sys
sys.path.insert(0, {root!r})
sys.modules["tensorflow"] = None  # as if not installed: importing it raises ImportError
from types import SimpleNamespace
from pokedex_trainer.evaluation.latency import device_of
print(device_of(SimpleNamespace(runtime="keras")))
print(sys.modules.get("tensorflow") is not None)
"""


def test_a_keras_model_on_torch_reports_its_device_without_tensorflow():
    """evaluate.py on a Keras-on-PyTorch run, on a machine without TensorFlow."""
    env = {**os.environ, "KERAS_BACKEND": "torch"}
    result = subprocess.run([sys.executable, "-c", NO_TENSORFLOW.format(root=str(ROOT))],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    device, tensorflow_loaded = result.stdout.split()[-2:]
    assert device in ("CPU", "GPU") or device.startswith("GPU")
    assert tensorflow_loaded == "False"
