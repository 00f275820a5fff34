"""What a new run made on disk, so that a run stopped before its first epoch removes exactly
that and nothing else.

The folders a run writes into are named by the user: ``--log_dir home --run_name Documents``
makes ``home/Documents`` the run's TensorBoard folder, and an earlier run of the same name
left its TensorBoard folder where the new one goes. So the cleanup never removes a tree: it
removes the event files this process wrote (known by name), then the folders this run
created, each only if it is empty by then.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from pokedex_trainer.core.tensorboard import TRAIN_SUBDIR, VALIDATION_SUBDIR

EVENTS_PREFIX = "events.out.tfevents."  # TensorFlow's and PyTorch's event files alike
_SUBDIRS = (TRAIN_SUBDIR, VALIDATION_SUBDIR)


def missing_folders(path: Path) -> list[Path]:
    """``path`` and those of its parents that do not exist yet: the folders that making
    ``path`` creates."""
    path = Path(os.path.abspath(path))
    missing = []
    while not os.path.lexists(path) and path != path.parent:
        missing.append(path)
        path = path.parent
    return missing


def _listing(folder: Path) -> list[str]:
    try:
        return sorted(os.listdir(folder))
    except OSError:
        return []


@dataclass
class RunFootprint:
    """Args:
        tensorboard_dir: the run's TensorBoard folder (absolute).
        created: folders this run creates (missing when it started).
        events_before: names already in each TensorBoard sub-folder when the run started.
    """

    tensorboard_dir: Path
    created: list[Path]
    events_before: dict[str, list[str]]

    @classmethod
    def before_writing(cls, tensorboard_dir: Path, created: list[Path]) -> "RunFootprint":
        """Taken before the run's TensorBoard writers start; ``created``: the folders the run
        made so far (see ``missing_folders``)."""
        board = Path(os.path.abspath(tensorboard_dir))
        new = list(created) + missing_folders(board)
        new += [board / sub for sub in _SUBDIRS if not os.path.lexists(board / sub)]
        return cls(board, new, {sub: _listing(board / sub) for sub in _SUBDIRS})

    def _wrote(self, name: str) -> bool:
        # both writers name their file events.out.tfevents.<time>.<host>.<pid>.<n>[.v2]
        return name.startswith(EVENTS_PREFIX) and f".{os.getpid()}." in name

    def remove(self) -> None:
        """Remove this process's new event files, then the folders this run created that are
        empty (deepest first); anything else stays."""
        for sub in _SUBDIRS:
            folder = self.tensorboard_dir / sub
            before = set(self.events_before.get(sub, ()))
            for name in _listing(folder):
                if name not in before and self._wrote(name):
                    try:
                        (folder / name).unlink()
                    except OSError:
                        pass
        for folder in sorted(set(self.created), key=lambda p: len(p.parts), reverse=True):
            try:
                folder.rmdir()
            except OSError:  # not empty, or gone: either way not ours to remove
                pass
