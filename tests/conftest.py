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


def train_tiny_run(data: Path, out: Path, model_type: str, *extra: str) -> Path:
    """Train a small run in this process (weights none, 32 px, one epoch per phase asked)."""
    from pokedex_trainer.cli import run_main, train_main

    argv = ["--data_path", str(data), "--model_type", model_type, "--weights", "none",
            "--image_size", "32", "32", "--batch_size", "8", "--epochs", "2",
            "--fine_tune_epochs", "0", "--workers", "0", "--histogram_freq", "0",
            "--output_dir", str(out / "runs"), "--log_dir", str(out / "tb"),
            "--run_name", f"{model_type}_tiny", *extra]
    assert run_main(train_main, argv) == 0
    return out / "runs" / f"{model_type}_tiny"


def tiny_keras_classifier(images, num_classes: int, seed: int = 0):
    """A small Keras classifier with the interface of this tool's MobileNetV2 models.

    Same input (RGB 0..255, "image"), normalization layer, "backbone" sub-model, pooling,
    dropout and "predictions" softmax head, but three layers deep. A MobileNetV2 trained from
    scratch for a few steps answers the same for every image (its BatchNorm statistics lag
    and the signal vanishes in inference mode), so a broken export could not show against it;
    this one's answer depends on the image, and its logits are scaled to a spread of 3 on
    ``images``, the range of a trained classifier.
    """
    import keras
    from keras import layers

    keras.utils.set_random_seed(seed)
    size = images.shape[1:3]
    inner = keras.Input((*size, 3))
    # a Normalization layer holds constants the way EfficientNet's does (a converter once
    # turned them into extra inputs)
    y = layers.Normalization(mean=[0.0, 0.1, -0.1], variance=[1.0, 1.2, 0.9])(inner)
    y = layers.Conv2D(8, 3, strides=2, padding="same")(y)
    y = layers.BatchNormalization()(y)
    y = layers.ReLU(6.0)(y)
    y = layers.DepthwiseConv2D(3, padding="same")(y)
    y = layers.BatchNormalization()(y)
    y = layers.ReLU(6.0)(y)
    y = layers.Conv2D(16, 1)(y)
    backbone = keras.Model(inner, layers.ReLU(6.0)(y), name="backbone")
    inputs = keras.Input((*size, 3), name="image")
    x = layers.Rescaling(1.0 / 127.5, offset=-1.0, name="normalize_minus_one_one")(inputs)
    x = layers.GlobalAveragePooling2D(name="avg_pool")(backbone(x))
    x = layers.Dropout(0.3, name="head_dropout")(x)
    head = layers.Dense(num_classes, activation="softmax", name="predictions")
    model = keras.Model(inputs, head(x), name="mobilenet_v2")
    features = keras.Model(inputs, x)(images.astype("float32")).numpy()
    kernel, bias = head.get_weights()
    scale = 3.0 / max(1e-6, float((features @ kernel + bias).std()))
    head.set_weights([kernel * scale, bias * scale])
    return model


@pytest.fixture(scope="session")
def shared_runs(tmp_path_factory) -> Path:
    """Output root of the session's shared runs: <root>/runs and one TensorBoard root, <root>/tb."""
    return tmp_path_factory.mktemp("shared")


@pytest.fixture(scope="session")
def mobilenet_run(tiny_dataset, shared_runs) -> Path:
    """A finished MobileNetV2 run (Keras) on the tiny dataset, shared by the report and export
    tests. Its best model is then replaced by ``tiny_keras_classifier`` (see there why)."""
    from pokedex_trainer.run_files import run_split

    run_dir = train_tiny_run(tiny_dataset, shared_runs, "mobilenet", "--histogram_freq", "1")
    images, _ = run_split(run_dir, "train").load_all((32, 32))
    tiny_keras_classifier(images, 3).save(run_dir / "mobilenet_v2_best.keras")
    return run_dir


@pytest.fixture(scope="session")
def resnet_run(tiny_dataset, shared_runs) -> Path:
    """A finished ResNet152 run (PyTorch) on the tiny dataset."""
    return train_tiny_run(tiny_dataset, shared_runs, "resnet", "--histogram_freq", "1")


@pytest.fixture(scope="session")
def keras_exports(mobilenet_run) -> Path:
    """The MobileNetV2 run after ``export.py --run_dir`` wrote every Keras format."""
    from pokedex_trainer.cli import export_main, run_main

    assert run_main(export_main, ["--run_dir", str(mobilenet_run), "--check_images", "12",
                                  "--calibration_images", "16"]) == 0
    return mobilenet_run
