"""Reading a finished run back: its best model, its split and the images of a split.

Evaluation and export both start from a run directory (or a model file inside one) and need the
same things: which model file, which classes, which held-out images.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pokedex_trainer.data.scan import scan_dataset
from pokedex_trainer.errors import UserError
from pokedex_trainer.runs.layout import CONFIG, MANIFEST
from pokedex_trainer.runs.store import RunStore

logger = logging.getLogger(__name__)


def best_model_of(run_dir: Path) -> Path:
    """``<arch>_best.keras`` or ``<arch>_best.pth`` of a run directory, by its exact name."""
    run_dir = Path(run_dir)
    if run_dir.is_file():
        raise UserError(f"'{run_dir}' is a file, not a run directory: give a model file with "
                        f"--model '{run_dir}', or its folder with --run_dir")
    if not run_dir.is_dir():
        raise UserError(f"run directory '{run_dir}' does not exist")
    store = RunStore(run_dir)
    if store.is_run():
        store.saved_config()  # a damaged config.json: one line naming it
    if not store.knows_its_network():
        raise UserError(f"'{run_dir}' is not a run directory of this tool (no readable "
                        f"{CONFIG})")
    best = store.best_model()
    if not best.is_file():
        raise UserError(f"'{run_dir}' holds no best model ({best.name}): did its "
                        "first epoch finish?")
    return best


def run_dir_of(model_path: Path) -> Path | None:
    """The run directory a model file lives in (it has a split manifest), if any."""
    for folder in (Path(model_path).parent, Path(model_path).parent.parent):
        if RunStore(folder).has_manifest():
            return folder
    return None


def model_and_run(run_dir: str | None, model: str | None) -> tuple[Path, Path | None]:
    """(model file, its run directory or None) from ``--run_dir`` and/or ``--model``: a run's
    best model, or a given file and the run it sits in (if any)."""
    if run_dir and model:
        return Path(model), Path(run_dir)
    if run_dir:
        return best_model_of(Path(run_dir)), Path(run_dir)
    path = Path(model)
    if not path.exists():
        raise UserError(f"model '{path}' does not exist")
    return path, run_dir_of(path)


@dataclass
class LabelledImages:
    """Images a model is measured on: paths relative to ``root`` with labels in class order."""

    root: Path
    class_names: list[str]
    samples: list[tuple[str, int]]
    description: str

    def subset(self, limit: int | None, seed: int = 0) -> "LabelledImages":
        """At most ``limit`` samples, spread over the classes (a seeded shuffle, stable)."""
        if limit is None or len(self.samples) <= limit:
            return self
        order = np.random.default_rng(seed).permutation(len(self.samples))[:limit]
        return LabelledImages(self.root, self.class_names,
                              [self.samples[i] for i in sorted(order)],
                              f"{self.description}, {limit} of {len(self.samples)}")

    def load(self, image_size: tuple[int, int], batch_size: int = 32, progress: str | None = None):
        """Yield (uint8 images (N, H, W, 3), labels) batches through the evaluation transform;
        an unreadable file is skipped with a warning."""
        from pokedex_trainer.data.feeding import BatchSource
        from pokedex_trainer.data.images import UnreadableImageError

        source = BatchSource(self.root, self.samples, image_size, training=False)
        indices = range(len(self.samples))
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(self.samples), desc=progress, unit="img", leave=False)
        try:
            for start in range(0, len(self.samples), batch_size):
                images, labels = [], []
                for index in indices[start:start + batch_size]:
                    try:
                        images.append(source.load_image(index))
                        labels.append(self.samples[index][1])
                    except UnreadableImageError as exc:
                        logger.warning("skipped unreadable image %s: %s",
                                       self.samples[index][0], exc.reason)
                if bar is not None:
                    bar.update(min(batch_size, len(self.samples) - start))
                if images:
                    yield np.stack(images), np.asarray(labels, np.int64)
        finally:
            if bar is not None:
                bar.close()

    def load_all(self, image_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        batches = list(self.load(image_size))
        if not batches:
            raise UserError(f"no readable image in {self.description}")
        return (np.concatenate([b[0] for b in batches]),
                np.concatenate([b[1] for b in batches]))


def run_split(run_dir: Path, split: str) -> LabelledImages:
    """The images of one split of a run, from its manifest, where they are now.

    The data folder is the one in the run's config if it still holds the files, else the one
    recorded in the manifest.
    """
    run_dir = Path(run_dir)
    store = RunStore(run_dir)
    if not store.has_manifest():
        raise UserError(f"'{run_dir}' has no {MANIFEST}: not a run directory of this tool")
    manifest = store.manifest()
    samples = manifest["splits"].get(split, [])
    candidates = []
    if store.is_run():
        candidates.append(Path(store.saved_config().data_path))
    candidates.append(Path(manifest["data_path"]))
    root = next((c for c in candidates if samples and (c / samples[0][0]).is_file()),
                candidates[0])
    missing = [p for p, _ in samples if not (root / p).is_file()]
    if missing:
        raise UserError(f"{len(missing)} of the {len(samples)} {split} images of '{run_dir}' are "
                        f"missing under '{root}' (first: {missing[0]}); pass --data_path")
    store.class_names()  # class_names.json must agree with the manifest
    return LabelledImages(root, manifest["class_names"], samples,
                          f"the {split} split of {run_dir.name} ({len(samples)} images)")


def folder_images(data_path: Path, class_names: list[str]) -> LabelledImages:
    """Every image of a labelled folder (one sub-folder per class) in the model's class order.

    Raises UserError when the folder's classes are not the model's.
    """
    index = scan_dataset(data_path)
    if index.class_names != list(class_names):
        unknown = sorted(set(index.class_names) - set(class_names))
        absent = sorted(set(class_names) - set(index.class_names))
        detail = []
        if unknown:
            detail.append(f"not in the model: {', '.join(unknown[:5])}")
        if absent:
            detail.append(f"missing here: {', '.join(absent[:5])}")
        raise UserError(f"the classes of '{data_path}' do not match the model's "
                        f"{len(class_names)} classes ({'; '.join(detail) or 'different order'})")
    return LabelledImages(index.root, index.class_names, index.samples,
                          f"{data_path} ({len(index.samples)} images)")
