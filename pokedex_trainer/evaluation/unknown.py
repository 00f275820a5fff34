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
* ``knn``: the cosine similarity of the photo's penultimate features to its k-th most similar
  training photo (Sun et al., 2022: the same order as minus the k-th nearest distance of the
  normalized features).
* ``knn_contrast``: the knn similarity minus the photo's similarity to its k-th most similar
  photo of the user's ``--unknown_dir`` that training used (never under ``floor``, the 80th
  percentile of the validation photos' own: a photo far from both keeps its knn order). Only a
  run trained with a folder of its own has it; it is what tells near unknowns (a dog for a
  model of cats) apart when the folder holds their like (docs/benchmarks.md).

The last four need the network's logits and features: the run's own model files give them
(Keras ``.keras``, PyTorch ``.pth``), and an exported file computes the rule's score itself, as
its second output ``known_score`` (the bank of training features inside the file for knn).
Which score ships is chosen per run (``choose_score``), with its threshold, on the validation
split: evaluation/known_score.py applies the rule to any model file.
"""

from __future__ import annotations

import numpy as np

from pokedex_trainer.errors import UserError

SHIPPED_SCORE = "max_softmax"  # the score every file can give (probabilities out)
# computed inside exported files (their known_score output)
GRAPH_SCORES = ("max_logit", "energy", "knn", "knn_contrast")
BANK_SCORES = ("knn", "knn_contrast")  # need the bank of training features
SCORES = (SHIPPED_SCORE,) + GRAPH_SCORES
SCORE_OUTPUT = "known_score"
DEFAULT_RECALL = 0.95
KNN_K = 10
CONTRAST_QUANTILE = 0.8  # knn_contrast's floor: this share of the validation photos' own
KNN_BANK = 1000  # training photos in the feature bank, at most (a seeded choice); an exported
#                  file carries it (1000 x 1280 floats: 5 MB for MobileNetV2)


def scores(probabilities: np.ndarray, logits: np.ndarray | None = None,
           features: np.ndarray | None = None, bank: np.ndarray | None = None,
           contrast: tuple | None = None) -> dict[str, np.ndarray]:
    """Every score the inputs allow, one value per photo (higher = known). ``contrast``:
    (bank of the run's unknown photos, floor) for knn_contrast."""
    found = {"max_softmax": probabilities.max(axis=1)}
    if logits is not None:
        peak = logits.max(axis=1)
        found["max_logit"] = peak
        found["energy"] = peak + np.log(np.exp(logits - peak[:, None]).sum(axis=1))
    if features is not None and bank is not None and len(bank):
        found["knn"] = knn_similarity(features, bank)
        if contrast is not None:
            unknown_bank, floor = contrast
            found["knn_contrast"] = found["knn"] - np.maximum(
                knn_similarity(features, unknown_bank), floor)
    return found


def contrast_floor(val_features: np.ndarray, unknown_bank: np.ndarray) -> float:
    """knn_contrast's floor: the CONTRAST_QUANTILE of the validation photos' similarity to
    the unknown bank (a known photo that merely resembles an unknown one is not pushed down)."""
    return float(np.quantile(knn_similarity(val_features, unknown_bank), CONTRAST_QUANTILE))


def normalized(features: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    return features / np.maximum(norms, 1e-12)


def knn_k(bank: np.ndarray) -> int:
    return max(1, min(KNN_K, len(bank)))


def knn_similarity(features: np.ndarray, bank: np.ndarray) -> np.ndarray:
    """Cosine similarity of each feature to its k-th most similar in the (normalized) bank."""
    k = knn_k(bank)
    found = []
    for start in range(0, len(features), 256):  # memory: 256 x bank similarities at a time
        similarity = np.clip(normalized(features[start:start + 256]) @ bank.T, -1.0, 1.0)
        found.append(-np.partition(-similarity, k - 1, axis=1)[:, k - 1])
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


def check_threshold(threshold: float | None) -> float | None:
    """``--threshold`` of evaluate.py --predict and of export.py (the web page): a top
    calibrated probability, from 0 (never "unknown") to 1."""
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise UserError(f"--threshold {threshold:g}: give a top probability between 0 (never "
                        "'unknown') and 1")
    return threshold


def check_recall(recall: float) -> float:
    if not 0.5 <= recall < 1.0:
        raise UserError(f"--unknown_recall {recall:g}: give the share of known photos to keep, "
                        "between 0.5 and 0.999 (0.95: 95 %)")
    return recall


def choose_score(available: dict, known: dict | None = None,
                 unknown: dict | None = None) -> str:
    """The score that ships: the best AUROC on validation photos of none of the classes when
    there are some (``unknown``), else knn where the network's features are at hand (the best
    of the four without unknown photos in docs/benchmarks.md), else max softmax."""
    if known is not None and unknown is not None:
        return max(available, key=lambda name: (auroc(known[name], unknown[name]),
                                                name == SHIPPED_SCORE))
    return "knn" if "knn" in available else SHIPPED_SCORE


RULE_TEXT = {
    "max_softmax": "unknown when the top calibrated probability is below the threshold",
    "max_logit": "unknown when the top logit (the file's known_score output) is below the "
                 "threshold",
    "energy": "unknown when logsumexp of the logits (the file's known_score output) is below "
              "the threshold",
    "knn": "unknown when the similarity of the photo's features to the 10th most similar "
           "training photo (the file's known_score output) is below the threshold",
    "knn_contrast": "unknown when the knn similarity minus the similarity to the 10th most "
                    "similar photo of the run's --unknown_dir (at least 'floor'; the file's "
                    "known_score output) is below the threshold",
}


def fit_rule(val_scores: dict, recall: float, fitted_on: str, score: str | None = None,
             bank_photos: int = 0, contrast: tuple | None = None) -> dict:
    """The shipped rule (the sidecar's ``unknown`` key): the score ``choose_score`` picks (or
    ``score``) and the threshold under which a photo is "unknown", fitted to keep ``recall`` of
    the validation photos. ``val_scores``: scores() of the validation photos."""
    score = score or choose_score(val_scores)
    rule = {"score": score, "threshold": threshold_for_recall(val_scores[score], recall),
            "recall": recall, "fitted_on": fitted_on, "rule": RULE_TEXT[score]}
    if score in GRAPH_SCORES:
        rule["output"] = SCORE_OUTPUT
    if score in BANK_SCORES:
        rule.update({"k": KNN_K, "bank_photos": int(bank_photos)})
    if contrast is not None:  # knn_contrast's, kept for evaluate.py's table whichever ships
        rule.update({"unknown_bank_photos": len(contrast[0]), "floor": float(contrast[1])})
    return rule


def checked_rule(rule, where: str) -> dict | None:
    """An ``unknown`` rule read from a file: None when absent, one line when broken."""
    if rule is None:
        return None
    threshold = rule.get("threshold") if isinstance(rule, dict) else None
    score = rule.get("score") if isinstance(rule, dict) else None
    if (not isinstance(rule, dict) or score not in SCORES
            or isinstance(threshold, bool) or not isinstance(threshold, (int, float))
            or not np.isfinite(threshold)):
        raise UserError(f"{where}: its 'unknown' rule is not a threshold on one of the scores "
                        f"{', '.join(SCORES)}")
    recall = rule.get("recall", DEFAULT_RECALL)
    if isinstance(recall, bool) or not isinstance(recall, (int, float)) or \
            not 0.0 < recall <= 1.0:
        raise UserError(f"{where}: its 'unknown' rule's recall must be a share between 0 and 1")
    if not isinstance(rule.get("fitted_on", ""), str):
        raise UserError(f"{where}: its 'unknown' rule's fitted_on must be text")
    low, high = {"max_softmax": (0.0, 1.0), "knn": (-1.0, 1.0),
                 "knn_contrast": (-2.0, 2.0)}.get(score, (-np.inf, np.inf))
    if score in BANK_SCORES:  # similarities, with float32 rounding either side
        low, high = low - 1e-3, high + 1e-3
    floor = rule.get("floor")
    if (score == "knn_contrast" or floor is not None) and (
            isinstance(floor, bool) or not isinstance(floor, (int, float))
            or not -1.0 <= floor <= 1.0):  # NaN fails the range too
        raise UserError(f"{where}: its 'unknown' rule's 'floor' (knn_contrast's) must be a "
                        "similarity between -1 and 1")
    for key in ("bank_photos", "unknown_bank_photos", "k"):
        count = rule.get(key)
        if count is not None and (isinstance(count, bool) or not isinstance(count, int)
                                  or count < 0):
            raise UserError(f"{where}: its 'unknown' rule's '{key}' must be a whole number")
    if not low <= threshold <= high:
        raise UserError(f"{where}: its 'unknown' threshold {threshold:g} is outside the range "
                        f"of {score} ({low:g} to {high:g})")
    return rule
