"""Inference speed and memory of each network in its framework and of each exported file.

    python benchmarks/inference.py --model_types mobilenet resnet --image_size 224
    python benchmarks/inference.py --model_types efficientnet --image_size 600 --runs 10

For each network (random weights: speed does not depend on them) it measures the framework's
eager call, then writes every export format this project produces and measures each file in its
own runtime (ONNX Runtime, LiteRT, TorchScript, torch.export, SavedModel) exactly as
evaluate.py does: batch-1 latency (median and p95 after warm-up), batch-N throughput, the ratio
to the eager call, and the peak resident memory of a fresh process that loads the file and
answers one image. Prints a table and writes JSON (--output).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pokedex_trainer.networks import MODEL_SPECS, get_spec  # noqa: E402

CLASSES = 10


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_types", nargs="+", choices=sorted(MODEL_SPECS),
                        default=["mobilenet", "resnet"])
    parser.add_argument("--image_size", type=int, default=224,
                        help="square input side (default: %(default)s)")
    parser.add_argument("--batch", type=int, default=32,
                        help="batch size of the throughput figure (default: %(default)s)")
    parser.add_argument("--runs", type=int, default=20,
                        help="timed batch-1 calls after 3 warm-up calls (default: %(default)s)")
    parser.add_argument("--tflite_precisions", default="float32,float16,dynamic_int8,int8")
    parser.add_argument("--no_memory", action="store_true",
                        help="skip the per-runtime memory probes (one process each)")
    parser.add_argument("--output", default="benchmarks/results/inference.json")
    parser.add_argument("--memory_probe", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def memory_probe(path: str) -> None:
    """Child process: load one file, answer one image, print the peak RSS in MB: this
    process's, plus that of the process running the model where it has one (ONNX, TFLite)."""
    from pokedex_trainer.evaluation.predict import load_predictor
    from pokedex_trainer.machine.memory import peak_resident_mb

    predictor = load_predictor(path, trust=True)  # files this script wrote
    height, width = predictor.info.image_size
    predictor.predict(np.zeros((1, height, width, 3), np.uint8))
    child = getattr(predictor, "child", None)
    extra = child.peak_memory_mb() if child is not None else 0.0
    print(json.dumps({"peak_rss_mb": peak_resident_mb() + extra}))


def probe_memory(path: Path) -> float | None:
    done = subprocess.run([sys.executable, __file__, "--memory_probe", str(path)],
                          capture_output=True, text=True, timeout=600)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    return json.loads(lines[-1])["peak_rss_mb"] if done.returncode == 0 and lines else None


def timed(call, single: np.ndarray, batch: np.ndarray, runs: int) -> dict:
    for _ in range(3):
        call(single)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        call(single)
        times.append((time.perf_counter() - start) * 1000)
    call(batch)
    start = time.perf_counter()
    repeats = 2
    for _ in range(repeats):
        call(batch)
    return {"batch1_median_ms": float(np.median(times)),
            "batch1_p95_ms": float(np.percentile(times, 95)),
            "throughput_images_per_s": len(batch) * repeats / (time.perf_counter() - start)}


def build_source(model_type: str, size: int, folder: Path):
    """(source file, eager call on uint8 NHWC) of a randomly initialized network."""
    spec = get_spec(model_type)
    if spec.framework == "keras":
        from pokedex_trainer.backends.keras.keras_networks import build_model

        model = build_model(spec, CLASSES, (size, size), "none", 0.3)
        path = folder / f"{spec.arch}_best.keras"
        model.save(path)
        (folder / "class_names.json").write_text(json.dumps([f"c{i}" for i in range(CLASSES)]))
        return path, lambda x: model(x.astype(np.float32), training=False).numpy()
    import torch

    from pokedex_trainer.backends.torch.torch_networks import build_model, checkpoint_payload

    model = build_model(spec, CLASSES, "none", 0.3).eval()
    path = folder / f"{spec.arch}_best.pth"
    torch.save(checkpoint_payload(model, [f"c{i}" for i in range(CLASSES)], (size, size), spec,
                                  0.3), path)

    def eager(x):
        with torch.inference_mode():
            return model.probabilities(torch.from_numpy(
                np.ascontiguousarray(x.transpose(0, 3, 1, 2), dtype=np.float32))).numpy()
    return path, eager


