"""One object owns every model file of a run: best, final, every N epochs, resume state.

The resume state is committed in two steps that a kill at any moment cannot tear apart: the
backend writes weights and optimizer into a new folder ``resume/epoch_NNN`` (built under
``.partial`` and renamed into place), then ``resume/state.json``, which names that folder, is
replaced atomically. Until the rename of ``state.json`` the previous position and its own
folder stand; older folders are removed only afterwards.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from dataclasses import replace
from pathlib import Path

from pokedex_trainer.core.phases import ResumePoint
from pokedex_trainer.core.training_backend import TrainingBackend

logger = logging.getLogger(__name__)

STATE_FORMAT = 2
_STATE_DIR = re.compile(r"^epoch_\d{3,}$")
_STATE_TMP = re.compile(r"^\.state\.json\..*\.tmp$")  # a killed write of state.json
_RUN_FILE_TMP = re.compile(r"^\.(summary|config|class_names|split_manifest|calibration|exports)"
                           r"\.json\.[^.]+\.tmp$")


class CheckpointSaver:
    """Writes the model files of a run, and reads back what resuming needs.

    Args:
        store: the run's files (its RunStore): model file names, resume/state.json.
        stamp: the timestamp in the final model's name.
        save_every: keep a copy of the model every N epochs (0: never).
        enabled: False on the ranks of a multi-process run that must not write.
        save_h5: also write the final model as legacy HDF5 (``--save_h5``, Keras only).
    """

    def __init__(self, store, stamp: str, save_every: int = 0, enabled: bool = True,
                 save_h5: bool = False):
        layout = store.layout
        self.store, self.layout, self.stamp, self.save_every, self.enabled = (
            store, layout, stamp, save_every, enabled)
        self.save_h5 = save_h5
        if enabled:  # a killed save's leftovers
            shutil.rmtree(layout.partial_dir, ignore_errors=True)
            for leftover in layout.root.glob(".*.json.*.tmp"):
                if _RUN_FILE_TMP.match(leftover.name):
                    leftover.unlink(missing_ok=True)

    @property
    def best_path(self) -> Path:
        return self.layout.best_model

    @property
    def final_path(self) -> Path:
        return self.layout.model("final", self.stamp)

    def save_best(self, backend: TrainingBackend) -> None:
        if self.enabled:
            backend.save_model(self.best_path)

    def save_final(self, backend: TrainingBackend) -> None:
        if self.enabled:
            backend.save_model(self.final_path)
            logger.info("saved %s and %s", self.best_path.name, self.final_path.name)
            if self.save_h5:  # the backend saves in the format the suffix names
                backend.save_model(self.final_path.with_suffix(".h5"))
                logger.info("saved %s", self.final_path.with_suffix(".h5").name)

    def best_weights(self, backend: TrainingBackend):
        """The best checkpoint's weights from disk (a resumed run has none in memory)."""
        return backend.read_model_weights(self.best_path) if self.best_path.is_file() else None

    def save_epoch(self, backend: TrainingBackend, epoch: int, position: ResumePoint) -> None:
        """After 0-based ``epoch``: the periodic copy when due, then the resume state."""
        if not self.enabled:
            return
        if self.save_every and (epoch + 1) % self.save_every == 0:
            backend.save_model(self.layout.model(f"epoch_{epoch + 1:03d}"))
        name = f"epoch_{epoch + 1:03d}"
        building = self.layout.partial_dir / f"resume_{name}"
        shutil.rmtree(building, ignore_errors=True)
        building.mkdir(parents=True)
        backend.save_state(building)
        _fsync_folder(building)
        target = self.layout.resume_dir / name
        self.layout.resume_dir.mkdir(exist_ok=True)
        if target.exists():  # this epoch ran before a kill, and again after --resume
            shutil.rmtree(target)
        os.replace(building, target)
        try:
            self.layout.partial_dir.rmdir()
        except OSError:
            pass
        self.store.write_resume_state({"format": STATE_FORMAT,
                                       **replace(position, state_dir=name).saved()})
        self._remove_older_states(keep=name)

    def _remove_older_states(self, keep: str) -> None:
        for path in self.layout.resume_dir.iterdir():
            if path.name == keep:
                continue
            if path.is_dir() and _STATE_DIR.match(path.name):
                shutil.rmtree(path, ignore_errors=True)
            elif _STATE_TMP.match(path.name):
                path.unlink(missing_ok=True)

    def restore(self, backend: TrainingBackend, position: ResumePoint) -> None:
        """Load the weights and optimizer saved with ``position`` into ``backend`` (a run of
        an earlier version was brought to this format when its store opened it)."""
        backend.load_state(self.layout.resume_dir / position.state_dir)


def _fsync_folder(folder: Path) -> None:
    """Flush the files of ``folder`` to disk before they become the resume state."""
    for path in folder.iterdir():
        if path.is_file():
            with open(path, "r+b") as handle:  # Windows flushes only writable handles
                os.fsync(handle.fileno())
