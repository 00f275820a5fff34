"""Every file name of a run directory, in one place, for every reader and writer.

A run directory (``model/ultra/<run>/``) holds::

    config.json  class_names.json  split_manifest.json  history.csv  summary.json  training.log
    <arch>_best<ext>  <arch>_final_<timestamp><ext>  <arch>_epoch_NNN<ext>
    resume/state.json  resume/epoch_NNN/...      (what --resume continues from)
    calibration.json   evaluation/   export/     (written by evaluate.py and export.py)
    .partial/                                    (files being written; never a model)
    .lock                                        (held by the process training the run)

Model files are found by their exact names, never by a pattern, so a half-written temporary
file can never be taken for a model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from pokedex_trainer.errors import UserError
from pokedex_trainer.user_io.atomic import PARTIAL_DIR

CONFIG = "config.json"
CLASS_NAMES = "class_names.json"
MANIFEST = "split_manifest.json"
HISTORY = "history.csv"
SUMMARY = "summary.json"
TRAINING_LOG = "training.log"
CALIBRATION = "calibration.json"
EVALUATION_DIR = "evaluation"
EXPORT_DIR = "export"
RESUME_DIR = "resume"
RESUME_STATE = "state.json"
EXPERIMENTS = "experiments.csv"


@dataclass(frozen=True)
class RunLayout:
    """The paths of one run directory.

    Args:
        root: the run directory.
        arch: file-name stem of the network's models (``mobilenet_v2``); None when unknown
            (the layout then reads it from ``config.json``).
        extension: ``.keras`` or ``.pth``.
    """

    root: Path
    arch: str | None = None
    extension: str | None = None

    @classmethod
    def for_spec(cls, root: Path, spec) -> "RunLayout":
        return cls(Path(root), spec.arch, spec.model_extension)

    @classmethod
    def read(cls, root: Path) -> "RunLayout":
        """The layout of an existing run, its network taken from its ``config.json``."""
        from pokedex_trainer.networks import get_spec

        root = Path(root)
        try:
            values = json.loads((root / CONFIG).read_text(encoding="utf-8"))
            return cls.for_spec(root, get_spec(values["model_type"], values.get("framework")))
        except (OSError, ValueError, KeyError, TypeError):
            return cls(root)

    @property
    def config(self) -> Path:
        return self.root / CONFIG

    @property
    def class_names(self) -> Path:
        return self.root / CLASS_NAMES

    @property
    def manifest(self) -> Path:
        return self.root / MANIFEST

    @property
    def history(self) -> Path:
        return self.root / HISTORY

    @property
    def summary(self) -> Path:
        return self.root / SUMMARY

    @property
    def log(self) -> Path:
        return self.root / TRAINING_LOG

    @property
    def calibration(self) -> Path:
        return self.root / CALIBRATION

    @property
    def resume_dir(self) -> Path:
        return self.root / RESUME_DIR

    @property
    def resume_state(self) -> Path:
        return self.root / RESUME_DIR / RESUME_STATE

    @property
    def partial_dir(self) -> Path:
        return self.root / PARTIAL_DIR

    def model(self, kind: str, stamp: str | None = None) -> Path:
        """``<arch>_best<ext>``, ``<arch>_final_<stamp><ext>`` or ``<arch>_<kind><ext>``."""
        if self.arch is None:
            raise UserError(f"'{self.root}' is not a run directory of this tool (no readable "
                            f"{CONFIG})")
        name = f"final_{stamp}" if kind == "final" else kind
        return self.root / f"{self.arch}_{name}{self.extension}"

    @property
    def best_model(self) -> Path:
        return self.model("best")

    def final_models(self) -> list[Path]:
        """The final model(s) of the run, oldest first (a resumed run keeps one name)."""
        if self.arch is None:
            return []
        prefix, suffix = f"{self.arch}_final_", self.extension
        return sorted(p for p in self.root.iterdir() if p.is_file() and
                      p.name.startswith(prefix) and p.name.endswith(suffix))

    def final_stamp(self) -> str | None:
        """The timestamp in the name of the run's final model, if it has one."""
        finals = self.final_models()
        if not finals:
            return None
        return finals[0].name[len(f"{self.arch}_final_"):-len(self.extension)]

    def is_best_model(self, path: Path) -> bool:
        return self.arch is not None and Path(path).resolve() == self.best_model.resolve()
