"""The parity check: an exported file, run in its own runtime, against its source model.

The same images go through the source model and through the exported file, read the way an app
reads it (the sidecar JSON says how to feed it); the file passes within its precision's tolerance.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from pokedex_trainer.evaluation.latency import measure_latency
from pokedex_trainer.evaluation.predict import Predictor, load_predictor
from pokedex_trainer.errors import reason_line


@dataclass(frozen=True)
class Tolerance:
    """How far an exported file may stray from its source model.

    Args:
        max_abs_diff: largest allowed |p_export - p_source| over all images and classes.
        min_agreement: smallest allowed share of images with the same top-1 class, counted over
            the images whose top-2 margin in the source is wider than 2 x max_abs_diff (on the
            others, a flip is within the precision's noise).
    """

    max_abs_diff: float
    min_agreement: float


TOLERANCES = {
    "float32": Tolerance(1e-4, 1.0),
    "float16": Tolerance(1e-2, 0.99),
    "dynamic_int8": Tolerance(0.10, 0.95),
    "int8": Tolerance(0.25, 0.90),
}


@dataclass
class ExportResult:
    """One exported file and its parity figures (``passed`` False: it was deleted)."""

    file: str
    format: str
    precision: str
    runtime: str = ""
    size_mb: float = 0.0
    images: int = 0
    max_abs_diff: float = float("nan")
    mean_abs_diff: float = float("nan")
    top1_agreement: float = float("nan")
    decisive_agreement: float = float("nan")
    accuracy: float = float("nan")
    source_accuracy: float = float("nan")
    score_max_diff: float = float("nan")  # known_score: max |difference| / its spread
    latency_ms: float = float("nan")
    tolerance: dict | None = None
    passed: bool = False
    reason: str = ""


def compare(reference: np.ndarray, exported: np.ndarray, labels: np.ndarray,
            tolerance: Tolerance) -> dict:
    """Parity figures of exported probabilities against the source's on the same images."""
    diff = np.abs(exported - reference)
    top_ref, top_exp = reference.argmax(1), exported.argmax(1)
    ordered = np.sort(reference, axis=1)
    margin = ordered[:, -1] - ordered[:, -2] if reference.shape[1] > 1 else np.ones(len(reference))
    decisive = margin > 2 * tolerance.max_abs_diff
    agree = top_ref == top_exp
    return {
        "images": int(len(labels)),
        "max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()),
        "top1_agreement": float(agree.mean()),
        "decisive_agreement": float(agree[decisive].mean()) if decisive.any() else 1.0,
        "accuracy": float((top_exp == labels).mean()),
        "source_accuracy": float((top_ref == labels).mean()),
    }


def verdict(figures: dict, tolerance: Tolerance) -> tuple[bool, str]:
    """(passed, why not) of parity ``figures`` against ``tolerance``."""
    problems = []
    if not figures["max_abs_diff"] <= tolerance.max_abs_diff:
        problems.append(f"max |Δp| {figures['max_abs_diff']:.3g} > {tolerance.max_abs_diff:g} "
                        f"(by {figures['max_abs_diff'] - tolerance.max_abs_diff:.3g})")
    if not figures["decisive_agreement"] >= tolerance.min_agreement:
        problems.append(f"top-1 agreement {figures['decisive_agreement']:.3f} < "
                        f"{tolerance.min_agreement:g}")
    return not problems, "; ".join(problems)


def predict_all(predictor: Predictor, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
    return predict_and_score_all(predictor, images, batch_size)[0]


def predict_and_score_all(predictor: Predictor, images: np.ndarray, batch_size: int = 32):
    """(probabilities, known_score or None) of every image, ``batch_size`` at a time."""
    parts = [predictor.predict_and_score(images[i:i + batch_size])
             for i in range(0, len(images), batch_size)]
    scores = [score for _, score in parts]
    return (np.concatenate([p for p, _ in parts]),
            np.concatenate(scores) if all(s is not None for s in scores) else None)


def score_difference(reference: np.ndarray, exported: np.ndarray | None) -> float:
    """max |known_score difference| over the spread of the source's scores (inf: none); a
    spread under a tenth of the scores' size counts as that tenth (an untrained network's
    scores all but equal: float32 rounding is no disagreement)."""
    if exported is None or exported.shape != reference.shape:
        return float("inf")
    size = float(np.abs(reference).max()) if len(reference) else 1.0
    spread = max(float(np.ptp(reference)), 0.1 * max(size, 1.0))
    return float(np.abs(exported - reference).max() / spread) if len(reference) else 0.0


def verify_file(path: Path, fmt: str, precision: str, reference: np.ndarray,
                images: np.ndarray, labels: np.ndarray,
                reference_score: np.ndarray | None = None) -> ExportResult:
    """Load ``path`` with its sidecar in its own runtime and compare with ``reference`` (and
    its ``known_score`` output with ``reference_score`` when the "unknown" rule needs one)."""
    tolerance = TOLERANCES[precision]
    result = ExportResult(Path(path).name, fmt, precision, tolerance=asdict(tolerance))
    try:
        predictor = load_predictor(path, trust=True)  # written by this process just now
        exported, score = predict_and_score_all(predictor, images)
    except Exception as exc:  # a file its runtime cannot run is a failed export
        result.reason = f"{type(exc).__name__}: {reason_line(exc)}"
        return result
    figures = compare(reference, exported, labels, tolerance)
    for key, value in figures.items():
        setattr(result, key, value)
    result.runtime = predictor.runtime
    result.size_mb = _size_mb(Path(path))
    result.latency_ms = measure_latency(predictor, images[0], warmup=2, runs=10)["median_ms"]
    result.passed, result.reason = verdict(figures, tolerance)
    if reference_score is not None:
        result.score_max_diff = score_difference(reference_score, score)
        if not result.score_max_diff <= tolerance.max_abs_diff:
            problem = (f"known_score off by {result.score_max_diff:.3g} of its spread > "
                       f"{tolerance.max_abs_diff:g}")
            result.passed = False
            result.reason = "; ".join(filter(None, [result.reason, problem]))
    return result


def _size_mb(path: Path) -> float:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20
    return path.stat().st_size / 2**20
