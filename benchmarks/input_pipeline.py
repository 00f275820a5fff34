"""Input pipeline throughput: the project's loader with 0, 1, 2 and all workers, with and without
the decoded-image cache, against a bare loop run as one and as two processes at once.

    python benchmarks/input_pipeline.py --sizes 224 600 --formats jpeg png

The bare loop reads, decodes (with the same reduced-size JPEG decoding as the loader) and calls
the same full albumentations Compose on the same files, image by image, in one process; "bare
x2" runs it in two processes at once (the ceiling of two cores). The loader does the same work
in its worker processes, plus batching, plus the trip to the trainer (through shared memory),
and is read in place as the trainers read it. With ``--cache ram`` the first (warm-up) epoch
fills the cache and the timed epoch reads from it. Photos are generated, photo-like, 4:3, about
2.7x the target side (a phone photo downscaled). Prints a table and writes JSON (--output).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pokedex_trainer.data.scan import scan_dataset  # noqa: E402
from pokedex_trainer.data.feeding import BatchLoader, BatchSource  # noqa: E402
from pokedex_trainer.data.synthetic import write_dataset  # noqa: E402

FORMATS = {"jpeg": "JPEG", "png": "PNG"}


def photos(root: Path, side: int, count: int, fmt: str) -> Path:
    """``count`` photo-like images of 4:3 about 2.7x the target side, in ``fmt``."""
    target = root / f"pipeline_{side}_{fmt}"
    if not target.exists():
        write_dataset(target, classes=[f"Clase{i}" for i in range(4)], per_class=count // 4,
                      size=(side * 8 // 3, side * 2), seed=1, fmt=FORMATS[fmt], quality=92)
    return target


def bare_loop(root: Path, samples, side: int, barrier=None) -> float:
    """Images/s of read + decode + the full Compose, one process, no batching."""
    import cv2

    from pokedex_trainer.data.augment import build_train_transform
    from pokedex_trainer.data.images import read_image

    cv2.setNumThreads(1)  # as in the loader's workers: one process per core
    transform = build_train_transform((side, side), seed=0)
    work = side * 5 // 4
    transform(image=read_image(root / samples[0][0], min_size=(work, work)))  # warm-up
    if barrier is not None:
        barrier.wait()
    start = time.perf_counter()
    for relative, _ in samples:
        transform(image=read_image(root / relative, min_size=(work, work)))
    return len(samples) / (time.perf_counter() - start)


def _bare_worker(args) -> float:
    return bare_loop(*args)


def bare_processes(root: Path, samples, side: int, processes: int) -> float:
    """Images/s of ``processes`` bare loops run at once (each over every sample)."""
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager:
        barrier = manager.Barrier(processes)
        with context.Pool(processes) as pool:
            rates = pool.map(_bare_worker, [(root, samples, side, barrier)] * processes)
    return sum(rates)


def project_loader(root: Path, samples, side: int, workers: int, batch: int,
                   cache: str, cache_dir: Path) -> float:
    image_cache = None
    if cache != "none":
        from pokedex_trainer.data.cache import ImageCache

        image_cache = ImageCache(root, sorted(r for r, _ in samples), (side, side), cache,
                                 cache_dir)
    source = BatchSource(root, samples, (side, side), training=True, seed=0, cache=image_cache)
    loader = BatchLoader(source, batch, shuffle=True, workers=workers, seed=0)
    try:
        for _ in loader.iter_epoch(0, in_place=True):  # warm-up: workers start, cache fills
            pass
        start = time.perf_counter()
        count = sum(len(b.labels) for b in loader.iter_epoch(1, in_place=True))
        return count / (time.perf_counter() - start)
    finally:
        loader.close()
        if image_cache is not None:
            image_cache.close()


def worker_counts(limit: int) -> list[int]:
    return sorted({n for n in (0, 1, 2, os.cpu_count() or 1) if n <= limit})


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 600])
    parser.add_argument("--formats", nargs="+", choices=sorted(FORMATS), default=["jpeg", "png"])
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--max_workers", type=int, default=os.cpu_count() or 2,
                        help="try 0, 1, 2 and all cores up to this many workers")
    parser.add_argument("--cache", nargs="+", choices=("none", "ram", "disk"),
                        default=["none", "ram"])
    parser.add_argument("--data_dir", default="benchmarks/data")
    parser.add_argument("--output", default=None)
    args = parser.parse_args(argv)
    rows = []
    print(f"{'size':>5} {'format':<6} {'runner':<10} {'workers':>7} {'cache':<5} "
          f"{'img/s':>8} {'vs bare x2':>10}")

    def show(row):
        rows.append(row)
        ratio = row.get("ratio_to_bare_x2")
        print(f"{row['size']:>5} {row['format']:<6} {row['runner']:<10} "
              f"{row['workers'] if row['runner'] == 'loader' else '-':>7} {row['cache']:<5} "
              f"{row['images_per_second']:>8.1f} {'' if ratio is None else f'{ratio:.2f}':>10}",
              flush=True)

    for side in args.sizes:
        for fmt in args.formats:
            root = photos(Path(args.data_dir), side, args.images, fmt)
            samples = scan_dataset(root).samples
            base = {"size": side, "format": fmt, "cache": "-"}
            show({**base, "runner": "bare", "workers": 0,
                  "images_per_second": bare_loop(root, samples, side)})
            two = bare_processes(root, samples, side, 2) if args.max_workers >= 2 else None
            if two:
                show({**base, "runner": "bare x2", "workers": 0, "images_per_second": two})
            for cache in args.cache:
                for workers in worker_counts(args.max_workers):
                    speed = project_loader(root, samples, side, workers, args.batch_size,
                                           cache, Path(args.data_dir) / "cache")
                    show({**base, "runner": "loader", "workers": workers, "cache": cache,
                          "images_per_second": speed,
                          "ratio_to_bare_x2": speed / two if two else None})
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps({"machine": platform.platform(),
                                                 "cpus": os.cpu_count(), "rows": rows},
                                                indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
