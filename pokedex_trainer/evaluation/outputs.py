"""Where evaluate.py writes, decided (and checked) before any work.

Inside a run directory the report folders are the tool's own. Anywhere else (``--output_dir``,
or a folder beside a loose model file) a file is overwritten only when the tool wrote it there
(see user_io/output_guard.py); the user's own ``report.md`` or ``predictions.csv`` ends the command in
one line before a model is loaded.
"""

from __future__ import annotations

from pathlib import Path

from pokedex_trainer.runs.layout import EVALUATION_DIR
from pokedex_trainer.runs.store import RunStore
from pokedex_trainer.user_io.output_guard import claim_outputs

REPORT_FILES = ("confusion_matrix.png", "confusion_matrix_normalized.png", "reliability.png",
                "per_class_f1.png", "mistakes.png", "metrics.json", "classification_report.csv",
                "report.md", "unknown_scores.png", "accuracy_coverage.png")
ENSEMBLE_FILES = ("metrics.json", "ensemble.csv", "confusion_matrix.png", "report.md")
PREDICTION_FILES = ("predictions.json", "predictions.csv")


def prepared_folder(given: str | None, default: Path, names, own_default: bool) -> Path:
    """``given`` or ``default``, created, with ``names`` cleared for writing: refused (UserError)
    when one of them is a file the tool did not write there. ``own_default``: the default lies
    inside a run directory, which is the tool's."""
    if given or not own_default:
        out = Path(given) if given else default
        claim_outputs(out, names)
        return out
    default.mkdir(parents=True, exist_ok=True)
    return default


def report_folder(given: str | None, run: Path | None, model_path: Path) -> Path:
    """The report folder of one model: ``--output_dir``, else ``<run>/evaluation`` (its best
    model) or ``<run>/evaluation/<file>``, else ``evaluation_<file>`` beside a loose file."""
    if run is not None:
        best = RunStore(run).is_best_model(model_path)
        default = run / EVALUATION_DIR if best else run / EVALUATION_DIR / model_path.name
    else:
        default = model_path.parent / f"{EVALUATION_DIR}_{model_path.name}"
    return prepared_folder(given, default, REPORT_FILES, own_default=run is not None)
