"""The dataset report: class counts, problems, chart, printed summary and report files."""

from __future__ import annotations

import hashlib
import io
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from pokedex_trainer.data.scan import (RECOMMENDED_MIN_CLASSES, RECOMMENDED_MIN_IMAGE_SIZE,
                                       RECOMMENDED_MIN_IMAGES_PER_CLASS, unknown_like)
from pokedex_trainer.prepare.sources import SourceFile
from pokedex_trainer.user_io.atomic import atomic_write_bytes, atomic_write_json

logger = logging.getLogger(__name__)


RECOMMENDED_IMAGES_PER_CLASS = 500
REPORT_NAME = "dataset_report.json"
CHART_NAME = "dataset_report.png"


@dataclass
class Report:
    input_dir: str
    output_dir: str | None
    settings: dict
    classes: dict = field(default_factory=dict)
    unreadable: list = field(default_factory=list)
    duplicates_within_class: list = field(default_factory=list)
    duplicates_across_classes: list = field(default_factory=list)
    small_images: list = field(default_factory=list)
    classes_below_minimum: list = field(default_factory=list)
    classes_below_recommended: list = field(default_factory=list)
    too_few_classes: bool = False
    imbalance_ratio: float | None = None
    written: int = 0
    up_to_date: int = 0
    removed_stale: list = field(default_factory=list)
    problems: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


# Folder names that usually hold photos of none of the species (compared without case, accents,
# spaces or underscores): as a class, the model would learn to name them
def summarize(report: Report, counts: dict[str, int], kept: list[SourceFile]) -> None:
    """Fill the class statistics and the list of problems a person should act on.

    ``kept`` are the readable, non-duplicate sources that make it into the dataset.
    """
    report.classes = {name: {"images": n} for name, n in sorted(counts.items())}
    report.small_images = [
        {"path": s.relative, "width": s.width, "height": s.height} for s in kept
        if min(s.width, s.height) < RECOMMENDED_MIN_IMAGE_SIZE]
    report.classes_below_minimum = sorted(
        n for n, c in counts.items() if c < RECOMMENDED_MIN_IMAGES_PER_CLASS)
    report.classes_below_recommended = sorted(
        n for n, c in counts.items() if c < RECOMMENDED_IMAGES_PER_CLASS)
    report.too_few_classes = len(counts) < RECOMMENDED_MIN_CLASSES
    nonzero = [c for c in counts.values() if c > 0]
    report.imbalance_ratio = round(max(nonzero) / min(nonzero), 2) if nonzero else None
    problems = []
    if report.unreadable:
        problems.append(f"{len(report.unreadable)} unreadable files skipped")
    if report.duplicates_within_class:
        n = sum(len(g["duplicates"]) for g in report.duplicates_within_class)
        problems.append(f"{n} exact duplicates inside a class (one copy kept)")
    if report.duplicates_across_classes:
        problems.append(f"{len(report.duplicates_across_classes)} photos appear under several "
                        "classes (labelling error; left out until fixed)")
    if report.small_images:
        problems.append(f"{len(report.small_images)} images below "
                        f"{RECOMMENDED_MIN_IMAGE_SIZE} px (kept, not enlarged)")
    if report.too_few_classes:
        problems.append(f"{len(counts)} classes; the guide asks for at least "
                        f"{RECOMMENDED_MIN_CLASSES}")
    if report.classes_below_minimum:
        problems.append(f"{len(report.classes_below_minimum)} classes below "
                        f"{RECOMMENDED_MIN_IMAGES_PER_CLASS} images: "
                        + ", ".join(report.classes_below_minimum))
    elif report.classes_below_recommended:
        problems.append(f"{len(report.classes_below_recommended)} classes below the recommended "
                        f"{RECOMMENDED_IMAGES_PER_CLASS} images")
    if report.imbalance_ratio and report.imbalance_ratio > 3:
        problems.append(f"class imbalance: the largest class has {report.imbalance_ratio}x the "
                        "images of the smallest")
    for name in sorted(n for n in counts if unknown_like(n)):
        problems.append(f"class '{name}' looks like photos of none of the species: as a class "
                        "the model learns to name it as one; move it out of the dataset and "
                        "train with --unknown_dir <its folder> (outlier exposure, "
                        "docs/training.md)")
    report.problems = problems


