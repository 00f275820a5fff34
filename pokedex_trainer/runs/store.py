"""RunStore: the one reader and writer of a run directory's files.

A run directory holds config.json, class_names.json, split_manifest.json, history.csv,
resume/ (state.json and its epoch folder), the model files by name, summary.json,
training.log, calibration.json, and its row in the experiments.csv beside it. Every other
module asks the store for them: file names, checks of what is read back (``checked_files``)
and the upgrade of a run written by an earlier version (``upgrade``) live here only.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

from pokedex_trainer.errors import UserError
from pokedex_trainer.runs.checked_files import (
    RESUME_REMEDY,
    check_history,
    config_values,
    fail,
    read_calibration,
    read_manifest,
    read_state,
    read_summary,
    run_class_names,
)
from pokedex_trainer.runs.experiments_table import append_experiment, check_experiments_table
from pokedex_trainer.runs.layout import EXPERIMENTS, RunLayout
from pokedex_trainer.runs.lock import RunLock
from pokedex_trainer.user_io.atomic import atomic_write_json, ensure_writable_dir
from pokedex_trainer.data.fingerprints import fingerprints

FINISHED = ("completed", "nan_loss", "pruned")  # a summary status that cannot continue


def read_calibration_file(path: Path) -> dict | None:
    """A calibration.json (a run's own, or one named by ``--calibration``), checked; None when
    it does not exist."""
    return read_calibration(Path(path))


def write_calibration_file(path: Path, data: dict) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(Path(path), data)


def timestamp() -> str:
    return datetime.now().strftime("%Y%m%d_%H%M%S")


def create_run_dir(output_dir: Path, base_name: str) -> Path:
    """Make a new, unique run directory; concurrent runs never share one."""
    ensure_writable_dir(output_dir, "output directory")
    for attempt in range(1, 1000):
        name = base_name if attempt == 1 else f"{base_name}_{attempt}"
        candidate = output_dir / name
        try:
            candidate.mkdir()  # atomic: exactly one process wins a name
            return candidate
        except FileExistsError:
            continue
    raise UserError(f"could not create a run directory for '{base_name}' in '{output_dir}'")


class RunStore:
    """The files of one run directory, read back checked and written atomically.

    Args:
        root: the run directory.
        spec: the network's ModelSpec when the caller knows it (a new run); otherwise the
            model file names are taken from the run's own config.json.
    """

    def __init__(self, root: Path, spec=None):
        root = Path(root)
        self.layout = RunLayout.for_spec(root, spec) if spec is not None else RunLayout.read(root)

    @classmethod
    def create(cls, output_dir: Path, name: str, spec) -> "RunStore":
        """A new, empty run directory ``<output_dir>/<name>`` (``_2``, ``_3``... when taken);
        refused before it is made if the experiments table beside it cannot take its row."""
        check_experiments_table(Path(output_dir) / EXPERIMENTS)
        return cls(create_run_dir(Path(output_dir), name), spec)

    @property
    def root(self) -> Path:
        return self.layout.root

    @property
    def experiments_table(self) -> Path:
        """The experiments.csv shared by the runs of one output directory."""
        return self.root.parent / EXPERIMENTS

    def is_run(self) -> bool:
        """Whether the folder holds a run of this tool (its config.json)."""
        return self.layout.config.is_file()

    def lock(self) -> RunLock:
        """Take the run's lock (one process trains a run), or raise UserError."""
        if not self.root.is_dir():
            raise UserError(f"--resume: '{self.root}' is not a run directory")
        return RunLock(self.root).acquire()

    # --- what the run starts from ---------------------------------------------------------

    def write_start(self, config, index, splits: dict) -> None:
        """config.json, class_names.json and split_manifest.json of a new run."""
        atomic_write_json(self.layout.config, config.to_dict())
        atomic_write_json(self.layout.class_names, index.class_names)
        self.write_manifest(index, splits, config.seed, config.val_split, config.test_split)

    def write_manifest(self, index, splits: dict, seed: int, val_split: float,
                       test_split: float) -> None:
        """split_manifest.json: the split, so evaluation later uses exactly the held-out
        images (the data folder, the class names and every image of every split)."""
        atomic_write_json(self.layout.manifest, {
            "data_path": str(index.root.resolve()),
            "class_names": index.class_names,
            "seed": seed,
            "val_split": val_split,
            "test_split": test_split,
            "counts": {split: len(items) for split, items in splits.items()},
            "splits": {split: [[p, label] for p, label in items]
                       for split, items in splits.items()},
            # what --resume compares, to say which photos changed since the run started
            "fingerprints": fingerprints(index.root, [p for items in splits.values()
                                                      for p, _ in items]),
        })

    def saved_config(self):
        """config.json as a TrainConfig, the type of every value checked (a saved config is
        input too: copied, edited by hand)."""
        from pokedex_trainer.config import TrainConfig

        return TrainConfig(**config_values(self.layout.config, TrainConfig.field_types()))

    def config(self):
        """The run's TrainConfig, checked as a new run's would be (for a run that trains
        again); UserError names a bad value."""
        config = self.saved_config()
        try:
            return config.resolved()
        except UserError as exc:
            fail(self.layout.config, f"holds a value a run cannot use ({exc})", RESUME_REMEDY)

    def config_values(self) -> dict:
        """config.json as plain values, unchecked beyond being a JSON object ({} if absent)."""
        try:
            data = json.loads(self.layout.config.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def class_names(self) -> list[str] | None:
        """class_names.json, checked against the split manifest; None if the run has none."""
        return run_class_names(self.root)

    def has_manifest(self) -> bool:
        return self.layout.manifest.is_file()

    def knows_its_network(self) -> bool:
        """Whether the model file names are known (from the spec or a readable config)."""
        return self.layout.arch is not None

    def manifest(self) -> dict:
        return read_manifest(self.layout.manifest)

    # --- while it trains ------------------------------------------------------------------

    def history_rows(self) -> list[dict]:
        """history.csv's rows as written; [] when it is missing or unreadable (for views)."""
        import csv

        try:
            with open(self.layout.history, encoding="utf-8", newline="") as handle:
                return list(csv.DictReader(handle))
        except (OSError, UnicodeDecodeError, csv.Error):
            return []

    @property
    def history_path(self) -> Path:
        return self.layout.history

    @property
    def log_path(self) -> Path:
        """training.log (written through ``run_log.capture_to_log``)."""
        return self.layout.log

    def log_text(self) -> str:
        """training.log as text ("" when there is none yet)."""
        try:
            return self.layout.log.read_text("utf-8", errors="replace")
        except OSError:
            return ""

    def append_to_log(self, text: str) -> None:
        with open(self.layout.log, "a", encoding="utf-8") as handle:
            handle.write(text if text.endswith("\n") else text + "\n")

    def resume_folder(self, state_dir: str) -> Path:
        """resume/epoch_NNN, the folder a resume point names (its ``state_dir``)."""
        return self.layout.resume_dir / state_dir

    def has_resume_state(self) -> bool:
        return self.layout.resume_state.is_file()

    def resume_point(self, phase_epochs: list[int], max_format: int) -> dict:
        """resume/state.json (a first-version run upgraded first), checked against the plan,
        and history.csv checked against it."""
        from pokedex_trainer.runs.upgrade import upgrade_resume_state

        if not self.layout.resume_state.is_file():
            raise UserError(f"--resume: '{self.root}' has no resumable state (it stopped before "
                            "its first epoch ended, or is not a run directory)")
        point = read_state(self.layout.resume_state, phase_epochs, max_format)
        if "state_dir" not in point:  # written by the first version
            point = upgrade_resume_state(self.layout, point, max_format)
            point = read_state(self.layout.resume_state, phase_epochs, max_format)
        check_history(self.layout.history, point["run_state"]["epochs_run"],
                      self.layout.resume_state)
        return point

    # --- how it ended ---------------------------------------------------------------------

    def summary(self) -> dict | None:
        return read_summary(self.layout.summary)

    def finished_status(self) -> str | None:
        """completed, nan_loss or pruned for a run that ended, None when it can continue. A
        summary.json that cannot be read is refused (UserError): resuming a run whose end is
        unknown could train a finished run again."""
        status = (self.summary() or {}).get("status")
        return status if status in FINISHED else None

    def write_summary(self, summary: dict) -> None:
        atomic_write_json(self.layout.summary, summary)

    def append_experiment(self, row: dict) -> None:
        append_experiment(self.experiments_table, row)

    # --- after it ended -------------------------------------------------------------------

    def calibration(self) -> dict | None:
        return read_calibration_file(self.layout.calibration)

    @property
    def calibration_path(self) -> Path:
        return self.layout.calibration

    def has_class_names(self) -> bool:
        return self.layout.class_names.is_file()

    def best_model(self) -> Path:
        return self.layout.best_model

    def is_best_model(self, path: Path) -> bool:
        return self.layout.is_best_model(path)

    def final_stamp(self) -> str | None:
        return self.layout.final_stamp()

    def drop_resume_state(self) -> int:
        """Remove resume/ (state.json and its epoch folders) of a finished run; returns the
        bytes freed. Only this tool writes there (see CheckpointSaver)."""
        import shutil

        folder = self.layout.resume_dir
        if not folder.is_dir() or folder.is_symlink():
            return 0
        size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()
                   and not p.is_symlink())
        shutil.rmtree(folder)
        return size

    def write_resume_state(self, position: dict) -> None:
        """resume/state.json, replaced atomically (it names the epoch folder it belongs to)."""
        atomic_write_json(self.layout.resume_state, position)

    def remove_new_run(self) -> bool:
        """Remove what a new run wrote before its first epoch ended (bad input stopped it),
        then its folder if that is empty; False when the folder holds other files."""
        import shutil

        layout = self.layout
        for path in (layout.config, layout.class_names, layout.manifest, layout.log,
                     layout.history, layout.root / RunLock.NAME):
            try:
                path.unlink(missing_ok=True)
            except OSError:
                pass
        shutil.rmtree(layout.partial_dir, ignore_errors=True)  # inside the run's own folder
        try:
            layout.root.rmdir()
        except OSError:
            return False
        return True


def store_of(context) -> RunStore:
    """The store of a run being trained (a core RunContext: its folder and network)."""
    return RunStore(context.run_dir, context.spec)
