"""Runs written by an earlier version, brought to today's format when they are opened.

The first version kept its resume files flat in ``resume/`` (``last.pth``, or
``last.weights.h5`` + ``optimizer.npz``), its state.json without ``format``/``state_dir``, and
its plateau counters in ``backend.reduce_lr`` (Keras) or inside ``last.pth`` (PyTorch's
scheduler). ``upgrade_resume_state`` rewrites such a run the way today's saver writes one, so
that the core loop and the training backends know one format only. It never loses the old
files before the new ones are complete: they are copied into the new folder, state.json is
replaced atomically, and only then are the flat files removed.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from pokedex_trainer.runs.layout import RunLayout
from pokedex_trainer.user_io.atomic import atomic_write_json

logger = logging.getLogger(__name__)

# first-version file -> today's name inside resume/epoch_NNN (see each backend's save_state)
RENAMED = {"last.pth": "state.pth", "last.weights.h5": "weights.weights.h5",
           "optimizer.npz": "optimizer.npz"}


def upgrade_resume_state(layout: RunLayout, point: dict, state_format: int) -> dict:
    """Rewrite a first-version resume point (already checked) into ``resume/epoch_NNN`` and a
    state.json of ``state_format``; returns the new point."""
    resume = layout.resume_dir
    flat = [name for name in RENAMED if (resume / name).is_file()]
    name = f"epoch_{point['next_epoch']:03d}"
    building = layout.partial_dir / f"resume_{name}"
    shutil.rmtree(building, ignore_errors=True)
    building.mkdir(parents=True)
    for old in flat:
        shutil.copy2(resume / old, building / RENAMED[old])
    target = resume / name
    if target.exists():
        shutil.rmtree(target)
    os.replace(building, target)
    try:
        layout.partial_dir.rmdir()
    except OSError:
        pass
    upgraded = {key: value for key, value in point.items() if key != "backend"}
    plateau = (point.get("backend") or {}).get("reduce_lr") or _torch_plateau(target)
    if plateau:
        upgraded["plateau"] = plateau
    upgraded.update({"format": state_format, "state_dir": name})
    atomic_write_json(layout.resume_state, upgraded)
    for old in flat:
        (resume / old).unlink(missing_ok=True)
    logger.info("resume state of an earlier version upgraded (%s)", ", ".join(flat) or "no files")
    return upgraded


def _torch_plateau(folder: Path) -> dict | None:
    """The plateau counters the first version kept in PyTorch's ReduceLROnPlateau state."""
    path = folder / RENAMED["last.pth"]
    if not path.is_file():
        return None
    from pokedex_trainer.backends.torch.tensor_files import load_tensors

    scheduler = load_tensors(path).get("scheduler")
    if not scheduler:
        return None
    return {"best": scheduler.get("best"), "wait": scheduler.get("num_bad_epochs", 0),
            "cooldown_counter": scheduler.get("cooldown_counter", 0)}
