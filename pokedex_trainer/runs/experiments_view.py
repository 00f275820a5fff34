"""The experiments view: every run of a grid loop in one sorted table and one plot."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from pokedex_trainer.errors import UserError, reason_line
from pokedex_trainer.runs.experiments_table import (
    EXPERIMENT_COLUMNS,
    read_experiment_rows,
)
from pokedex_trainer.runs.layout import EXPERIMENTS
from pokedex_trainer.runs.store import RunStore
from pokedex_trainer.user_io.atomic import atomic_write_bytes

HYPERPARAMETERS = ("learning_rate", "fine_tune_learning_rate", "batch_size", "image_size",
                   "epochs", "fine_tune_epochs", "fine_tune_layers", "weights", "dropout",
                   "augment", "seed", "model_type", "class_weight", "sampler", "augment_warmup",
                   "label_smoothing", "lr_schedule", "warmup_epochs", "min_lr", "optimizer",
                   "weight_decay", "ema", "unknown_dir", "unknown_weight")
SHOWN = ("run_name", "model_type", "framework", "status", "best_val_accuracy",
         "best_val_top5_accuracy", "test_accuracy", "learning_rate", "batch_size", "image_size",
         "epochs_run", "duration_s")


def load_experiments(output_dir: Path | str) -> list[dict]:
    """Rows of ``<output_dir>/experiments.csv`` (or of that file itself)."""
    path = Path(output_dir)
    if path.is_dir():
        path = path / EXPERIMENTS
    if not path.is_file():
        raise UserError(f"no experiments table at '{path}': train a run first")
    try:
        rows = read_experiment_rows(path)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise UserError(f"'{path}' is not an experiments table this tool can read (UTF-8 CSV): "
                        f"{reason_line(exc)}") from None
    if rows and "run_name" not in rows[0]:
        raise UserError(f"'{path}' is not an experiments table of this tool (no run_name "
                        "column)")
    if not rows:
        raise UserError(f"'{path}' holds no runs yet")
    return rows


def _number(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return -math.inf


def sort_rows(rows: list[dict], metric: str) -> list[dict]:
    """Best first; runs without the metric (failed, interrupted) last."""
    if metric not in EXPERIMENT_COLUMNS:
        raise UserError(f"--sort_by: unknown column '{metric}'; choose one of "
                        + ", ".join(EXPERIMENT_COLUMNS))
    descending = not metric.endswith(("loss", "duration_s"))
    present = [r for r in rows if _number(r.get(metric)) != -math.inf]
    missing = [r for r in rows if _number(r.get(metric)) == -math.inf]
    return sorted(present, key=lambda r: _number(r[metric]), reverse=descending) + missing


def varied_hyperparameters(rows: list[dict]) -> list[str]:
    """The hyperparameters that take more than one value across the runs."""
    return [name for name in HYPERPARAMETERS
            if len({row.get(name, "") for row in rows}) > 1]


PHASE_NUMBERS = {"head": "1", "fine_tune": "2"}


def phases_run(row: dict) -> str:
    """Which phases a run trained: ``1``, ``2`` or ``1+2`` (from its history.csv, else from
    its epoch counts); empty when nothing tells."""
    if row.get("run_dir"):
        phases = [r.get("phase", "") for r in RunStore(Path(row["run_dir"])).history_rows()]
        numbers = [PHASE_NUMBERS[p] for p in dict.fromkeys(phases) if p in PHASE_NUMBERS]
        if numbers:
            return "+".join(numbers)
    epochs, fine, run = (_number(row.get(k)) for k in ("epochs", "fine_tune_epochs",
                                                       "epochs_run"))
    if -math.inf in (epochs, run):
        return ""
    numbers = (["1"] if epochs > 0 and run > 0 else []) + (["2"] if fine > 0 and run > epochs
                                                         else [])
    return "+".join(numbers)


def table_columns(varied: list[str]) -> list[str]:
    """The table's columns: the usual ones, each varied hyperparameter, and the phases."""
    return [*SHOWN, *(name for name in varied if name not in SHOWN), "phases"]


