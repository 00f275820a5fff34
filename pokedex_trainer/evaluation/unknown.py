"""Photos of none of the classes: how well a model knows what it does not know.

A classifier names every photo as one of its classes; the app points a phone at the world,
and most of what it sees is none of them. Each *score* below is high for a photo the model
knows and low for one it does not; a photo whose score is under a threshold is answered
"unknown". Measured as in OpenOOD v1.5: AUROC (the chance that a known photo scores above an
unknown one) and FPR95 (the share of unknown photos still named as a species at the
threshold that keeps 95 % of the known ones).

Scores (higher = known):

* ``max_softmax``: the top calibrated probability (Hendrycks & Gimpel, 2017). Every runtime
  computes it from an exported file's output, so it is the rule that ships (the sidecar's
  ``unknown`` key); outlier exposure (``--unknown_dir``) trains the network for it.
* ``max_logit``: the top logit (Hendrycks et al., 2022).
* ``energy``: logsumexp of the logits (Liu et al., 2020).
* ``knn``: minus the distance of the photo's normalized penultimate features to its k-th
  nearest training photo (Sun et al., 2022).

The last three need the network's logits and features, which the run's own model files give
(Keras ``.keras``, PyTorch ``.pth``) and the exported files (probabilities out) do not.
"""

from __future__ import annotations

import numpy as np

from pokedex_trainer.errors import UserError

SHIPPED_SCORE = "max_softmax"
DEFAULT_RECALL = 0.95
KNN_K = 10
KNN_BANK = 2000  # training photos in the feature bank, at most (a seeded choice)


def scores(probabilities: np.ndarray, logits: np.ndarray | None = None,
           features: np.ndarray | None = None, bank: np.ndarray | None = None
           ) -> dict[str, np.ndarray]:
    """Every score the inputs allow, one value per photo (higher = known)."""
    found = {"max_softmax": probabilities.max(axis=1)}
    if logits is not None:
        peak = logits.max(axis=1)
        found["max_logit"] = peak
        found["energy"] = peak + np.log(np.exp(logits - peak[:, None]).sum(axis=1))
    if features is not None and bank is not None and len(bank):
        found["knn"] = -knn_distance(features, bank)
    return found


def normalized(features: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    return features / np.maximum(norms, 1e-12)


def knn_distance(features: np.ndarray, bank: np.ndarray, k: int = KNN_K) -> np.ndarray:
    """Distance of each (normalized) feature to its k-th nearest in the (normalized) bank."""
    k = max(1, min(k, len(bank)))
    found = []
    for start in range(0, len(features), 256):  # memory: 256 x bank distances at a time
        part = normalized(features[start:start + 256])
        distance = np.sqrt(np.maximum(2.0 - 2.0 * part @ bank.T, 0.0))
        found.append(np.partition(distance, k - 1, axis=1)[:, k - 1])
    return np.concatenate(found) if found else np.zeros(0)


def auroc(known: np.ndarray, unknown: np.ndarray) -> float:
    """P(score of a known photo > score of an unknown one), ties counted half."""
    from scipy.stats import rankdata

    ranks = rankdata(np.concatenate([known, unknown]))
    known_ranks = ranks[:len(known)].sum()
    return float((known_ranks - len(known) * (len(known) + 1) / 2) / (len(known) * len(unknown)))


def threshold_for_recall(known: np.ndarray, recall: float) -> float:
    """The largest threshold that keeps at least ``recall`` of the known photos (score >= it)."""
    ordered = np.sort(known)[::-1]
    keep = max(1, int(np.ceil(recall * len(ordered) - 1e-9)))
    return float(ordered[keep - 1])


def fpr_at_recall(known: np.ndarray, unknown: np.ndarray, recall: float = DEFAULT_RECALL
                  ) -> float:
    """The share of unknown photos at or above the threshold that keeps ``recall`` known."""
    return float((unknown >= threshold_for_recall(known, recall)).mean())


def coverage_curve(score: np.ndarray, correct: np.ndarray, points: int = 20) -> list[dict]:
    """Accuracy on the most confident share of the known photos, share by share."""
    order = np.argsort(-score, kind="mergesort")
    curve = []
    for share in np.linspace(1.0 / points, 1.0, points):
        kept = order[:max(1, int(round(share * len(order))))]
        curve.append({"coverage": float(share), "accuracy": float(correct[kept].mean())})
    return curve


def check_recall(recall: float) -> float:
    if not 0.5 <= recall < 1.0:
        raise UserError(f"--unknown_recall {recall:g}: give the share of known photos to keep, "
                        "between 0.5 and 0.999 (0.95: 95 %)")
    return recall


def fit_rule(val_probabilities: np.ndarray, recall: float, fitted_on: str) -> dict:
    """The shipped rule (the sidecar's ``unknown`` key): the calibrated top probability under
    which a photo is "unknown", fitted to keep ``recall`` of the validation photos."""
    threshold = threshold_for_recall(val_probabilities.max(axis=1), recall)
    return {"score": SHIPPED_SCORE, "threshold": threshold, "recall": recall,
            "fitted_on": fitted_on,
            "rule": "unknown when the top calibrated probability is below the threshold"}


def checked_rule(rule, where: str) -> dict | None:
    """An ``unknown`` rule read from a file: None when absent, one line when broken."""
    if rule is None:
        return None
    threshold = rule.get("threshold") if isinstance(rule, dict) else None
    if (not isinstance(rule, dict) or rule.get("score") != SHIPPED_SCORE
            or isinstance(threshold, bool) or not isinstance(threshold, (int, float))
            or not 0.0 <= threshold <= 1.0):
        raise UserError(f"{where}: its 'unknown' rule is not a {SHIPPED_SCORE} threshold "
                        "between 0 and 1")
    return rule
