"""Input pipeline throughput: the project's loader with 1..N workers against a bare loop.

    python benchmarks/input_pipeline.py --sizes 224 600 --max_workers 2

The bare loop reads, decodes (Pillow, full size) and calls the same albumentations Compose on
the same files in one process; the loader does the same work (with reduced-size JPEG decoding)
plus batching, in worker processes. Photos are generated, photo-like and of realistic size
(4:3, several times the target side). Prints a table and writes JSON (--output).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pokedex_trainer.augment import build_train_transform  # noqa: E402
from pokedex_trainer.dataset import scan_dataset  # noqa: E402
from pokedex_trainer.feeding import BatchLoader, BatchSource  # noqa: E402
from pokedex_trainer.synthetic import write_dataset  # noqa: E402


def photos(root: Path, side: int, count: int) -> Path:
    """``count`` photo-like JPEGs about 2x the target side (a phone photo downscaled)."""
    target = root / f"pipeline_{side}"
    if not target.exists():
        write_dataset(target, classes=[f"Clase{i}" for i in range(4)], per_class=count // 4,
                      size=(side * 8 // 3, side * 2), seed=1, quality=92)
    return target


def bare_loop(root: Path, samples, side: int) -> float:
    """Images/s of read + decode + the same Compose, one process, no batching."""
    import numpy as np
    from PIL import Image

    transform = build_train_transform((side, side), seed=0)
    start = time.perf_counter()
    for relative, _ in samples:
        with Image.open(io.BytesIO((root / relative).read_bytes())) as image:
            pixels = np.asarray(image.convert("RGB"))
        transform(image=pixels)
    return len(samples) / (time.perf_counter() - start)


def project_loader(root: Path, samples, side: int, workers: int, batch: int) -> float:
    source = BatchSource(root, samples, (side, side), training=True, seed=0)
    loader = BatchLoader(source, batch, shuffle=True, workers=workers, seed=0)
    try:
        for _ in loader.iter_epoch(0):  # warm-up: start the workers
            break
        start = time.perf_counter()
        count = sum(len(b.labels) for b in loader.iter_epoch(1))
        return count / (time.perf_counter() - start)
    finally:
        loader.close()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 600])
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--max_workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--data_dir", default="benchmarks/data")
    parser.add_argument("--output", default=None)
    args = parser.parse_args(argv)
    rows = []
    print(f"{'size':>5} {'runner':<12} {'workers':>7} {'img/s':>8} {'vs bare':>8}")
    for side in args.sizes:
        root = photos(Path(args.data_dir), side, args.images)
        samples = scan_dataset(root).samples
        bare = bare_loop(root, samples, side)
        rows.append({"size": side, "runner": "bare", "workers": 0, "images_per_second": bare})
        print(f"{side:>5} {'bare loop':<12} {'-':>7} {bare:>8.1f} {1.0:>8.2f}")
        for workers in range(0, args.max_workers + 1):
            speed = project_loader(root, samples, side, workers, args.batch_size)
            rows.append({"size": side, "runner": "loader", "workers": workers,
                         "images_per_second": speed, "ratio_to_bare": speed / bare})
            print(f"{side:>5} {'loader':<12} {workers:>7} {speed:>8.1f} {speed / bare:>8.2f}")
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps({"machine": platform.platform(),
                                                 "cpus": os.cpu_count(), "rows": rows},
                                                indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
