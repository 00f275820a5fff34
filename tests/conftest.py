"""Shared fixtures: tiny generated image folders, written by the tests themselves."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# This test process loads both frameworks, which a user's run never does. Two orders matter:
# importing torchvision after TensorFlow has initialized segfaults (torch._dynamo -> triton),
# and TensorFlow must be loaded before the PyTorch backend, which otherwise switches TensorBoard
# to its TensorFlow-free stub for the whole process (see torch_backend/__init__.py).
try:
    import torchvision.models  # noqa: E402,F401
except ImportError:
    pass
try:
    import tensorflow  # noqa: E402,F401
except ImportError:
    pass

from pokedex_trainer.synthetic import write_dataset  # noqa: E402

TINY_CLASSES = ("Gato", "León", "Perro")


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """3 classes x 12 JPEGs of 48x48 (one class name with an accent)."""
    return write_dataset(tmp_path_factory.mktemp("tiny") / "training", classes=TINY_CLASSES,
                         per_class=12, size=(48, 48), seed=1)


@pytest.fixture
def dataset_copy(tiny_dataset, tmp_path) -> Path:
    """A private copy of the tiny dataset that a test may damage."""
    import shutil

    target = tmp_path / "training"
    shutil.copytree(tiny_dataset, target)
    return target


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: builds a full-size network (EfficientNetB7)")


def tensorboard_tags(log_dir: Path) -> dict[str, set[str]]:
    """Tags per subdirectory (train, validation) of a run, whatever summary kind wrote them."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = {}
    for sub in ("train", "validation"):
        events = EventAccumulator(str(log_dir / sub), size_guidance={"tensors": 0, "scalars": 0,
                                                                     "histograms": 0,
                                                                     "images": 0}).Reload()
        found = events.Tags()
        tags[sub] = {t for kind in ("scalars", "tensors", "histograms", "images")
                     for t in found.get(kind, [])}
    return tags


KERAS_STYLE_SCALARS = {"epoch_loss", "epoch_accuracy", "epoch_top5_accuracy"}
