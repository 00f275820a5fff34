"""Squaring and writing the images: crop/pad/stretch, JPEG, output names, state chunks."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np

from pokedex_trainer.errors import UserError
from pokedex_trainer.prepare.report import Report
from pokedex_trainer.prepare.sources import SourceFile
from pokedex_trainer.prepare.state import (
    PrepareState,
    check_output_class_dirs,
    may_replace,
    read_state,
    remove_killed_writes,
    remove_stale,
    user_files,
    write_state,
)
from pokedex_trainer.user_io.atomic import atomic_write_bytes


JPEG_QUALITY = 95
MODES = ("crop", "pad", "stretch")
CHUNK_SIZE = 128  # files converted between two saves of the state file


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


def convert_file(task: tuple) -> tuple[str, str, str]:
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


def in_workers(function, tasks: list, workers: int, description: str) -> list:
    from pokedex_trainer.machine.worker_pool import ordered_map

    return ordered_map(function, tasks, workers, description, what="prepare",
                       fix="run it again with fewer --workers, or with --workers 0")


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
        results = {relative: (error, digest) for relative, error, digest in in_workers(
            convert_file, tasks, args.workers,
            f"convert {start + 1}-{start + len(part)}/{len(todo)}")}
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
