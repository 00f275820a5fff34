"""Extracted archives: where the class folders really are, and what to run about it.

An archive extracted as the guide says (``Expand-Archive animals10.zip -DestinationPath
data/training/``) puts the class folders one or more levels down
(``data/training/raw-img/<cane|cavallo|...>/``). ``find_image_roots`` finds such folders:
a single wrapper (``raw-img/``, ``animals10/raw-img/``) or a nested layout with several
(``train/<class>/``, ``test/<class>/``). prepare_dataset.py uses them; training, which must
not guess, names the prepare command to run instead.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from pokedex_trainer.data.files import IMAGE_EXTENSIONS, SYSTEM_NAMES, is_loop_link

logger = logging.getLogger(__name__)

MAX_DEPTH = 4  # levels below the given folder searched for class folders

# Animals-10 (Kaggle) ships Italian folder names; the guide names classes in Spanish.
ANIMALS10 = {
    "cane": "Perro", "cavallo": "Caballo", "elefante": "Elefante", "farfalla": "Mariposa",
    "gallina": "Gallina", "gatto": "Gato", "mucca": "Vaca", "pecora": "Oveja",
    "ragno": "Arana", "scoiattolo": "Ardilla",
}


def _visible_dirs(folder: Path) -> list[Path]:
    """Visible sub-folders, without links back to ``folder`` or above it (loops)."""
    try:
        with os.scandir(folder) as listing:
            entries = sorted(listing, key=lambda e: e.name)
        return [Path(e.path) for e in entries if not e.name.startswith(".")
                and e.name.lower() not in SYSTEM_NAMES and e.is_dir()
                and not (e.is_symlink() and is_loop_link(e.path))]
    except OSError:
        return []


OWN_FILES = {"dataset_report.png"}  # prepare_dataset.py's chart is never a photo


def has_images(folder: Path) -> bool:
    """True when ``folder`` directly holds a visible .jpg/.jpeg/.png file (stops at the first)."""
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                if (not entry.name.startswith(".") and entry.name not in OWN_FILES and
                        os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS and
                        entry.is_file()):
                    return True
    except OSError:
        return False
    return False


def is_class_root(folder: Path) -> bool:
    """True when some sub-folder of ``folder`` holds images directly (a class folder)."""
    return any(has_images(child) for child in _visible_dirs(folder))


@dataclass(frozen=True)
class ImageRoots:
    """Where the class folders of an extracted archive are.

    Args:
        given: the folder the user named.
        roots: folders below it whose sub-folders are the classes (one for a wrapper such as
            ``raw-img/``, several for a nested layout such as ``train/`` and ``test/``).
    """

    given: Path
    roots: tuple[Path, ...]

    @property
    def class_names(self) -> list[str]:
        return sorted({child.name for root in self.roots for child in _visible_dirs(root)
                       if has_images(child)})

    @property
    def is_animals10(self) -> bool:
        return looks_like_animals10(self.class_names)

    def describe(self) -> str:
        """``'data/training/raw-img'`` or ``'data/x/train', 'data/x/test'``."""
        return ", ".join(f"'{root}'" for root in self.roots)


def looks_like_animals10(class_names: list[str]) -> bool:
    """Every class folder is an Animals-10 Italian name, at least two of them (a part of the
    archive is recognised too: the rename is logged, and --class_map none keeps the names)."""
    lowered = {name.lower() for name in class_names}
    return len(lowered) >= 2 and lowered <= set(ANIMALS10)


def find_image_roots(folder: Path | str) -> ImageRoots | None:
    """The class-folder roots below ``folder`` when its own sub-folders hold no images.

    None when ``folder`` is already a dataset (one of its sub-folders holds images) or when no
    images are found within ``MAX_DEPTH`` levels.
    """
    folder = Path(folder)
    if not folder.is_dir() or is_class_root(folder):
        return None
    # Each real folder is searched once, and never outside ``folder``: links may make the tree
    # a graph with cycles, or lead to '/' (searched 4 levels deep, that is the whole disk).
    base = os.path.realpath(folder)
    visited, outside = {base}, []
    roots, level = [], _visible_dirs(folder)
    for _ in range(MAX_DEPTH):
        deeper = []
        for candidate in level:
            real = os.path.realpath(candidate)
            if real in visited:
                continue
            visited.add(real)
            if not (real + os.sep).startswith(base.rstrip(os.sep) + os.sep):
                outside.append(candidate)
            elif is_class_root(candidate):
                roots.append(candidate)  # not searched further: its children are classes
            else:
                deeper.extend(_visible_dirs(candidate))
        if not deeper:
            break
        level = deeper
    if outside:
        logger.warning("not searched for class folders: %s, link%s to outside '%s' (give the "
                       "folder it points to as the input folder to read it)",
                       ", ".join(f"'{p}' -> '{os.path.realpath(p)}'" for p in outside[:3]),
                       "s" if len(outside) > 1 else "", folder)
    return ImageRoots(folder, tuple(sorted(roots))) if roots else None


def mixed_layout_warnings(folder: Path | str) -> list[str]:
    """Class folders of ``folder`` that also hide an extracted archive (folders of images
    below them), and archive folders beside class folders: what would be read is not what
    the user expects, so it is said."""
    folder, notes = Path(folder), []
    children = _visible_dirs(folder)
    is_dataset = any(has_images(child) for child in children)
    for child in children:
        nested = is_class_root(child)
        if nested and has_images(child):
            notes.append(f"class folder '{child.name}' also holds folders of images (an "
                         f"extracted archive?): only its own loose images are read; move "
                         f"them out, or give --input_dir '{child}'")
        elif nested and is_dataset:
            notes.append(f"'{child.name}' holds no images but folders of images (an extracted "
                         f"archive beside your class folders): it is not read; move its class "
                         f"folders up, or prepare it on its own with --input_dir '{child}'")
    return notes


def prepared_folder_for(roots: ImageRoots) -> Path:
    """A folder for prepare_dataset.py's output beside the archive (never inside it)."""
    given = roots.given.resolve()
    name = "animals10" if roots.is_animals10 else f"{given.name}_prepared"
    return _relative_if_possible(given.parent / name)


def _relative_if_possible(path: Path) -> Path:
    try:
        return path.relative_to(Path.cwd())
    except ValueError:
        return path


def _quoted(path: Path) -> str:
    from pokedex_trainer.user_io.shell import quote_token

    return quote_token(path.as_posix() if not path.is_absolute() else str(path))


def prepare_command(roots: ImageRoots, output_dir: Path | None = None) -> str:
    """The prepare_dataset.py command that turns ``roots`` into a training folder."""
    source = roots.roots[0] if len(roots.roots) == 1 else roots.given
    output = output_dir if output_dir is not None else prepared_folder_for(roots)
    command = (f"python prepare_dataset.py --input_dir {_quoted(_relative_if_possible(source))} "
               f"--output_dir {_quoted(output)}")
    if roots.is_animals10:
        command += " --class_map animals10"
    return command


def training_advice(roots: ImageRoots) -> str:
    """One line for a training run pointed at an extracted archive: what is there, what to run."""
    output = prepared_folder_for(roots)
    what = " (the Animals-10 archive, Italian folder names)" if roots.is_animals10 else ""
    return (f"'{roots.given}' holds no class folders of its own: its images are in "
            f"{roots.describe()}{what}, an extracted archive. Prepare it first: "
            f"{prepare_command(roots, output)} ; then train with --data_path "
            f"{_quoted(output)}")
