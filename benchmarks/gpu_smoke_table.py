"""The table of a gpu_smoke.sh run: one row per network and route (framework, Keras backend),
images/s of the bare loop, of this project's step and of the trainer end to end, and the ratios
the targets are written in.

    python benchmarks/gpu_smoke_table.py benchmarks/results

- bare: the loop a user writes by hand in the route's own framework (bare_loops.py: torchvision
  with channels-last, autocast and a scaler; or ``keras.applications`` + ``model.fit`` on the
  same Keras backend), same network, batch, size and precision.
- step: this project's training step with the loader off (one pre-made batch), and with the
  loader on (worker processes, shared memory, the cache) where it was run.
- trainer: train_professional_models.py itself, training images/s over the epochs after the
  first, validation included (trainer_pace.py).
- step/bare (target >= 0.95), trainer/step (target >= 0.85), and the trainer against the bare
  PyTorch loop of the same network: the card's own pace.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

TARGETS = {"step/bare": 0.95, "trainer/step": 0.85}


def route_of(row: dict) -> tuple[str, str]:
    """(framework, backend) of a result row; rows of earlier versions had only ``device``."""
    if "framework" in row and "backend" in row:
        return row["framework"], row["backend"]
    device = row.get("device", "")
    if "Keras on " in device:
        return "keras", device.rsplit("Keras on ", 1)[1]
    return "pytorch", "torch"


def _ratio(top, bottom, target: float | None = None) -> str:
    if not top or not bottom:
        return "-"
    value = top / bottom
    mark = "" if target is None else (" ok" if value >= target else " LOW")
    return f"{value:.2f}{mark}"


def _speed(value) -> str:
    return "-" if value is None else f"{value:.1f}"


def table(rows: list[dict]) -> list[str]:
    by_route: dict[tuple, dict] = {}
    torch_bare = {}
    for row in rows:
        kind = row.get("kind", "step")
        framework, backend = route_of(row)
        key = (row["model_type"], framework, backend, bool(row.get("compile")))
        entry = by_route.setdefault(key, {"step_on": []})
        if kind == "bare":
            entry["bare"] = row
            if row.get("compile"):
                continue
            if framework == "pytorch":
                torch_bare[row["model_type"]] = row["images_per_second"]
        elif kind == "trainer":
            entry["trainer"] = row
        elif row.get("loader") == "off":
            entry["step"] = row
        else:
            entry["step_on"].append(row)
    lines = ["| network | route | batch | size | bare loop | step | step/bare | step, loader on "
             "| trainer | trainer/step | trainer/bare PyTorch |",
             "| --- | --- | --- | --- | ---: | ---: | ---: | --- | ---: | ---: | ---: |"]
    for (model_type, framework, backend, compiled), entry in sorted(by_route.items()):
        some = entry.get("step") or entry.get("bare") or entry.get("trainer") or \
            entry["step_on"][0]
        route = "PyTorch" if framework == "pytorch" else f"Keras on {backend}"
        route += ", --compile" if compiled else ""
        bare_row = entry.get("bare") or by_route.get((model_type, framework, backend, False),
                                                     {}).get("bare", {})
        bare = bare_row.get("images_per_second")
        step = entry.get("step", {}).get("images_per_second")
        trainer = entry.get("trainer", {}).get("images_per_second")
        loader_on = ", ".join(f"{r['images_per_second']:.1f} ({r.get('cache', '-')})"
                              for r in sorted(entry["step_on"], key=lambda r: r.get("cache", "")))
        lines.append(
            f"| {model_type} | {route} | {some.get('batch_size', '?')} "
            f"| {'x'.join(map(str, some.get('image_size', ['?'])))} | {_speed(bare)} "
            f"| {_speed(step)} | {_ratio(step, bare, TARGETS['step/bare'])} "
            f"| {loader_on or '-'} | {_speed(trainer)} "
            f"| {_ratio(trainer, step, TARGETS['trainer/step'])} "
            f"| {_ratio(trainer, torch_bare.get(model_type))} |")
    return lines


def read_rows(folder: Path) -> list[dict]:
    rows = []
    for path in sorted(folder.glob("gpu_smoke_*.json")):
        try:
            row = json.loads(path.read_text())
            if isinstance(row, dict) and "model_type" in row and "images_per_second" in row:
                rows.append(row)
                continue
        except (OSError, ValueError):
            pass
        print(f"skipped {path.name}: not a result", file=sys.stderr)
    return rows


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folder", nargs="?", default="benchmarks/results",
                        help="where gpu_smoke.sh wrote its gpu_smoke_*.json files")
    rows = read_rows(Path(parser.parse_args(argv).folder))
    if not rows:
        print("no gpu_smoke_*.json results in the folder")
        return 0
    devices = sorted({r["device"].split(", Keras on")[0] for r in rows if r.get("device")})
    print(f"device: {'; '.join(devices)}; {rows[0].get('machine', '')}")
    print("\n".join(table(rows)))
    print(f"targets: step/bare >= {TARGETS['step/bare']}, trainer/step >= "
          f"{TARGETS['trainer/step']} (issue #23); images/s, higher is better")
    return 0


if __name__ == "__main__":
    sys.exit(main())