def plot_counts(counts: dict[str, int]) -> bytes:
    """Bar chart of images per class with the guide's 100 and 500 lines, as PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted(counts)
    width = max(6.0, 0.35 * len(names) + 2)
    figure, axis = plt.subplots(figsize=(width, 4.5))
    axis.bar(range(len(names)), [counts[n] for n in names], color="#3b7dd8")
    axis.axhline(RECOMMENDED_MIN_IMAGES_PER_CLASS, color="#d83b3b", linestyle="--",
                 label=f"minimum ({RECOMMENDED_MIN_IMAGES_PER_CLASS})")
    axis.axhline(RECOMMENDED_IMAGES_PER_CLASS, color="#2e9e44", linestyle="--",
                 label=f"recommended ({RECOMMENDED_IMAGES_PER_CLASS})")
    axis.set_xticks(range(len(names)), names, rotation=45 if len(names) > 8 else 0,
                    ha="right" if len(names) > 8 else "center")
    axis.set_ylabel("images")
    axis.set_title("Images per class")
    axis.legend()
    figure.tight_layout()
    with io.BytesIO() as buffer:
        figure.savefig(buffer, format="png", dpi=100)
        data = buffer.getvalue()
    plt.close(figure)
    return data


def print_summary(report: Report, counts: dict[str, int]) -> None:
    width = max([len("class")] + [len(n) for n in counts])
    print(f"\n{'class':<{width}}  images")
    for name in sorted(counts):
        flag = ""
        if counts[name] < RECOMMENDED_MIN_IMAGES_PER_CLASS:
            flag = f"  < {RECOMMENDED_MIN_IMAGES_PER_CLASS}"
        elif counts[name] < RECOMMENDED_IMAGES_PER_CLASS:
            flag = f"  < {RECOMMENDED_IMAGES_PER_CLASS}"
        print(f"{name:<{width}}  {counts[name]:>6}{flag}")
    print(f"{'total':<{width}}  {sum(counts.values()):>6}  ({len(counts)} classes, imbalance "
          f"{report.imbalance_ratio})")
    if report.output_dir:
        print(f"written {report.written}, up to date {report.up_to_date}, removed stale "
              f"{len(report.removed_stale)}")
    if report.problems:
        print("problems:")
        for problem in report.problems:
            print(f"  - {problem}")
    else:
        print("no problems found")


REPORTS_RECORD = ".prepare_reports.json"


def _report_of_an_earlier_version(folder: Path) -> bool:
    """Reports written before REPORTS_RECORD existed: recognised by their content."""
    try:
        data = json.loads((folder / REPORT_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and {"input_dir", "settings", "classes"} <= set(data)


def write_own_file(folder: Path, name: str, data: bytes) -> bool:
    """Write ``folder/name`` unless a file of that name exists that this tool did not write
    (or that was changed since): the user's files are never replaced. Returns True if written.
    """
    record_path = folder / REPORTS_RECORD
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        record = {}
    if not isinstance(record, dict):  # not what this tool writes: nothing in it is trusted
        record = {}
    path = folder / name
    ours = path.is_file() and (
        hashlib.sha256(path.read_bytes()).hexdigest() == record.get(name) or
        (not record_path.exists() and _report_of_an_earlier_version(folder)))
    if path.exists() and not ours:
        logger.warning("%s is not a file prepare_dataset.py wrote (or it was changed): left as "
                       "it is, this report part is not saved", path)
        return False
    atomic_write_bytes(path, data)
    record[name] = hashlib.sha256(data).hexdigest()
    atomic_write_json(record_path, record)
    return True
