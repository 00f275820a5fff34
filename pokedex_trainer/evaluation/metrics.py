"""Metrics from (true labels, probabilities): framework-free, the same for every model file."""

from __future__ import annotations

import numpy as np

from pokedex_trainer.evaluation.calibration import expected_calibration_error, negative_log_likelihood


def top_k_accuracy(labels: np.ndarray, probabilities: np.ndarray, k: int) -> float:
    """Share of images whose true class is among the ``k`` most probable (k capped at C)."""
    k = min(k, probabilities.shape[1])
    top = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
    return float((top == labels[:, None]).any(axis=1).mean())


def confusion(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts: row = true class, column = predicted class."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (labels, predicted), 1)
    return matrix


def most_confused_pairs(matrix: np.ndarray, class_names: list[str], limit: int = 10) -> list[dict]:
    """The largest off-diagonal cells: which true class is taken for which, how often."""
    pairs = []
    support = matrix.sum(axis=1)
    for true, predicted in zip(*np.nonzero(matrix)):
        if true != predicted:
            count = int(matrix[true, predicted])
            pairs.append({"true": class_names[true], "predicted": class_names[predicted],
                          "count": count, "share_of_true": count / max(1, int(support[true]))})
    pairs.sort(key=lambda p: (-p["count"], -p["share_of_true"], p["true"], p["predicted"]))
    return pairs[:limit]


def classification_table(labels: np.ndarray, predicted: np.ndarray,
                         class_names: list[str]) -> dict:
    """scikit-learn's classification report as a dict: per class, macro avg, weighted avg."""
    from sklearn.metrics import classification_report

    return classification_report(labels, predicted, labels=list(range(len(class_names))),
                                 target_names=list(class_names), output_dict=True,
                                 zero_division=0)


def compute_metrics(labels: np.ndarray, probabilities: np.ndarray,
                    class_names: list[str]) -> dict:
    """Accuracy, top-5, loss, per-class precision/recall/F1/support, averages, confusion,
    most confused pairs and calibration error of one set of predictions."""
    labels = np.asarray(labels, dtype=np.int64)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    predicted = probabilities.argmax(axis=1)
    table = classification_table(labels, predicted, class_names)
    matrix = confusion(labels, predicted, len(class_names))
    return {
        "images": int(len(labels)),
        "accuracy": float((predicted == labels).mean()),
        "top5_accuracy": top_k_accuracy(labels, probabilities, 5),
        "loss": negative_log_likelihood(probabilities, labels),
        "ece": expected_calibration_error(probabilities, labels),
        "per_class": {name: table[name] for name in class_names},
        "macro_avg": table["macro avg"],
        "weighted_avg": table["weighted avg"],
        "confusion_matrix": matrix.tolist(),
        "most_confused": most_confused_pairs(matrix, class_names),
    }


def report_rows(metrics: dict) -> list[dict]:
    """Rows of ``classification_report.csv``: one per class, then the two averages."""
    rows = []
    for name, values in list(metrics["per_class"].items()) + [
            ("macro avg", metrics["macro_avg"]), ("weighted avg", metrics["weighted_avg"])]:
        rows.append({"class": name, "precision": round(values["precision"], 6),
                     "recall": round(values["recall"], 6), "f1": round(values["f1-score"], 6),
                     "support": int(values["support"])})
    return rows


def most_confident_mistakes(labels: np.ndarray, probabilities: np.ndarray,
                            limit: int = 16) -> list[int]:
    """Indices of the wrong predictions, most confident first."""
    predicted = probabilities.argmax(axis=1)
    wrong = np.nonzero(predicted != labels)[0]
    confidence = probabilities[wrong, predicted[wrong]]
    return [int(i) for i in wrong[np.argsort(-confidence, kind="stable")][:limit]]
