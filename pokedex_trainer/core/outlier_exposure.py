"""Outlier exposure (``--unknown_dir``): photos of none of the classes, trained towards "none".

Hendrycks, Mazeika & Dietterich (2019): beside the labelled photos, a network sees photos of
none of its classes and is taught to answer them with the uniform distribution, so its top
probability (the "unknown" rule that ships, evaluation/unknown.py) falls on what it does not
know. The unknown photos are never a class of their own.

One loss for both frameworks, written here once: every photo of a batch has a target
distribution and a weight, and the loss is ``mean(weight * cross_entropy(target, p))``:

* a labelled photo of class c: the label-smoothed one-hot of c (``--label_smoothing``), weighted
  by its class weight (``--class_weight``, else 1);
* an unknown photo (label -1, ``UNKNOWN_LABEL`` of data/unknown_photos.py): the uniform
  distribution, weighted by ``--unknown_weight`` (0.5, the paper's).

Without unknown photos this is exactly the cross-entropy the backends use otherwise. Accuracy
counts the labelled photos only.
"""

from __future__ import annotations

import numpy as np

DEFAULT_UNKNOWN_WEIGHT = 0.5


def soft_targets(labels: np.ndarray, num_classes: int, smoothing: float) -> np.ndarray:
    """(N, classes) float32: each photo's target distribution (see the module's notes)."""
    labels = np.asarray(labels).reshape(-1)
    targets = np.full((len(labels), num_classes), 1.0 / num_classes, np.float32)
    known = labels >= 0
    smoothed = np.full((int(known.sum()), num_classes), smoothing / num_classes, np.float32)
    smoothed[np.arange(len(smoothed)), labels[known]] += 1.0 - smoothing
    targets[known] = smoothed
    return targets


def sample_weights(labels: np.ndarray, class_weights, unknown_weight: float) -> np.ndarray:
    """(N,) float32: each photo's weight in the batch's mean loss."""
    labels = np.asarray(labels).reshape(-1)
    weights = np.full(len(labels), unknown_weight, np.float32)
    known = labels >= 0
    weights[known] = 1.0 if class_weights is None else \
        np.asarray(class_weights, np.float32)[labels[known]]
    return weights


def reference_loss(probabilities: np.ndarray, labels: np.ndarray, smoothing: float,
                   class_weights, unknown_weight: float) -> float:
    """The batch loss in NumPy: what both backends must compute (the tests compare)."""
    targets = soft_targets(labels, probabilities.shape[1], smoothing)
    per_photo = -(targets * np.log(np.clip(probabilities, 1e-7, 1.0))).sum(axis=1)
    return float((sample_weights(labels, class_weights, unknown_weight) * per_photo).mean())
