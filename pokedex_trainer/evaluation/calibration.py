"""Confidence calibration: expected calibration error and temperature scaling.

A network that says "92% Perro" should be right about 92% of the time it says so. Temperature
scaling (Guo et al., 2017) divides the logits by one number T fitted on the validation split;
it changes confidence, never the predicted class. The logits are recovered as log(p), which
differs from the true logits by a per-image constant that the softmax ignores.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np


ECE_BINS = 15
_EPS = 1e-12


def apply_temperature(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log(p) / T): the calibrated probabilities."""
    if temperature == 1.0:
        return probabilities
    z = np.log(np.clip(probabilities, _EPS, 1.0)) / temperature
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def negative_log_likelihood(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """Mean cross-entropy of the true classes."""
    picked = probabilities[np.arange(len(labels)), labels]
    return float(-np.log(np.clip(picked, _EPS, 1.0)).mean())


def fit_temperature(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """The T > 0 that minimizes the negative log-likelihood of ``labels`` (a 1-D search)."""
    from scipy.optimize import minimize_scalar

    if len(labels) == 0:
        return 1.0
    result = minimize_scalar(
        lambda log_t: negative_log_likelihood(apply_temperature(probabilities,
                                                                math.exp(log_t)), labels),
        bounds=(math.log(0.05), math.log(20.0)), method="bounded",
        options={"xatol": 1e-4})
    return float(math.exp(result.x))


def reliability(probabilities: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> dict:
    """Per confidence bin: mean confidence, accuracy and count (the reliability diagram)."""
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    table = {"edges": edges.tolist(), "confidence": [], "accuracy": [], "count": []}
    for b in range(bins):
        mask = which == b
        table["count"].append(int(mask.sum()))
        table["confidence"].append(float(confidence[mask].mean()) if mask.any() else None)
        table["accuracy"].append(float(correct[mask].mean()) if mask.any() else None)
    return table


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray,
                               bins: int = ECE_BINS) -> float:
    """Σ_bins (n_b / n) |accuracy_b - confidence_b| over equal-width confidence bins."""
    table = reliability(probabilities, labels, bins)
    n = max(1, len(labels))
    return float(sum(count / n * abs(acc - conf)
                     for count, acc, conf in zip(table["count"], table["accuracy"],
                                                 table["confidence"]) if count))


def checked_temperature(value, where: str) -> float:
    """A saved temperature as a float; UserError unless it is a finite positive number (a
    negative one would silently turn the ranking of the classes upside down)."""
    from pokedex_trainer.errors import UserError

    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            not math.isfinite(value) or value <= 0:
        raise UserError(f"{where}: temperature {value!r} is not a positive number")
    return float(value)


def read_temperature(run_dir: Path | None, path: Path | None = None) -> float | None:
    """The temperature saved in a run directory (or in the calibration file ``path``), or None
    before calibration."""
    if path is None:
        if run_dir is None:
            return None
        from pokedex_trainer.runs.store import RunStore

        path = RunStore(Path(run_dir)).calibration_path
    path = Path(path)
    if not path.is_file():
        return None
    from pokedex_trainer.runs.store import read_calibration_file

    value = read_calibration_file(path).get("temperature")  # a damaged file is refused, not skipped
    return None if value is None else checked_temperature(value, str(path))
