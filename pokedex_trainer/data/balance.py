"""Class imbalance, the same in Keras and PyTorch: balanced loss weights and sampling."""

from __future__ import annotations

import numpy as np

IMBALANCE_WARNING_RATIO = 3.0


def class_counts(labels, num_classes: int) -> np.ndarray:
    return np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes)


def balanced_class_weights(labels, num_classes: int) -> np.ndarray:
    """scikit-learn's "balanced" weights: n_samples / (n_classes * count); 0 for absent classes.

    Every class then weighs as much in the loss as if all classes had the same size.
    """
    counts = class_counts(labels, num_classes)
    present = counts > 0
    weights = np.zeros(num_classes, dtype=np.float64)
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return weights


def balanced_sample_probabilities(labels, num_classes: int) -> np.ndarray:
    """Per-sample draw probabilities that give every class the same expected share."""
    labels = np.asarray(labels, dtype=np.int64)
    counts = class_counts(labels, num_classes)
    probabilities = 1.0 / counts[labels]
    return probabilities / probabilities.sum()


def imbalance_ratio(counts) -> float:
    """Largest class size over smallest (1.0 when balanced)."""
    counts = [c for c in counts if c > 0]
    return max(counts) / min(counts) if counts else 1.0
