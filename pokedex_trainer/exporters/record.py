"""exports.json, the figures of every exported file (newest per file name), and their table."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

from pokedex_trainer.evaluation.safe_loading import is_code_bearing, remember_written
from pokedex_trainer.user_io.regular_files import file_sha256
from pokedex_trainer.exporters.parity import ExportResult
from pokedex_trainer.exporters.writers import ExportJob
from pokedex_trainer.user_io.atomic import atomic_write_json


def record_results(results: list[ExportResult], json_path: Path, job: ExportJob) -> None:
    """Merge ``results`` into ``exports.json`` (one entry per file name, newest wins)."""
    previous = {}
    if json_path.is_file():
        try:
            previous = {e["file"]: e for e in json.loads(json_path.read_text("utf-8"))["files"]}
        except (ValueError, KeyError, TypeError):
            previous = {}
    for result in results:
        entry = asdict(result)
        entry["path"] = str(job.output_dir / result.file)
        written = job.output_dir / result.file
        if result.passed and written.exists():
            # code-bearing formats open later only with this record (see evaluation/safe_loading.py)
            entry["sha256"] = _remembered(written) if is_code_bearing(written) else \
                file_sha256(written)
        entry["checked_on"] = job.check.description
        entry["date"] = time.strftime("%Y-%m-%d %H:%M:%S")
        previous[result.file] = entry
    atomic_write_json(json_path, {"source_model": str(job.source),
                                  "files": list(previous.values())})


def _remembered(written: Path) -> str:
    """The trust record of a code-bearing file just written; a file that cannot be recorded
    would never open again, so it is removed (this tool wrote it) and the export ends."""
    from pokedex_trainer.errors import UserError

    try:
        return remember_written(written)
    except UserError as exc:
        import shutil

        shutil.rmtree(written) if written.is_dir() else written.unlink(missing_ok=True)
        Path(str(written) + ".json").unlink(missing_ok=True)
        raise UserError(f"{exc}; '{written.name}' was removed again") from None


def results_table(results: list[ExportResult]) -> str:
    header = (f"{'file':<40} {'runtime':<13} {'MB':>7} {'max|Δp|':>9} {'top-1':>6} "
              f"{'acc':>6} {'src acc':>7} {'ms/img':>7}  result")
    lines = [header, "-" * len(header)]
    for r in results:
        lines.append(f"{r.file:<40} {r.runtime or '-':<13} {r.size_mb:>7.2f} "
                     f"{r.max_abs_diff:>9.2g} {r.top1_agreement:>6.3f} {r.accuracy:>6.3f} "
                     f"{r.source_accuracy:>7.3f} {r.latency_ms:>7.2f}  "
                     f"{'ok' if r.passed else 'FAILED: ' + r.reason}")
    return "\n".join(lines)
