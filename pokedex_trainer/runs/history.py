"""history.csv: one row per epoch with the phase and the learning rate, flushed every epoch."""

from __future__ import annotations

import csv
from pathlib import Path

from pokedex_trainer.runs.experiments_table import read_experiments


class HistoryWriter:
    """history.csv: one row per epoch with the phase and learning rate, flushed every epoch."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.columns: list[str] | None = None
        if self.path.exists():
            with open(self.path, encoding="utf-8", newline="") as handle:
                self.columns = next(csv.reader(handle), None)

    def write(self, epoch: int, phase: str, logs: dict) -> None:
        row = {"epoch": epoch, "phase": phase}
        row.update({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in logs.items()})
        if self.columns is None:
            self.columns = list(row)
        new = [k for k in row if k not in self.columns]
        if new:  # a later phase logged a new metric: rewrite with the wider header
            old = read_experiments(self.path) if self.path.exists() else []
            self.columns += new
            with open(self.path, "w", encoding="utf-8", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=self.columns, lineterminator="\n")
                writer.writeheader()
                writer.writerows(old)
        exists = self.path.exists() and self.path.stat().st_size > 0
        with open(self.path, "a", encoding="utf-8", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=self.columns, restval="",
                                    lineterminator="\n")
            if not exists:
                writer.writeheader()
            writer.writerow(row)

