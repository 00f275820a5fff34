"""``--kfold K``: the guide's "validacion cruzada" for small datasets.

Each of the K stratified folds is the test split of one normal run (its own directory, logs,
experiments row); the rest of the data is split into training and validation as usual. The
summary gives the mean and standard deviation of each metric over the folds.
"""

from __future__ import annotations

import logging
import math
from dataclasses import replace
from pathlib import Path

import numpy as np

from pokedex_trainer.config import TrainConfig
from pokedex_trainer.data.scan import DatasetIndex, stratified_split
from pokedex_trainer.errors import UserError
from pokedex_trainer.runs.distributed import world as process_world
from pokedex_trainer.runs.store import RunStore, timestamp
from pokedex_trainer.user_io.atomic import atomic_write_json

logger = logging.getLogger(__name__)

SUMMARY_METRICS = ("best_val_accuracy", "best_val_top5_accuracy", "test_accuracy",
                   "test_top5_accuracy")


def kfold_splits(index: DatasetIndex, k: int, val_split: float, seed: int) -> list[dict]:
    """K split dicts (train / val / test); every image is in exactly one test fold."""
    from sklearn.model_selection import StratifiedKFold

    if k < 2:
        raise UserError("--kfold needs at least 2 folds")
    labels = np.array([label for _, label in index.samples])
    smallest = int(np.bincount(labels, minlength=len(index.class_names)).min())
    if smallest < k:
        name = index.class_names[int(np.bincount(labels).argmin())]
        raise UserError(f"--kfold {k}: class '{name}' has only {smallest} images, fewer than "
                        "the folds; use fewer folds")
    folds = []
    splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    for rest, test in splitter.split(np.zeros(len(labels)), labels):
        remaining = DatasetIndex(index.root, index.class_names,
                                 [index.samples[i] for i in rest])
        # the validation share of the whole data, taken from what the test fold leaves
        inner = stratified_split(remaining, min(0.9, val_split / (1 - 1 / k)), 0.0, seed)
        folds.append({"train": inner["train"], "val": inner["val"],
                      "test": sorted(index.samples[i] for i in test)})
    return folds


def run_kfold(config: TrainConfig, k: int) -> Path:
    """Train one run per fold, then write and print the mean and spread of the metrics."""
    from pokedex_trainer.runs.lifecycle import train_new_run
    from pokedex_trainer.runs.opening import create_run, prepare_data

    if process_world()[1] > 1:
        raise UserError("--kfold trains its folds one after the other in one process: run it "
                        "without torchrun")
    config = config.resolved()
    index, _, notes = prepare_data(config)
    folds = kfold_splits(index, k, config.val_split, config.seed)
    base = config.run_name or f"{config.model_type}_{timestamp()}"
    summaries = []
    for number, splits in enumerate(folds, 1):
        logger.info("fold %d of %d: %d train / %d validation / %d test images", number, k,
                    len(splits["train"]), len(splits["val"]), len(splits["test"]))
        fold_config = replace(config, run_name=f"{base}_fold{number}of{k}", test_split=1 / k)
        context, fold_notes = create_run(fold_config, prepared=(index, splits, notes))
        run_dir = train_new_run(context, fold_notes)  # the lock and cleanup of any run
        summaries.append({"run_dir": str(run_dir), **(RunStore(run_dir).summary() or {})})
    return write_kfold_summary(Path(config.output_dir) / f"{base}_kfold{k}.json", summaries)


def summarize(summaries: list[dict]) -> dict:
    """Mean and (sample) standard deviation of each metric over the folds."""
    result = {}
    for key in SUMMARY_METRICS:
        values = [float(s[key]) for s in summaries if s.get(key) not in (None, "")]
        if values:
            mean = float(np.mean(values))
            std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
            result[key] = {"mean": mean, "std": std, "folds": values}
    return result


def write_kfold_summary(path: Path, summaries: list[dict]) -> Path:
    stats = summarize(summaries)
    atomic_write_json(path, {"folds": len(summaries),
                             "runs": [s["run_dir"] for s in summaries], "metrics": stats})
    print(f"{len(summaries)}-fold cross-validation:")
    for key, value in stats.items():
        print(f"  {key:<24} {value['mean']:.4f} ± {value['std']:.4f}   "
              f"(folds: {', '.join(f'{v:.3f}' for v in value['folds'])})")
    print(f"summary: {path}")
    if any(math.isnan(v["mean"]) for v in stats.values()):
        logger.warning("some folds have no metric (failed runs?)")
    return path