def export_all(source: Path, folder: Path, precisions: tuple[str, ...], size: int) -> list:
    """Every export format of the source's framework, written without the parity check (the
    weights are random; export.py and the tests check parity)."""
    from pokedex_trainer.exporters import writers as exporters
    from pokedex_trainer.exporters.choices import FORMATS
    from pokedex_trainer.evaluation.predict import load_predictor
    from pokedex_trainer.runs.finished import LabelledImages

    predictor = load_predictor(source)
    framework = "keras" if predictor.runtime == "keras" else "torch"
    # the web page's model is the ONNX file again, run in a browser: not timed here
    formats = [name for name in FORMATS[framework] if name != "web"]
    job = exporters.ExportJob(source, formats, folder,
                              LabelledImages(folder, predictor.info.class_names, [], "none"),
                              tflite_precisions=precisions)
    rng = np.random.default_rng(0)

    def calibration():
        for _ in range(4):
            yield rng.integers(0, 256, (8, size, size, 3), dtype=np.uint8)

    writers = exporters._keras_writers(job, predictor) if framework == "keras" else \
        exporters._torch_writers(job, predictor)
    written = []
    for fmt, precision, path, write in writers:
        if precision == "int8":
            from pokedex_trainer.exporters import keras_formats

            saved = folder / f"{source.stem}_saved_model"  # written first, by "savedmodel"
            if not saved.exists():
                keras_formats.write_saved_model(predictor.model, saved)
            sidecar = exporters._sidecar(predictor.info, job, fmt, precision)
            keras_formats.write_tflite(saved, path, precision, sidecar, calibration)
            exporters.atomic_write_json(exporters.sidecar_path(path), sidecar)
        else:
            write(path, exporters._sidecar(predictor.info, job, fmt, precision))
        written.append((fmt, precision, path))
    return written


def bench_model(model_type: str, args, folder: Path) -> list[dict]:
    from pokedex_trainer.evaluation.predict import load_predictor

    size = args.image_size
    rng = np.random.default_rng(0)
    single = rng.integers(0, 256, (1, size, size, 3), dtype=np.uint8)
    batch = rng.integers(0, 256, (args.batch, size, size, 3), dtype=np.uint8)
    source, eager = build_source(model_type, size, folder)
    rows = [{"model_type": model_type, "file": "(eager call)", "runtime": "eager",
             **timed(eager, single, batch, args.runs)}]
    predictor = load_predictor(source)
    rows.append({"model_type": model_type, "file": source.name, "runtime": predictor.runtime,
                 **timed(predictor.predict, single, batch, args.runs)})
    precisions = tuple(p for p in args.tflite_precisions.split(",") if p)
    for fmt, precision, path in export_all(source, folder, precisions, size):
        predictor = load_predictor(path, trust=True)  # written just above
        rows.append({"model_type": model_type, "file": path.name, "runtime": predictor.runtime,
                     "precision": precision, **timed(predictor.predict, single, batch,
                                                     args.runs)})
    eager_ms = rows[0]["batch1_median_ms"]
    eager_ips = rows[0]["throughput_images_per_s"]
    for row in rows:
        row["latency_vs_eager"] = row["batch1_median_ms"] / eager_ms
        row["throughput_vs_eager"] = row["throughput_images_per_s"] / eager_ips
        if not args.no_memory and row["runtime"] != "eager":
            row["peak_rss_mb"] = probe_memory(folder / row["file"])
    return rows


def table(rows: list[dict]) -> str:
    header = (f"{'model':<12} {'file':<40} {'runtime':<14} {'ms (median)':>11} {'p95':>7} "
              f"{'x eager':>7} {'img/s':>8} {'x eager':>7} {'RSS MB':>7}")
    lines = [header, "-" * len(header)]
    for r in rows:
        rss = r.get("peak_rss_mb")
        lines.append(f"{r['model_type']:<12} {r['file']:<40} {r['runtime']:<14} "
                     f"{r['batch1_median_ms']:>11.2f} {r['batch1_p95_ms']:>7.2f} "
                     f"{r['latency_vs_eager']:>7.2f} {r['throughput_images_per_s']:>8.1f} "
                     f"{r['throughput_vs_eager']:>7.2f} "
                     f"{'-' if rss is None else f'{rss:.0f}':>7}")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.memory_probe:
        memory_probe(args.memory_probe)
        return 0
    frameworks = {get_spec(m).framework for m in args.model_types}
    from pokedex_trainer.evaluation.model_files import import_frameworks

    import_frameworks(frameworks)
    rows = []
    with tempfile.TemporaryDirectory(prefix="pokedex_inference_") as tmp:
        for model_type in args.model_types:
            folder = Path(tmp) / model_type
            folder.mkdir()
            print(f"{model_type}: building, exporting and timing at {args.image_size} px ...",
                  flush=True)
            rows.extend(bench_model(model_type, args, folder))
    print(table(rows))
    result = {"machine": {"platform": platform.platform(), "processor": platform.processor(),
                          "python": platform.python_version()},
              "image_size": args.image_size, "batch": args.batch, "runs": args.runs,
              "rows": rows}
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2))
    print(f"written {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
