"""prepare_dataset.py: standardize a raw photo collection and report what is wrong with it.

Two passes over the files, both in worker processes with a progress bar:
1. fingerprint: SHA-256 of the bytes and the header size of every file (cheap), which finds the
   exact duplicates before anything is written;
2. convert (or, with ``--check``, only decode): the safe reader, crop/pad/stretch to ``--size``,
   JPEG quality 95, written atomically.
A state file in the output folder remembers what each output came from, so a second run skips
what is up to date, an interrupted run resumes, and a changed source is redone.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pokedex_trainer.data.scan import (RECOMMENDED_MIN_CLASSES, RECOMMENDED_MIN_IMAGE_SIZE,
                      RECOMMENDED_MIN_IMAGES_PER_CLASS, list_class_dirs, list_images)
from pokedex_trainer.data.archives import ANIMALS10, find_image_roots, looks_like_animals10, prepare_command
from pokedex_trainer.errors import UserError
from pokedex_trainer.prepare.state import (
    PrepareState,
    check_output_class_dirs,
    earlier_settings,
    may_replace,
    read_state,
    remove_killed_writes,
    remove_stale,
    user_files,
    write_state,
)
from pokedex_trainer.runs.records import atomic_write_bytes, atomic_write_json

logger = logging.getLogger(__name__)

RECOMMENDED_IMAGES_PER_CLASS = 500
REPORT_NAME = "dataset_report.json"
CHART_NAME = "dataset_report.png"
JPEG_QUALITY = 95
MODES = ("crop", "pad", "stretch")
CHUNK_SIZE = 128  # files converted between two saves of the state file

# Animals-10 (Kaggle) ships Italian folder names; the seed names classes in Spanish.
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


@dataclass
class Report:
    input_dir: str
    output_dir: str | None
    settings: dict
    classes: dict = field(default_factory=dict)
    unreadable: list = field(default_factory=list)
    duplicates_within_class: list = field(default_factory=list)
    duplicates_across_classes: list = field(default_factory=list)
    small_images: list = field(default_factory=list)
    classes_below_minimum: list = field(default_factory=list)
    classes_below_recommended: list = field(default_factory=list)
    too_few_classes: bool = False
    imbalance_ratio: float | None = None
    written: int = 0
    up_to_date: int = 0
    removed_stale: list = field(default_factory=list)
    problems: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


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
    from pokedex_trainer.runs.layout import check_single_component

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


def _fingerprint(task: tuple[str, str]) -> tuple[str, int, int, str, int, int, str]:
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


def square_image(image: np.ndarray, size: int, mode: str) -> np.ndarray:
    """Make ``image`` square at ``size`` px or less: never enlarged past its own pixels.

    crop: centre square of the shorter side; pad: the whole image centred on a square canvas
    (filled with the image's edge colour average); stretch: squash both sides to the square.
    """
    from PIL import Image

    height, width = image.shape[:2]
    pil = Image.fromarray(image)
    if mode == "crop":
        side = min(height, width)
        left, top = (width - side) // 2, (height - side) // 2
        pil = pil.crop((left, top, left + side, top + side))
        target = min(size, side)
        return np.asarray(pil.resize((target, target), Image.Resampling.LANCZOS))
    if mode == "stretch":
        target = min(size, min(height, width))
        return np.asarray(pil.resize((target, target), Image.Resampling.LANCZOS))
    side = max(height, width)
    target = min(size, side)
    scale = target / side
    new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
    resized = pil.resize((new_w, new_h), Image.Resampling.LANCZOS)
    edges = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]])
    fill = tuple(int(v) for v in edges.mean(axis=0))
    canvas = Image.new("RGB", (target, target), fill)
    canvas.paste(resized, ((target - new_w) // 2, (target - new_h) // 2))
    return np.asarray(canvas)


def _convert(task: tuple) -> tuple[str, str, str]:
    """Decode one file (and write its output unless ``output`` is None); returns (path, error,
    SHA-256 of what was written). A 6th item is the recorded SHA-256 of the file at ``output``:
    a file there with other bytes is the user's, and is not replaced."""
    root, relative, output, size, mode, *recorded = task
    from PIL import Image

    from pokedex_trainer.data.images import UnreadableImageError, read_image

    try:
        image = read_image(Path(root) / relative, min_size=(size, size))
    except UnreadableImageError as exc:
        return relative, exc.reason, ""
    if output is None:
        return relative, "", ""
    squared = square_image(image, size, mode)
    buffer = io.BytesIO()
    Image.fromarray(squared).save(buffer, "JPEG", quality=JPEG_QUALITY)
    digest = hashlib.sha256(buffer.getvalue()).hexdigest()
    if not may_replace(Path(output), recorded[0] if recorded else None, digest):
        return relative, (f"its output '{Path(output).name}' was changed after prepare_dataset.py "
                          "wrote it (or is not its file): left as it is; delete it to redo"), ""
    atomic_write_bytes(Path(output), buffer.getvalue())
    return relative, "", digest


def _parallel(function, tasks: list, workers: int, description: str) -> list:
    from pokedex_trainer.machine.worker_pool import ordered_map

    return ordered_map(function, tasks, workers, description, what="prepare",
                       fix="run it again with fewer --workers, or with --workers 0")


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


def assign_outputs(sources: list[SourceFile], state: dict,
                   occupied: set[str] = frozenset()) -> dict[str, str]:
    """Output name per source, stable across runs: a known source keeps its number, and no
    name is given that a file this tool did not write already has (``occupied``)."""
    known = state.get("files", {})
    names: dict[str, str] = {}
    given: set[str] = set()
    taken: dict[str, set[int]] = {}
    for name in occupied:
        cls, _, number = Path(name).stem.rpartition("_")
        if number.isdigit() and name.startswith(f"{cls}/"):
            taken.setdefault(cls, set()).add(int(number))
    for relative, entry in known.items():
        name = entry.get("output", "")
        cls, _, number = Path(name).stem.rpartition("_")
        if number.isdigit():
            taken.setdefault(cls, set()).add(int(number))
    for source in sources:
        entry = known.get(source.relative)
        # one output per source: a state that names one output twice keeps it for the first
        if (entry and entry.get("output", "").startswith(f"{source.target_class}/")
                and entry["output"] not in given):
            names[source.relative] = entry["output"]
            given.add(entry["output"])
    for source in sources:
        if source.relative in names:
            continue
        used = taken.setdefault(source.target_class, set())
        number = max(used, default=-1) + 1
        used.add(number)
        names[source.relative] = f"{source.target_class}/{source.target_class}_{number:04d}.jpg"
    return names


def summarize(report: Report, counts: dict[str, int], kept: list[SourceFile]) -> None:
    """Fill the class statistics and the list of problems a person should act on.

    ``kept`` are the readable, non-duplicate sources that make it into the dataset.
    """
    report.classes = {name: {"images": n} for name, n in sorted(counts.items())}
    report.small_images = [
        {"path": s.relative, "width": s.width, "height": s.height} for s in kept
        if min(s.width, s.height) < RECOMMENDED_MIN_IMAGE_SIZE]
    report.classes_below_minimum = sorted(
        n for n, c in counts.items() if c < RECOMMENDED_MIN_IMAGES_PER_CLASS)
    report.classes_below_recommended = sorted(
        n for n, c in counts.items() if c < RECOMMENDED_IMAGES_PER_CLASS)
    report.too_few_classes = len(counts) < RECOMMENDED_MIN_CLASSES
    nonzero = [c for c in counts.values() if c > 0]
    report.imbalance_ratio = round(max(nonzero) / min(nonzero), 2) if nonzero else None
    problems = []
    if report.unreadable:
        problems.append(f"{len(report.unreadable)} unreadable files skipped")
    if report.duplicates_within_class:
        n = sum(len(g["duplicates"]) for g in report.duplicates_within_class)
        problems.append(f"{n} exact duplicates inside a class (one copy kept)")
    if report.duplicates_across_classes:
        problems.append(f"{len(report.duplicates_across_classes)} photos appear under several "
                        "classes (labelling error; left out until fixed)")
    if report.small_images:
        problems.append(f"{len(report.small_images)} images below "
                        f"{RECOMMENDED_MIN_IMAGE_SIZE} px (kept, not enlarged)")
    if report.too_few_classes:
        problems.append(f"{len(counts)} classes; the guide asks for at least "
                        f"{RECOMMENDED_MIN_CLASSES}")
    if report.classes_below_minimum:
        problems.append(f"{len(report.classes_below_minimum)} classes below "
                        f"{RECOMMENDED_MIN_IMAGES_PER_CLASS} images: "
                        + ", ".join(report.classes_below_minimum))
    elif report.classes_below_recommended:
        problems.append(f"{len(report.classes_below_recommended)} classes below the recommended "
                        f"{RECOMMENDED_IMAGES_PER_CLASS} images")
    if report.imbalance_ratio and report.imbalance_ratio > 3:
        problems.append(f"class imbalance: the largest class has {report.imbalance_ratio}x the "
                        "images of the smallest")
    report.problems = problems


def plot_counts(counts: dict[str, int]) -> bytes:
    """Bar chart of images per class with the guide's 100 and 500 lines, as PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted(counts)
    width = max(6.0, 0.35 * len(names) + 2)
    figure, axis = plt.subplots(figsize=(width, 4.5))
    axis.bar(range(len(names)), [counts[n] for n in names], color="#3b7dd8")
    axis.axhline(RECOMMENDED_MIN_IMAGES_PER_CLASS, color="#d83b3b", linestyle="--",
                 label=f"minimum ({RECOMMENDED_MIN_IMAGES_PER_CLASS})")
    axis.axhline(RECOMMENDED_IMAGES_PER_CLASS, color="#2e9e44", linestyle="--",
                 label=f"recommended ({RECOMMENDED_IMAGES_PER_CLASS})")
    axis.set_xticks(range(len(names)), names, rotation=45 if len(names) > 8 else 0,
                    ha="right" if len(names) > 8 else "center")
    axis.set_ylabel("images")
    axis.set_title("Images per class")
    axis.legend()
    figure.tight_layout()
    with io.BytesIO() as buffer:
        figure.savefig(buffer, format="png", dpi=100)
        data = buffer.getvalue()
    plt.close(figure)
    return data


def print_summary(report: Report, counts: dict[str, int]) -> None:
    width = max([len("class")] + [len(n) for n in counts])
    print(f"\n{'class':<{width}}  images")
    for name in sorted(counts):
        flag = ""
        if counts[name] < RECOMMENDED_MIN_IMAGES_PER_CLASS:
            flag = f"  < {RECOMMENDED_MIN_IMAGES_PER_CLASS}"
        elif counts[name] < RECOMMENDED_IMAGES_PER_CLASS:
            flag = f"  < {RECOMMENDED_IMAGES_PER_CLASS}"
        print(f"{name:<{width}}  {counts[name]:>6}{flag}")
    print(f"{'total':<{width}}  {sum(counts.values()):>6}  ({len(counts)} classes, imbalance "
          f"{report.imbalance_ratio})")
    if report.output_dir:
        print(f"written {report.written}, up to date {report.up_to_date}, removed stale "
              f"{len(report.removed_stale)}")
    if report.problems:
        print("problems:")
        for problem in report.problems:
            print(f"  - {problem}")
    else:
        print("no problems found")


def validate_dirs(input_dir: Path, output_dir: Path | None) -> None:
    if not input_dir.is_dir():
        raise UserError(f"input directory '{input_dir}' does not exist")
    if output_dir is not None:
        inside = output_dir.resolve().is_relative_to(input_dir.resolve())
        if inside:
            raise UserError(f"output directory '{output_dir}' is inside the input directory "
                            f"'{input_dir}': choose a folder outside it")
        if input_dir.resolve().is_relative_to(output_dir.resolve()):
            raise UserError(f"input directory '{input_dir}' is inside the output directory "
                            f"'{output_dir}': the training folder would hold the raw images "
                            "too; choose an --output_dir outside it")


def prepare(args: argparse.Namespace) -> Report:
    """Run the whole command; returns the report (also written to disk)."""
    input_dir = Path(args.input_dir)
    output_dir = None if args.check else Path(args.output_dir)
    if input_dir.is_dir():
        input_dir, roots = locate_images(input_dir, output_dir)
    else:
        roots = ()
    validate_dirs(input_dir, output_dir)
    if args.size < 32:
        raise UserError("--size must be at least 32")
    if args.workers < 0:
        raise UserError("--workers must be 0 or more")
    class_map = effective_class_map(args.class_map, _class_folder_names(input_dir, roots),
                                    output_dir)
    sources = collect_sources(input_dir, class_map, roots)
    if not sources:
        raise UserError(f"no images found in '{input_dir}': expected {input_dir}/<Class>/*.jpg "
                        "(jpg, jpeg or png, one sub-folder per class)")
    settings = {"size": args.size, "mode": args.mode, "quality": JPEG_QUALITY,
                "class_map": class_map}
    report = Report(str(input_dir), str(output_dir) if output_dir else None, settings)

    by_relative = {s.relative: s for s in sources}
    for relative, size, mtime, digest, width, height, error in _parallel(
            _fingerprint, [(str(input_dir), s.relative) for s in sources], args.workers,
            "fingerprint"):
        source = by_relative[relative]
        source.size, source.mtime_ns, source.sha256 = size, mtime, digest
        source.width, source.height, source.error = width, height, error
    within, across, excluded = find_duplicates(sources)
    report.duplicates_within_class, report.duplicates_across_classes = within, across
    candidates = [s for s in sources if s.relative not in excluded and not s.error]

    if output_dir is None:
        tasks = [(str(input_dir), s.relative, None, args.size, args.mode) for s in candidates]
        failures = {r[0]: r[1] for r in _parallel(_convert, tasks, args.workers, "decode")
                    if r[1]}
    else:
        failures = write_outputs(input_dir, output_dir, candidates, settings, args, report)
    for source in sources:
        if source.error:
            failures[source.relative] = source.error
    report.unreadable = [{"path": p, "reason": r} for p, r in sorted(failures.items())]
    counts: dict[str, int] = {}
    for source in sources:
        counts.setdefault(source.target_class, 0)
    for source in candidates:
        if source.relative not in failures:
            counts[source.target_class] += 1
    kept = [s for s in candidates if s.relative not in failures]
    summarize(report, counts, kept)
    report_dir = output_dir if output_dir is not None else input_dir
    written = [name for name, data in (
        (REPORT_NAME, json.dumps(report.to_dict(), indent=2, ensure_ascii=False).encode()),
        (CHART_NAME, plot_counts(counts))) if write_own_file(report_dir, name, data)]
    print_summary(report, counts)
    if written:
        print(f"report: {' and '.join(str(report_dir / name) for name in written)}")
    return report


def _class_folder_names(input_dir: Path, roots: tuple[Path, ...]) -> list[str]:
    return sorted({d.name for root in roots or (input_dir,) for d in list_class_dirs(root)})


REPORTS_RECORD = ".prepare_reports.json"


def _report_of_an_earlier_version(folder: Path) -> bool:
    """Reports written before REPORTS_RECORD existed: recognised by their content."""
    try:
        data = json.loads((folder / REPORT_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and {"input_dir", "settings", "classes"} <= set(data)


def write_own_file(folder: Path, name: str, data: bytes) -> bool:
    """Write ``folder/name`` unless a file of that name exists that this tool did not write
    (or that was changed since): the user's files are never replaced. Returns True if written.
    """
    record_path = folder / REPORTS_RECORD
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        record = {}
    if not isinstance(record, dict):  # not what this tool writes: nothing in it is trusted
        record = {}
    path = folder / name
    ours = path.is_file() and (
        hashlib.sha256(path.read_bytes()).hexdigest() == record.get(name) or
        (not record_path.exists() and _report_of_an_earlier_version(folder)))
    if path.exists() and not ours:
        logger.warning("%s is not a file prepare_dataset.py wrote (or it was changed): left as "
                       "it is, this report part is not saved", path)
        return False
    atomic_write_bytes(path, data)
    record[name] = hashlib.sha256(data).hexdigest()
    atomic_write_json(record_path, record)
    return True


def write_outputs(input_dir: Path, output_dir: Path, candidates: list[SourceFile],
                  settings: dict, args, report: Report) -> dict[str, str]:
    """Convert what is not up to date; keep the state file current after each chunk."""
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create output directory '{output_dir}': "
                        f"{exc.strerror or exc}") from None
    state = read_state(output_dir)
    written = dict(state.written)  # every name this tool wrote -> the SHA-256 it wrote
    remove_killed_writes(output_dir, written)
    same_settings = state.settings == settings
    old_files = state.files if same_settings else {}
    names = assign_outputs(candidates, {"files": old_files},
                           occupied=user_files(output_dir, written))
    todo = []
    for source in candidates:
        entry = old_files.get(source.relative)
        output = output_dir / names[source.relative]
        if (entry and entry.get("sha256") == source.sha256
                and entry.get("output") == names[source.relative] and output.exists()):
            report.up_to_date += 1
            continue
        todo.append(source)
    check_output_class_dirs(output_dir, [names[s.relative] for s in todo])
    for source in todo:
        (output_dir / names[source.relative]).parent.mkdir(parents=True, exist_ok=True)
    files = {s.relative: old_files[s.relative] for s in candidates
             if s.relative in old_files and s not in todo}
    new_state = PrepareState(settings, files, written)
    failures: dict[str, str] = {}
    # Chunks keep the state file current, so an interrupted run resumes where it stopped.
    chunk = CHUNK_SIZE
    for start in range(0, len(todo), chunk):
        part = todo[start:start + chunk]
        # recorded before they are written: a kill mid-chunk leaves nothing unaccounted for
        # (with no hash yet: such a file is never removed, only replaced by the same bytes)
        for source in part:
            written.setdefault(names[source.relative], None)
        write_state(output_dir, new_state)
        tasks = [(str(input_dir), s.relative, str(output_dir / names[s.relative]), args.size,
                  args.mode, written[names[s.relative]]) for s in part]
        results = {relative: (error, digest) for relative, error, digest in _parallel(
            _convert, tasks, args.workers, f"convert {start + 1}-{start + len(part)}/{len(todo)}")}
        for source in part:
            error, digest = results.get(source.relative, ("not converted", ""))
            if error:
                failures[source.relative] = error
            else:
                files[source.relative] = {"sha256": source.sha256,
                                          "output": names[source.relative],
                                          "output_sha256": digest}
                written[names[source.relative]] = digest
                report.written += 1
        write_state(output_dir, new_state)
    keep = {entry["output"] for entry in files.values()}
    report.removed_stale = remove_stale(
        output_dir, {name: digest for name, digest in written.items() if name not in keep})
    new_state.written = {name: written.get(name) for name in keep}
    write_state(output_dir, new_state)
    return failures


def main(argv: list[str] | None = None) -> int:
    """``prepare_dataset.py``: exit 0, or 1 with ``--strict`` when the minimums are missed."""
    from pokedex_trainer.cli.parsers import build_prepare_parser

    args = build_prepare_parser().parse_args(argv)
    if not args.check:
        from pokedex_trainer.user_io.path_checks import check_folder_option

        check_folder_option(args.output_dir, "--output_dir")  # before any work
    report = prepare(args)
    strict_failures = report.too_few_classes or report.classes_below_minimum or \
        report.small_images
    if args.strict and strict_failures:
        import sys

        print("error: --strict: the guide's minimums are not met (see problems above)",
              file=sys.stderr)
        return 1
    return 0
