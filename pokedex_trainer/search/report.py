"""The report of a hyperparameter search: the trials, the best one's command line, and
Optuna's history and importance plots. Written at the end of a search and by
``evaluate.py --search NAME``."""

from __future__ import annotations

import csv
import io
import logging
import warnings
from pathlib import Path

from pokedex_trainer.errors import UserError, reason_line
from pokedex_trainer.runs.experiments_view import format_table
from pokedex_trainer.user_io.atomic import atomic_write_bytes
from pokedex_trainer.search.storage import SEARCH_DIR, best_trial, open_storage, trial_rows
from pokedex_trainer.user_io.inert_text import spreadsheet_row

logger = logging.getLogger(__name__)

PLOTS = {"history.png": "plot_optimization_history",
         "importance.png": "plot_param_importances",
         "intermediate.png": "plot_intermediate_values"}


def report_search(study, report_dir: Path, storage=None) -> None:
    """Print the trials and the best trial's command; write trials.csv, best_command.txt and
    the plots into ``report_dir``."""
    rows = trial_rows(study, exact=False)
    if not rows:
        raise UserError(f"search '{study.study_name}' has no trials yet")
    print(format_table(rows, list(rows[0])))
    _write_csv(report_dir / "trials.csv", trial_rows(study, exact=True))
    values = [t.value for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    plots = [name for name in PLOTS if name != "importance.png" or
             (len(values) >= 2 and len(set(values)) > 1)]  # else every option weighs the same
    written = [name for name in plots if _save_plot(study, name, report_dir / name)]
    best = best_trial(study)
    if best is None:
        print(f"search '{study.study_name}': no trial has completed yet")
    else:
        command = best.user_attrs.get("command", "")
        atomic_write_bytes(report_dir / "best_command.txt", (command + "\n").encode("utf-8"))
        print(f"best: trial {best.number}, val_accuracy {best.value:.4f}"
              f"{', run ' + best.user_attrs['run_dir'] if 'run_dir' in best.user_attrs else ''}"
              f"\nrepeat it with:\n  {command}")
    states = [row["state"] for row in rows]
    print(f"{len(rows)} trials: " + ", ".join(f"{states.count(s)} {s}" for s in
                                              ("complete", "pruned", "fail", "running")
                                              if s in states))
    print(f"report: {report_dir} (trials.csv{''.join(', ' + n for n in written)})")
    url = getattr(storage, "url", "")
    if url.startswith("sqlite:"):
        print(f"live view while trials run: optuna-dashboard {url}")


def _write_csv(path: Path, rows: list[dict]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(spreadsheet_row(row) for row in rows)
    atomic_write_bytes(path, buffer.getvalue().encode("utf-8"))


def _save_plot(study, filename: str, path: Path) -> bool:
    """One of Optuna's matplotlib plots as a PNG; False (with a line) when it cannot be drawn
    (the importance plot needs two completed trials that differ)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as optuna_plots

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            axes = getattr(optuna_plots, PLOTS[filename])(study)
        figure = axes.flat[0].figure if hasattr(axes, "flat") else axes.figure
        figure.set_size_inches(8, 5)
        figure.tight_layout()
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=100)
        atomic_write_bytes(path, buffer.getvalue())
        return True
    except Exception as exc:  # too few trials for this plot
        first = reason_line(exc)
        logger.info("%s not drawn: %s", filename, first)
        return False
    finally:
        plt.close("all")


def search_report_command(name: str, storage_url: str | None, output_dir: str | None) -> None:
    """``evaluate.py --search NAME``: the report of a search, finished or still running.

    NAME is the search's name (looked up in model/ultra/search/) or its SQLite file.
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    given = Path(name)
    if storage_url is None and given.suffix == ".db":
        folder, name = given.parent, given.stem
    else:
        folder = Path("model/ultra") / SEARCH_DIR
        if storage_url is None and not (folder / f"{name}.db").is_file():
            raise UserError(f"--search: no search '{name}' in '{folder}' (give its .db file, "
                            "or --search_storage URL for a shared database)")
    storage = open_storage(storage_url, folder, name, create=False)
    try:
        names = optuna.get_all_study_names(storage)
    except Exception as exc:  # a database of something else
        first = reason_line(exc)
        raise UserError(f"--search: cannot read the search database: {first}") from None
    if name not in names and len(names) == 1 and given.suffix == ".db":
        name = names[0]  # a renamed database file
    if name not in names:
        raise UserError(f"--search: the database holds no search '{name}'"
                        + (f"; it holds: {', '.join(names)}" if names else ""))
    study = optuna.load_study(study_name=name, storage=storage)
    from pokedex_trainer.user_io.output_guard import claim_outputs, record_outputs
    from pokedex_trainer.user_io.atomic import ensure_writable_dir

    written = ("trials.csv", "best_command.txt", *PLOTS)
    if output_dir:  # a folder of the user's: only files this tool wrote there are replaced
        claim_outputs(Path(output_dir), written)
    report_dir = ensure_writable_dir(Path(output_dir) if output_dir else folder / name,
                                     "report folder")
    report_search(study, report_dir, storage)
    record_outputs(report_dir, written)
