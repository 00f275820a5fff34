"""Framework-free pieces of the TensorBoard logs, so Keras and PyTorch runs look the same.

Tags follow Keras' TensorBoard callback: ``<run>/train`` and ``<run>/validation`` hold
``epoch_loss``, ``epoch_accuracy``, ``epoch_top5_accuracy``; train also ``epoch_learning_rate``,
``<weight>/histogram``, ``gradients/<weight>``, the ``augmented_samples`` image grid and
``activations/stage_<k>``: the outputs of the backbone's k-th chosen stage (shallow to deep, the
last one the backbone's output) on the first images of the same sample batch, with the same
tags in Keras and PyTorch (the layers are listed per network in keras_networks.py and torch_networks.py).
"""

from __future__ import annotations

import math

import numpy as np

SCALARS = ("loss", "accuracy", "top5_accuracy")
TRAIN_SUBDIR = "train"
VALIDATION_SUBDIR = "validation"
SAMPLE_IMAGES_TAG = "augmented_samples"
ACTIVATIONS_TAG = "activations"
ACTIVATION_IMAGES = 8  # images of the sample batch whose stage outputs are histogrammed


def activation_tag(stage: int) -> str:
    """``activations/stage_<stage>`` (1 = the shallowest chosen stage)."""
    return f"{ACTIVATIONS_TAG}/stage_{stage}"


def split_epoch_logs(logs: dict) -> tuple[dict, dict]:
    """``{"loss", "val_loss", ...}`` to ({"epoch_loss": ...}, {"epoch_loss": ...})."""
    train, val = {}, {}
    for name in SCALARS:
        if name in logs:
            train[f"epoch_{name}"] = float(logs[name])
        if f"val_{name}" in logs:
            val[f"epoch_{name}"] = float(logs[f"val_{name}"])
    if "learning_rate" in logs:
        train["epoch_learning_rate"] = float(logs["learning_rate"])
    return train, val


def image_grid(images: np.ndarray, max_images: int = 16) -> np.ndarray:
    """Tile up to ``max_images`` HxWx3 uint8 images into one roughly square grid image."""
    images = np.asarray(images)[:max_images]
    count, height, width, channels = images.shape
    columns = math.ceil(math.sqrt(count))
    rows = math.ceil(count / columns)
    grid = np.full((rows * height + rows - 1, columns * width + columns - 1, channels), 255,
                   dtype=np.uint8)
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        grid[r * (height + 1):r * (height + 1) + height,
             c * (width + 1):c * (width + 1) + width] = image
    return grid


def tensorboard_without_tensorflow() -> None:
    """Writers that go through tensorboard.compat (PyTorch's, and the JAX route's) would import
    TensorFlow when it is installed: seconds, a GB of memory, and a third framework's CUDA
    libraries in the process. The presence of ``tensorboard.compat.notf`` is TensorBoard's own
    switch for its TensorFlow-free stub. It is process-wide and would break tf.summary for a
    process that also runs Keras on TensorFlow, so it is set only when TensorFlow is not
    already loaded (a process that needs both must import TensorFlow first)."""
    import sys
    import types

    if "tensorflow" not in sys.modules:
        sys.modules.setdefault("tensorboard.compat.notf",
                               types.ModuleType("tensorboard.compat.notf"))
