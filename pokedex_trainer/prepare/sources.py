"""The images of a raw collection: class folders, --class_map, fingerprints, duplicates."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from pokedex_trainer.data.archives import (ANIMALS10, find_image_roots, looks_like_animals10,
                                           prepare_command)
from pokedex_trainer.data.scan import list_class_dirs, list_images
from pokedex_trainer.errors import UserError
from pokedex_trainer.prepare.state import earlier_settings

logger = logging.getLogger(__name__)


# Animals-10 (Kaggle) ships Italian folder names; the guide names classes in Spanish.
CLASS_MAPS = {"animals10": ANIMALS10}
NO_CLASS_MAP = "none"  # --class_map none: keep the folder names, even Animals-10's


@dataclass
class SourceFile:
    relative: str         # path under input_dir, posix style
    source_class: str     # folder name
    target_class: str     # after --class_map
    size: int = 0
    mtime_ns: int = 0
    sha256: str = ""
    width: int = 0
    height: int = 0
    error: str = ""


def load_class_map(value: str | None) -> dict[str, str]:
    """The renaming of ``--class_map``: a built-in map's name, a JSON file, or none."""
    if value is None or value.lower() == NO_CLASS_MAP:
        return {}
    if value in CLASS_MAPS:
        return dict(CLASS_MAPS[value])
    path = Path(value)
    try:
        mapping = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"--class_map: '{value}' is neither a built-in map "
                        f"({', '.join(CLASS_MAPS)}) nor an existing JSON file") from None
    except (OSError, ValueError) as exc:
        raise UserError(f"--class_map: cannot read '{value}' as JSON: {exc}") from None
    if not isinstance(mapping, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                for k, v in mapping.items()):
        raise UserError(f"--class_map: '{value}' must hold a JSON object of "
                        "\"old name\": \"New name\" strings")
    from pokedex_trainer.user_io.path_checks import check_single_component

    for target in mapping.values():
        check_single_component(target, "--class_map target class")
    return mapping


def collect_sources(input_dir: Path, class_map: dict[str, str],
                    roots: tuple[Path, ...] = ()) -> list[SourceFile]:
    """Every image of ``input_dir/<class>/``, or of ``<root>/<class>/`` for each of ``roots``
    (folders inside ``input_dir``: a nested archive; same-named classes are merged)."""
    lowered = {k.lower(): v for k, v in class_map.items()}
    sources = []
    for root in roots or (input_dir,):
        for class_dir in list_class_dirs(root):
            target = class_map.get(class_dir.name, lowered.get(class_dir.name.lower(),
                                                               class_dir.name))
            for image in list_images(class_dir):
                sources.append(SourceFile(image.relative_to(input_dir).as_posix(),
                                          class_dir.name, target))
    return sources


def locate_images(input_dir: Path, output_dir: Path | None) -> tuple[Path, tuple[Path, ...]]:
    """(input folder, class-folder roots inside it): an extracted archive's wrapper folder
    (``raw-img/``) is used in its place; several nested roots are all read.

    Raises UserError when the archive lies inside the output folder: the training folder
    would then hold the raw archive too. The message names a command that works.
    """
    from pokedex_trainer.data.archives import mixed_layout_warnings

    roots = find_image_roots(input_dir)
    if roots is None:
        for note in mixed_layout_warnings(input_dir):
            logger.warning("%s", note)
        return input_dir, ()
    if output_dir is not None:
        out = output_dir.resolve()
        if any(root.resolve().is_relative_to(out) for root in roots.roots):
            raise UserError(f"the images of '{input_dir}' are in {roots.describe()} (an "
                            f"extracted archive), inside the output folder '{output_dir}': "
                            f"write the prepared images elsewhere: {prepare_command(roots)}")
    if len(roots.roots) == 1:
        logger.info("'%s' holds an extracted archive: reading its class folders from '%s'",
                    input_dir, roots.roots[0])
        return roots.roots[0], ()
    logger.info("'%s' holds class folders in %d places (%s): reading all of them, same-named "
                "classes merged", input_dir, len(roots.roots), roots.describe())
    return input_dir, roots.roots


def effective_class_map(value: str | None, class_names: list[str],
                        output_dir: Path | None) -> dict[str, str]:
    """``--class_map``, or the Animals-10 map for Animals-10's Italian folders when none is
    given (unless an earlier run into ``output_dir`` kept the Italian names: it still does)."""
    if value is not None or not looks_like_animals10(class_names):
        return load_class_map(value)
    earlier = earlier_settings(output_dir) if output_dir is not None else None
    if earlier and earlier.get("class_map") == {}:
        logger.info("Animals-10 folder names: kept in Italian, as in the earlier run into '%s' "
                    "(--class_map animals10 renames them)", output_dir)
        return {}
    logger.info("Animals-10 folder names recognised: classes renamed as --class_map animals10 "
                "does (cane -> Perro, gatto -> Gato, ...); --class_map none keeps them")
    return dict(ANIMALS10)


def fingerprint_file(task: tuple[str, str]) -> tuple[str, int, int, str, int, int, str]:
    root, relative = task
    from pokedex_trainer.data.images import UnreadableImageError, probe_image

    path = Path(root) / relative
    stat = path.stat()
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    try:
        width, height = probe_image(path)
        error = ""
    except UnreadableImageError as exc:
        width = height = 0
        error = exc.reason
    return relative, stat.st_size, stat.st_mtime_ns, digest, width, height, error


def find_duplicates(sources: list[SourceFile]) -> tuple[list, list, set[str]]:
    """(within-class groups, across-class groups, relative paths to leave out)."""
    by_hash: dict[str, list[SourceFile]] = {}
    for source in sources:
        if not source.error:
            by_hash.setdefault(source.sha256, []).append(source)
    within, across, excluded = [], [], set()
    for digest, group in by_hash.items():
        if len(group) < 2:
            continue
        classes = sorted({s.target_class for s in group})
        if len(classes) > 1:
            # The same photo under two species is a labelling error: train on neither copy.
            across.append({"sha256": digest, "classes": classes,
                           "files": [s.relative for s in group]})
            excluded.update(s.relative for s in group)
            continue
        within.append({"class": classes[0], "kept": group[0].relative,
                       "duplicates": [s.relative for s in group[1:]]})
        excluded.update(s.relative for s in group[1:])
    return within, across, excluded


def class_folder_names(input_dir: Path, roots: tuple[Path, ...]) -> list[str]:
    return sorted({d.name for root in roots or (input_dir,) for d in list_class_dirs(root)})
