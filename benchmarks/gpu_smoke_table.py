"""The table of a gpu_smoke.sh run: one row per network, backend, loader and cache, with
images/s, peak GPU memory and the loader's share of each step.

    python benchmarks/gpu_smoke_table.py benchmarks/results

The share is the measured wait for a batch where the trainer's loop is ours (PyTorch), else
1 - (images/s with the loader) / (images/s from one pre-made batch), the slowdown the loader
causes (0 when the network is the slower part).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def backend_of(row: dict) -> str:
    device = row.get("device", "")
    return device.rsplit("Keras on ", 1)[1] if "Keras on " in device else "torch"


def table(rows: list[dict]) -> list[str]:
    baseline = {(r["model_type"], backend_of(r)): r["images_per_second"]
                for r in rows if r["loader"] == "off"}
    lines = ["| network | backend | loader | cache | batch | size | img/s | peak GPU MB | "
             "loader share |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in sorted(rows, key=lambda r: (r["model_type"], backend_of(r), r["loader"] == "on",
                                         r.get("cache", "-"))):
        share = r.get("loader_wait_share")
        off = baseline.get((r["model_type"], backend_of(r)))
        if r["loader"] == "off":
            share_text = "-"
        elif share is not None:
            share_text = f"{share:.2f} (wait)"
        elif off:
            share_text = f"{max(0.0, 1 - r['images_per_second'] / off):.2f} (vs off)"
        else:
            share_text = "?"
        gpu = f"{r['gpu_peak_mb']:.0f}" if r.get("gpu_peak_mb") else "-"
        loader = f"on ({r['workers']} workers)" if r["loader"] == "on" else "off"
        lines.append(f"| {r['model_type']} | {backend_of(r)} | {loader} | {r.get('cache', '-')} "
                     f"| {r['batch_size']} | {'x'.join(map(str, r['image_size']))} "
                     f"| {r['images_per_second']:.1f} | {gpu} | {share_text} |")
    return lines


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folder", nargs="?", default="benchmarks/results",
                        help="where gpu_smoke.sh wrote its gpu_smoke_*.json files")
    folder = Path(parser.parse_args(argv).folder)
    rows = []
    for path in sorted(folder.glob("gpu_smoke_*.json")):
        try:
            rows.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            print(f"skipped {path.name}: not a result", file=sys.stderr)
    if not rows:
        print("no gpu_smoke_*.json results in", folder)
        return 0
    device = rows[0].get("device", "?")
    print(f"device: {device}; {rows[0].get('machine', '')}")
    print("\n".join(table(rows)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
