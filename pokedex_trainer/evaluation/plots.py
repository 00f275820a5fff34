"""The evaluation's pictures: confusion matrices, reliability diagram, mistakes, per-class F1.

Figure sizes grow with the class count so 50+ class names stay readable; every figure is saved
at DPI without cropping, so a PNG is exactly ``figsize * DPI`` pixels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

DPI = 100


def _pyplot():
    import warnings

    import matplotlib

    # a class name with a character no font draws (an emoji, a control character) is drawn as
    # a box; the warning with its source line is noise to a user
    warnings.filterwarnings("ignore", message="Glyph .* missing from font", category=UserWarning)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def confusion_figsize(num_classes: int) -> tuple[float, float]:
    side = max(6.0, 3.0 + 0.32 * num_classes)
    return side + 1.5, side


def bars_figsize(num_classes: int) -> tuple[float, float]:
    return 8.0, max(3.0, 1.2 + 0.25 * num_classes)


def _save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=DPI)
    _pyplot().close(fig)
    return path


def plot_confusion(matrix: np.ndarray, class_names: list[str], path: Path,
                   normalized: bool) -> Path:
    """Seaborn heatmap, counts or row-normalized (each row sums to 1: recall on the diagonal)."""
    import seaborn as sns

    plt = _pyplot()
    n = len(class_names)
    values = matrix.astype(np.int64)
    if normalized:
        rows = matrix.sum(axis=1, keepdims=True).astype(float)
        values = np.divide(matrix.astype(float), rows, out=np.zeros(matrix.shape), where=rows > 0)
    fig, ax = plt.subplots(figsize=confusion_figsize(n), layout="constrained")
    font = max(5, 11 - n // 8)
    sns.heatmap(values, annot=n <= 30, fmt=".2f" if normalized else "d", cmap="Blues",
                xticklabels=class_names, yticklabels=class_names, ax=ax, square=True,
                vmin=0, vmax=1 if normalized else None, annot_kws={"size": font},
                cbar_kws={"shrink": 0.6})
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("Confusion matrix" + (" (row-normalized)" if normalized else " (counts)"))
    ax.tick_params(axis="x", labelrotation=90 if n > 12 else 45, labelsize=font)
    ax.tick_params(axis="y", labelrotation=0, labelsize=font)
    return _save(fig, path)


def plot_reliability(before: dict, after: dict | None, path: Path, ece_before: float,
                     ece_after: float | None, temperature: float | None) -> Path:
    """Accuracy against confidence per bin; the diagonal is perfect calibration."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 6), layout="constrained")
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfectly calibrated")
    edges = np.asarray(before["edges"])
    centers = (edges[:-1] + edges[1:]) / 2
    width = edges[1] - edges[0]
    for table, label, colour, shift in (
            (before, f"model (ECE {ece_before:.3f})", "tab:red", -width / 4),
            (after, f"temperature {temperature or 1:.2f} (ECE {(ece_after or 0):.3f})",
             "tab:blue", width / 4)):
        if table is None:
            continue
        accuracy = np.array([a if a is not None else np.nan for a in table["accuracy"]])
        ax.bar(centers + shift, np.nan_to_num(accuracy), width=width / 2, color=colour,
               alpha=0.7, label=label)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (top-1 probability)")
    ax.set_ylabel("accuracy")
    ax.set_title("Reliability diagram")
    ax.legend(loc="upper left")
    return _save(fig, path)


def plot_per_class_f1(per_class: dict, path: Path) -> Path:
    plt = _pyplot()
    names = list(per_class)
    scores = [per_class[name]["f1-score"] for name in names]
    fig, ax = plt.subplots(figsize=bars_figsize(len(names)), layout="constrained")
    positions = np.arange(len(names))
    colours = ["tab:red" if s < 0.5 else "tab:orange" if s < 0.8 else "tab:green"
               for s in scores]
    ax.barh(positions, scores, color=colours)
    ax.set_yticks(positions, names, fontsize=max(5, 10 - len(names) // 15))
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("F1")
    ax.set_title("F1 per class")
    return _save(fig, path)


GALLERY_COLUMNS = 4


def gallery_figsize(count: int) -> tuple[float, float]:
    rows = max(1, -(-count // GALLERY_COLUMNS))
    return 3.0 * GALLERY_COLUMNS, 3.4 * rows


def plot_mistakes(images: list[np.ndarray], titles: list[str], path: Path) -> Path:
    """The most confident mistakes, each titled with its true and predicted class."""
    plt = _pyplot()
    count = max(1, len(images))
    rows = -(-count // GALLERY_COLUMNS)
    fig, axes = plt.subplots(rows, GALLERY_COLUMNS, figsize=gallery_figsize(count),
                             layout="constrained", squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, title in zip(axes.flat, images, titles):
        ax.imshow(image)
        ax.set_title(title, fontsize=9)
    if not images:
        axes.flat[0].text(0.5, 0.5, "no mistakes", ha="center", va="center", fontsize=14)
    fig.suptitle("Most confident mistakes")
    return _save(fig, path)


def plot_unknown_scores(known: dict, unknown: dict, table: dict, path: Path) -> Path:
    """One histogram per score: the known test photos against the unknown folder."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(known), figsize=(4.0 * len(known), 3.4), squeeze=False)
    for ax, name in zip(axes[0], known):
        low = float(min(known[name].min(), unknown[name].min()))
        high = float(max(known[name].max(), unknown[name].max()))
        bins = np.linspace(low, high if high > low else low + 1.0, 31)
        ax.hist(known[name], bins=bins, alpha=0.6, density=True, label="known (test split)")
        ax.hist(unknown[name], bins=bins, alpha=0.6, density=True, label="unknown folder")
        ax.set_title(f"{name}: AUROC {table[name]['auroc']:.3f}")
        ax.set_xlabel("score (higher: known)")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def plot_coverage(curves: dict, path: Path) -> Path:
    """Accuracy on the known photos each score keeps, against the share it keeps."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.0, 4.0))
    for name, curve in curves.items():
        ax.plot([p["coverage"] for p in curve], [p["accuracy"] for p in curve], marker=".",
                label=name)
    ax.set_xlabel("coverage (share of known test photos answered)")
    ax.set_ylabel("accuracy on the answered photos")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)
