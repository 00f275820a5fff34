"""Shared fixtures: tiny generated image folders, written by the tests themselves."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

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
