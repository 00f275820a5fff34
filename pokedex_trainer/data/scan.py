"""The data layer shared by every trainer: class scan, safe listing, stratified split manifest."""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path

from pokedex_trainer.errors import UserError
from pokedex_trainer.data.files import _is_hidden, is_image_file, is_loop_link
from pokedex_trainer.user_io.inert_text import class_name

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")

# The guide's guidance: below these numbers a run works but results suffer.
RECOMMENDED_MIN_CLASSES = 10
RECOMMENDED_MIN_IMAGES_PER_CLASS = 100
RECOMMENDED_MIN_IMAGE_SIZE = 224


def list_class_dirs(data_path: Path) -> list[Path]:
    """Sub-folders of ``data_path`` that are classes, sorted by name (= class index order).
    A class folder may be a link (read where it points, its images only), but not one back to
    ``data_path`` or above it (a loop)."""
    return sorted((p for p in data_path.iterdir() if p.is_dir() and not _is_hidden(p)
                   and not is_loop_link(p)), key=lambda p: p.name)


def list_images(class_dir: Path) -> list[Path]:
    """Image files directly inside ``class_dir``, sorted for determinism."""
    return sorted((p for p in class_dir.iterdir() if is_image_file(p)), key=lambda p: p.name)


@dataclass
class DatasetIndex:
    """The images of a folder tree: class names in index order and (relative path, label) pairs."""

    root: Path
    class_names: list[str]
    samples: list[tuple[str, int]]

    def counts(self) -> dict[str, int]:
        counts = {name: 0 for name in self.class_names}
        for _, label in self.samples:
            counts[self.class_names[label]] += 1
        return counts

    def path(self, relative: str) -> Path:
        return self.root / relative


UNKNOWN_LIKE_NAMES = {"unknown", "unknowns", "desconocido", "desconocidos", "otro", "otros",
                      "other", "others", "none", "ninguno", "noanimal", "noanimales",
                      "notanimal", "background", "fondo", "fondos", "nada", "misc", "varios",
                      "negative", "negativos", "negatives"}


def unknown_like(name: str) -> bool:
    """True for a class folder named like "none of the species" (Otros, Desconocido, unknown)."""
    import unicodedata

    plain = "".join(c for c in unicodedata.normalize("NFKD", name.lower())
                    if c.isalnum() and not unicodedata.combining(c))
    return plain in UNKNOWN_LIKE_NAMES


def scan_dataset(data_path: Path | str) -> DatasetIndex:
    """List ``data_path/<Class>/*.jpg|jpeg|png``; raises UserError when it cannot be used.

    Empty class folders are ignored with a warning.
    """
    root = Path(data_path)
    if not root.exists():
        raise UserError(f"data path '{root}' does not exist")
    if not root.is_dir():
        raise UserError(f"data path '{root}' is not a folder")
    class_names: list[str] = []
    samples: list[tuple[str, int]] = []
    for class_dir in list_class_dirs(root):
        images = list_images(class_dir)
        if not images:
            logger.warning("class folder '%s' holds no .jpg/.jpeg/.png image: ignored%s",
                           class_dir.name, _nested_note(class_dir))
            continue
        name = class_name(class_dir.name)  # León from macOS is decomposed: one form (NFC)
        if name in class_names:
            raise UserError(f"'{root}' has two class folders named '{name}' (the same name in "
                            "two Unicode forms, e.g. one copied from macOS): merge them")
        if unknown_like(name):
            logger.warning("class '%s' looks like photos of none of the species: as a class the "
                           "model learns to name it as one%s; train with --unknown_dir <its "
                           "folder> instead (outlier exposure, docs/training.md)", name,
                           ", and its name is the word the tool answers for a photo of none "
                           "of them" if name.lower() == "unknown" else "")
        label = len(class_names)
        class_names.append(name)
        samples.extend((image.relative_to(root).as_posix(), label) for image in images)
    if not samples:
        from pokedex_trainer.data.archives import find_image_roots, training_advice

        archive = find_image_roots(root)
        if archive is not None:
            raise UserError(training_advice(archive))
        raise UserError(f"no images found in '{root}': expected {root}/<Class>/*.jpg "
                        "(jpg, jpeg or png, one sub-folder per class)")
    index = DatasetIndex(root, class_names, samples)
    check_class_count(index)
    return index


