"""history.csv: one row per epoch with the phase and the learning rate, flushed every epoch."""

from __future__ import annotations

import csv
from pathlib import Path

from pokedex_trainer.user_io.atomic import atomic_write_bytes


def _rows(path: Path) -> list[list[str]]:
    with open(path, encoding="utf-8", newline="") as handle:
        return list(csv.reader(handle))


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
            old = []
            if self.path.exists():
                header, *values = _rows(self.path) or [[]]
                old = [dict(zip(header, row)) for row in values]
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

    def truncate(self, epochs: int) -> None:
        """Drop rows past ``epochs``: an epoch killed after its row but before its resume
        point is run again and must not appear twice. Replaced atomically."""
        if not self.path.exists():
            return
        rows = _rows(self.path)
        if not rows:
            return
        kept = [rows[0]] + [row for row in rows[1:] if row and int(row[0]) <= epochs]
        if len(kept) != len(rows):
            import io

            buffer = io.StringIO()
            csv.writer(buffer, lineterminator="\n").writerows(kept)
            atomic_write_bytes(self.path, buffer.getvalue().encode("utf-8"))