def format_table(rows: list[dict], columns=SHOWN, marked=()) -> str:
    """A text table of ``rows``; the ``marked`` columns (varied hyperparameters) get a ``*``."""
    rows = [{**r, "phases": phases_run(r)} if "phases" in columns else r for r in rows]
    titles = {c: f"{c}*" if c in marked else c for c in columns}
    widths = {c: max(len(titles[c]), *(len(str(r.get(c, ""))) for r in rows)) for c in columns}
    lines = ["  ".join(titles[c].ljust(widths[c]) for c in columns)]
    lines += ["  ".join(str(r.get(c, "")).ljust(widths[c]) for c in columns) for r in rows]
    return "\n".join(lines)


def describe_grid(rows: list[dict], varied: list[str]) -> list[str]:
    """What varied across the runs, what stayed the same, and whether phase 2 ran in all."""
    lines = []
    if varied:
        lines.append("* varied across these runs: " + ", ".join(
            f"{name} ({len({r.get(name, '') for r in rows})} values)" for name in varied))
    same = [f"{name}={rows[0].get(name)}" for name in HYPERPARAMETERS
            if name not in varied and rows[0].get(name) not in (None, "")]
    if same:
        lines.append("the same in every run: " + ", ".join(same))
    phases = {phases_run(r) for r in rows}
    if phases == {"1+2"} and "fine_tune_epochs" not in varied and \
            "fine_tune_learning_rate" not in varied:
        lines.append(f"every run also trained phase 2 ({rows[0].get('fine_tune_epochs')} "
                     f"fine-tune epochs at {rows[0].get('fine_tune_learning_rate')}): the "
                     "ranking includes it; --fine_tune_epochs 0 compares phase 1 alone")
    return lines


def plot_experiments(rows: list[dict], metric: str, path: Path) -> list[str]:
    """One panel per varied hyperparameter: ``metric`` against its values. Returns the names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    varied = varied_hyperparameters(rows) or ["run_name"]
    figure, axes = plt.subplots(1, len(varied), figsize=(4.5 * len(varied), 4), squeeze=False)
    for axis, name in zip(axes[0], varied):
        points = [(r.get(name, ""), _number(r.get(metric))) for r in rows
                  if _number(r.get(metric)) != -math.inf]
        numeric = all(_number(x) != -math.inf for x, _ in points)
        if numeric:
            xs = [_number(x) for x, _ in points]
            axis.scatter(xs, [y for _, y in points], color="#3b7dd8")
            if xs and min(xs) > 0 and max(xs) / min(xs) >= 10:
                axis.set_xscale("log")
        else:
            labels = sorted({str(x) for x, _ in points})
            axis.scatter([labels.index(str(x)) for x, _ in points], [y for _, y in points],
                         color="#3b7dd8")
            axis.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
        axis.set_xlabel(name)
        axis.set_ylabel(metric)
        axis.grid(alpha=0.3)
    figure.suptitle(f"{metric} by hyperparameter ({len(rows)} runs)")
    figure.tight_layout()
    with io.BytesIO() as buffer:
        figure.savefig(buffer, format="png", dpi=100)
        atomic_write_bytes(path, buffer.getvalue())
    plt.close(figure)
    return varied


def show_experiments(output_dir: Path | str, metric: str = "best_val_accuracy") -> list[dict]:
    """Print the sorted table, write ``experiments.png`` beside the CSV; returns sorted rows."""
    rows = sort_rows(load_experiments(output_dir), metric)
    folder = Path(output_dir) if Path(output_dir).is_dir() else Path(output_dir).parent
    marked = varied_hyperparameters(rows)
    print(format_table(rows, table_columns(marked), marked))
    for line in describe_grid(rows, marked):
        print(line)
    varied = plot_experiments(rows, metric, folder / "experiments.png")
    best = rows[0]
    settings = ", ".join(f"{name}={best.get(name, '')}" for name in varied
                         if name != "run_name")
    print(f"\nbest {metric}: {best.get(metric)} -- {best['run_name']}"
          + (f" ({settings})" if settings else ""))
    print(f"plot: {folder / 'experiments.png'}")
    return rows
