"""experiments.csv: one row per run of an output directory, appended under a lock, migrated when its columns grow."""

from __future__ import annotations

import csv
import io
import logging
import os
from pathlib import Path

from pokedex_trainer.errors import UserError
from pokedex_trainer.user_io.atomic import locked
from pokedex_trainer.user_io.inert_text import from_spreadsheet_row, spreadsheet_row

logger = logging.getLogger(__name__)


# The training recipe's options, one column each (read_experiment_rows gives a run from before
# an option existed the option's default).
RECIPE_COLUMNS = ("augment_warmup", "label_smoothing", "lr_schedule", "warmup_epochs", "min_lr",
                  "optimizer", "weight_decay", "ema", "unknown_dir", "unknown_weight")


EXPERIMENT_COLUMNS = [
    "run_name", "model_type", "framework", "status", "started", "duration_s", "epochs_run",
    "best_val_accuracy", "best_val_top5_accuracy", "best_epoch", "test_accuracy",
    "test_top5_accuracy", "learning_rate", "fine_tune_learning_rate", "batch_size",
    "image_size", "epochs", "fine_tune_epochs", "fine_tune_layers", "weights", "dropout",
    "augment", "class_weight", "sampler", "seed", "run_dir", "reason", "keras_backend",
    "search_name", "search_trial", *RECIPE_COLUMNS,
]


def append_experiment(path: Path, row: dict) -> None:
    """Append one row to experiments.csv under a file lock (grid loops may run side by side).

    A table written by an earlier version with fewer columns is migrated first, under the same
    lock: rewritten with today's header (old columns keep their values, new ones are empty), so
    rows never end up under the wrong header. Columns this version does not know are kept.
    """
    with open(path, "a+", encoding="utf-8", newline="") as handle:
        with locked(handle):
            handle.seek(0)
            existing = _read_table(handle, path)
            header = next(csv.reader(io.StringIO(existing)), None) if existing else None
            columns = list(EXPERIMENT_COLUMNS)
            if header is not None:
                columns += [c for c in header if c not in columns]
            if header is not None and header != columns:
                old_rows = [from_spreadsheet_row(r)
                            for r in csv.DictReader(io.StringIO(existing))]
                handle.seek(0)
                handle.truncate()
                _write_rows(handle, columns, old_rows, header=True)
                logger.info("%s: added the columns %s", Path(path).name,
                            ", ".join(c for c in columns if c not in header))
            handle.seek(0, os.SEEK_END)
            _write_rows(handle, columns, [row], header=handle.tell() == 0)
            handle.flush()


def _read_table(handle, path: Path) -> str:
    """The text of an experiments table; UserError when it is someone else's file (another
    encoding, other columns): it is never rewritten then."""
    try:
        text = handle.read()
    except UnicodeDecodeError:
        raise UserError(f"'{path}' is not a UTF-8 CSV (saved by another program?): move it "
                        "away, this tool never rewrites a file it did not write") from None
    header = next(csv.reader(io.StringIO(text)), None) if text else None
    if header is not None and "run_name" not in header:
        raise UserError(f"'{path}' is not an experiments table of this tool (no run_name "
                        "column): move it away, this tool never rewrites a file it did not "
                        "write")
    return text


def check_experiments_table(path: Path) -> None:
    """Before a run starts: raise UserError if ``path`` exists and cannot take its row."""
    if Path(path).is_file():
        with open(path, encoding="utf-8", newline="") as handle:
            _read_table(handle, path)


def _write_rows(handle, columns: list[str], rows: list[dict], header: bool) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", restval="",
                            lineterminator="\n")
    if header:
        writer.writeheader()
    # run names and folders are the user's: no cell may run as a spreadsheet formula
    writer.writerows(spreadsheet_row({key: row.get(key, "") for key in columns}) for row in rows)
    handle.write(buffer.getvalue())


def read_experiments(path: Path) -> list[dict]:
    with open(path, encoding="utf-8", newline="") as handle:
        return [from_spreadsheet_row(row) for row in csv.DictReader(handle)]


OLD_AUGMENT = {"True": "full", "False": "none"}  # rows written before --augment had levels


def read_experiment_rows(path: Path) -> list[dict]:
    """The rows of an experiments table as today's version writes them: rows of an earlier
    version get today's ``augment`` words, their ``framework`` where the row shows it (a Keras
    backend named; else it stays empty: unknown), and, for options that did not exist yet, the
    default they ran with."""
    from pokedex_trainer.config import TrainConfig

    rows = read_experiments(path)
    for row in rows:
        row["augment"] = OLD_AUGMENT.get(row.get("augment"), row.get("augment"))
        if not row.get("framework"):  # before the column: known where a Keras backend is named
            row["framework"] = "keras" if row.get("keras_backend") else ""
        for name in RECIPE_COLUMNS:
            if row.get(name) in (None, ""):
                default = getattr(TrainConfig, name)
                row[name] = "" if default is None else str(default)
    return rows