def _nested_note(folder: Path) -> str:
    """For a class folder whose images sit one level deeper (an archive's wrapper folder)."""
    from pokedex_trainer.data.archives import is_class_root

    if is_class_root(folder):
        return (f" (its sub-folders hold images: an extracted archive? prepare it with "
                f"python prepare_dataset.py --input_dir {folder.as_posix()} --output_dir "
                "ANOTHER_FOLDER)")
    return ""


def check_class_count(index: "DatasetIndex", why: str = "") -> None:
    """A classifier needs at least 2 classes; raises UserError otherwise."""
    if len(index.class_names) < 2:
        raise UserError(f"'{index.root}' holds only {len(index.class_names)} class"
                        f"{why} ({', '.join(index.class_names) or 'none'}); a classifier needs "
                        "at least 2")


def split_counts(n: int, val_split: float, test_split: float) -> tuple[int, int, int]:
    """Images of one class per split: every split with a positive fraction gets at least one."""
    n_val = max(1, round(n * val_split)) if val_split > 0 else 0
    n_test = max(1, round(n * test_split)) if test_split > 0 else 0
    return n - n_val - n_test, n_val, n_test


def stratified_split(index: DatasetIndex, val_split: float, test_split: float,
                     seed: int) -> dict[str, list[tuple[str, int]]]:
    """Split each class on its own with a seeded shuffle, so every split keeps class ratios.

    The same files, fractions and seed always give the same split, whatever the OS.

    Raises:
        UserError: a class has too few images to give each split one and training two.
    """
    by_class: dict[int, list[str]] = {}
    for relative, label in index.samples:
        by_class.setdefault(label, []).append(relative)
    splits: dict[str, list[tuple[str, int]]] = {name: [] for name in SPLITS}
    for label, paths in sorted(by_class.items()):
        n_train, n_val, n_test = split_counts(len(paths), val_split, test_split)
        if n_train < 2:
            needed = len(paths) - n_train + 2
            raise UserError(
                f"class '{index.class_names[label]}' has only {len(paths)} images: at least "
                f"{needed} are needed to split it into train/validation/test "
                f"(--val_split {val_split}, --test_split {test_split})")
        order = sorted(paths)
        random.Random(f"{seed}:{index.class_names[label]}").shuffle(order)
        parts = {"val": order[:n_val], "test": order[n_val:n_val + n_test],
                 "train": order[n_val + n_test:]}
        for split, part in parts.items():
            splits[split].extend((p, label) for p in sorted(part))
    return splits


def dataset_warnings(index: DatasetIndex, image_size: tuple[int, int]) -> list[str]:
    """The guide's recommendations that this dataset or run misses; the run still goes on."""
    warnings = []
    if len(index.class_names) < RECOMMENDED_MIN_CLASSES:
        warnings.append(f"only {len(index.class_names)} classes; the guide recommends at least "
                        f"{RECOMMENDED_MIN_CLASSES}")
    small = {name: n for name, n in index.counts().items() if n < RECOMMENDED_MIN_IMAGES_PER_CLASS}
    if small:
        listed = ", ".join(f"{name} ({n})" for name, n in sorted(small.items()))
        warnings.append(f"{len(small)} classes have fewer than "
                        f"{RECOMMENDED_MIN_IMAGES_PER_CLASS} images: {listed}")
    if min(image_size) < RECOMMENDED_MIN_IMAGE_SIZE:
        warnings.append(f"image size {image_size[0]}x{image_size[1]} is below the recommended "
                        f"{RECOMMENDED_MIN_IMAGE_SIZE} px; accuracy will suffer")
    return warnings


def find_unreadable_headers(index: DatasetIndex) -> list[tuple[str, str]]:
    """Check every file's header (cheap: no pixel decoding); return (path, reason) of bad ones."""
    from pokedex_trainer.data.images import UnreadableImageError, probe_image

    bad = []
    for relative, _ in index.samples:
        try:
            probe_image(index.path(relative))
        except UnreadableImageError as exc:
            bad.append((relative, exc.reason))
    return bad


def drop_samples(index: DatasetIndex, relatives: set[str]) -> tuple[DatasetIndex, list[str]]:
    """A copy of ``index`` without the given files, and the classes left with no image (they
    are dropped, the other classes renumbered in order)."""
    kept = [(p, label) for p, label in index.samples if p not in relatives]
    present = sorted({label for _, label in kept})
    emptied = [name for i, name in enumerate(index.class_names) if i not in present]
    renumber = {old: new for new, old in enumerate(present)}
    return (DatasetIndex(index.root, [index.class_names[i] for i in present],
                         [(p, renumber[label]) for p, label in kept]), emptied)
