"""What a run records about itself: the environment it ran in and its experiments row."""

from __future__ import annotations

import platform
import sys
import time
from pathlib import Path

from pokedex_trainer import __version__
from pokedex_trainer.core.context import RunContext
from pokedex_trainer.core.loop import RunState
from pokedex_trainer.networks import framework_option
from pokedex_trainer.runs.experiments_table import RECIPE_COLUMNS

LIBRARIES = ("tensorflow", "keras", "torch", "torchvision", "albumentations",
             "opencv-python-headless", "numpy", "pillow")


def environment_info() -> dict:
    """What it takes to repeat a run: versions, platform and the exact command line."""
    from importlib import metadata

    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {"python": sys.version.split()[0], "platform": platform.platform(),
            "pokedex_trainer": __version__, "libraries": versions,
            "command": [sys.executable] + sys.argv}


def experiment_row(context: RunContext, state: RunState, status: str, started: float,
                   test_metrics: dict) -> dict:
    config = context.config
    best = state.best_logs
    return {
        "run_name": context.run_dir.name, "model_type": config.model_type,
        "framework": framework_option(context.spec.framework), "status": status,
        "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)),
        "duration_s": f"{time.time() - started:.1f}", "epochs_run": state.epochs_run,
        "best_val_accuracy": _fmt(best.get("val_accuracy")),
        "best_val_top5_accuracy": _fmt(best.get("val_top5_accuracy")),
        "best_epoch": state.tracker.best_epoch or "",
        "test_accuracy": _fmt(test_metrics.get("accuracy")),
        "test_top5_accuracy": _fmt(test_metrics.get("top5_accuracy")),
        "learning_rate": config.learning_rate,
        "fine_tune_learning_rate": config.fine_tune_learning_rate,
        "batch_size": config.batch_size, "image_size": "x".join(map(str, config.image_size)),
        "epochs": config.epochs, "fine_tune_epochs": config.fine_tune_epochs,
        "fine_tune_layers": config.fine_tune_layers,
        "weights": f"base_model:{Path(config.base_model).name}" if config.base_model
        else config.weights,
        "dropout": config.dropout, "augment": config.augment,
        "class_weight": config.class_weight, "sampler": config.sampler, "seed": config.seed,
        "keras_backend": config.keras_backend if context.spec.framework == "keras" else "",
        "run_dir": str(context.run_dir),
        "search_name": config.search_name or "",
        "search_trial": "" if config.search_trial is None else config.search_trial,
        **{name: getattr(config, name) for name in RECIPE_COLUMNS},
    }


def _fmt(value) -> str:
    return "" if value is None else f"{value:.4f}"
