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
import json
from pathlib import Path

from pokedex_trainer.errors import UserError
from pokedex_trainer.prepare.convert import (JPEG_QUALITY, convert_file, in_workers,
                                             write_outputs)
from pokedex_trainer.prepare.report import (CHART_NAME, REPORT_NAME, Report, plot_counts,
                                            print_summary, summarize, write_own_file)
from pokedex_trainer.prepare.sources import (class_folder_names, collect_sources,
                                             effective_class_map, find_duplicates,
                                             fingerprint_file, locate_images)


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
    class_map = effective_class_map(args.class_map, class_folder_names(input_dir, roots),
                                    output_dir)
    sources = collect_sources(input_dir, class_map, roots)
    if not sources:
        raise UserError(f"no images found in '{input_dir}': expected {input_dir}/<Class>/*.jpg "
                        "(jpg, jpeg or png, one sub-folder per class)")
    settings = {"size": args.size, "mode": args.mode, "quality": JPEG_QUALITY,
                "class_map": class_map}
    report = Report(str(input_dir), str(output_dir) if output_dir else None, settings)

    by_relative = {s.relative: s for s in sources}
    for relative, size, mtime, digest, width, height, error in in_workers(
            fingerprint_file, [(str(input_dir), s.relative) for s in sources], args.workers,
            "fingerprint"):
        source = by_relative[relative]
        source.size, source.mtime_ns, source.sha256 = size, mtime, digest
        source.width, source.height, source.error = width, height, error
    within, across, excluded = find_duplicates(sources)
    report.duplicates_within_class, report.duplicates_across_classes = within, across
    candidates = [s for s in sources if s.relative not in excluded and not s.error]

    if output_dir is None:
        tasks = [(str(input_dir), s.relative, None, args.size, args.mode) for s in candidates]
        failures = {r[0]: r[1] for r in in_workers(convert_file, tasks, args.workers, "decode")
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
