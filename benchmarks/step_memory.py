"""Memory of a training step on the CPU, per network and framework: bytes per input pixel.

    python benchmarks/step_memory.py                       # every route, both recipes
    python benchmarks/step_memory.py --routes resnet:pytorch --sizes 64 128

Runs the real trainer (one epoch of each phase, batch 2) at two image sizes and reads the
process's peak resident memory; the difference between the two, divided by the extra pixels,
is what the step needs per pixel of each image (activations kept for the backward pass, the
framework's workspaces). Two recipes: from scratch (``--weights none``: every layer trains) and
transfer (``--weights FILE`` of random weights saved here: a frozen backbone, then the last
layers), the latter as a user with ImageNet weights runs it. The constants in
pokedex_trainer/machine/step_memory.py come from this script's output (written as JSON with
--output); training on the CPU checks its batch against them before the first step.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ROUTES = ("mobilenet:keras", "mobilenet:pytorch", "resnet:pytorch", "resnet:keras",
          "efficientnet:keras", "efficientnet:pytorch")
BATCH = 2


def _weights_file(model_type: str, framework: str, folder: Path) -> Path:
    """Random weights in the file format of the route (what --weights FILE reads)."""
    code = {
        "pytorch": ("import torch, torchvision; m = {'mobilenet': torchvision.models.mobilenet_v2,"
                    " 'resnet': torchvision.models.resnet152, 'efficientnet':"
                    " torchvision.models.efficientnet_b7}[%r](); torch.save(m.state_dict(), %r)"),
        "keras": ("import os; os.environ['KERAS_BACKEND'] = 'tensorflow'; import keras; m = "
                  "{'mobilenet': keras.applications.MobileNetV2, 'resnet': "
                  "keras.applications.ResNet152, 'efficientnet': "
                  "keras.applications.EfficientNetB7}[%r](weights=None, include_top=False, "
                  "input_shape=(None, None, 3)); m.save_weights(%r)"),
    }[framework]
    target = folder / f"{model_type}_{framework}" \
        f"{'.pth' if framework == 'pytorch' else '.weights.h5'}"
    if not target.exists():
        subprocess.run([sys.executable, "-c", code % (model_type, str(target))], check=True)
    return target


def _peak_mb(model_type: str, framework: str, size: int, data: Path, out: Path,
             weights: str) -> float:
    """Peak resident memory (MB) of one trainer process at ``size``."""
    probe = ("import resource, runpy, sys; sys.argv = sys.argv[1:];"
             "code = 0\ntry:\n    runpy.run_path(sys.argv[0], run_name='__main__')\n"
             "except SystemExit as exc:\n    code = exc.code or 0\n"
             "print('PEAK_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
             "sys.exit(code)")
    argv = [sys.executable, "-c", probe, str(ROOT / "train_professional_models.py"),
            "--data_path", str(data), "--model_type", model_type, "--framework", framework,
            "--weights", weights, "--image_size", str(size), str(size), "--batch_size",
            str(BATCH), "--epochs", "1", "--fine_tune_epochs", "1", "--workers", "0",
            "--histogram_freq", "0", "--output_dir", str(out), "--log_dir", str(out / "tb"),
            "--live_log", "none"]
    result = subprocess.run(argv, capture_output=True, text=True,
                            env=dict(os.environ, KERAS_BACKEND="tensorflow"))
    lines = [line for line in result.stdout.splitlines() if line.startswith("PEAK_KB")]
    if result.returncode != 0 or not lines:
        raise SystemExit(f"{model_type}:{framework} at {size}: {result.stderr[-2000:]}")
    return int(lines[-1].split()[1]) / 1024


INFERENCE = {
    "pytorch": ("import resource, sys, torch, torchvision; torch.set_grad_enabled(False); m = "
                "{'mobilenet': torchvision.models.mobilenet_v2, 'resnet': "
                "torchvision.models.resnet152, 'efficientnet': torchvision.models.efficientnet_b7}"
                "[%r]().eval(); m(torch.zeros(%d, 3, %d, %d)); "
                "print('PEAK_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"),
    "keras": ("import os, resource; os.environ['KERAS_BACKEND'] = 'tensorflow'; import numpy, "
              "keras; m = {'mobilenet': keras.applications.MobileNetV2, 'resnet': "
              "keras.applications.ResNet152, 'efficientnet': keras.applications.EfficientNetB7}"
              "[%r](weights=None, include_top=False, input_shape=(None, None, 3)); n, h, w = %d, %d, %d; "
              "m.predict_on_batch(numpy.zeros((n, h, w, 3), 'float32')); "
              "print('PEAK_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"),
}
INFERENCE_BATCH = 8


def _inference_peak_mb(model_type: str, framework: str, size: int) -> float:
    """Peak resident memory (MB) of one forward pass of ``INFERENCE_BATCH`` images."""
    code = INFERENCE[framework] % (model_type, INFERENCE_BATCH, size, size)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    lines = [line for line in result.stdout.splitlines() if line.startswith("PEAK_KB")]
    if result.returncode != 0 or not lines:
        raise SystemExit(f"{model_type}:{framework} inference at {size}: "
                         f"{result.stderr[-2000:]}")
    return int(lines[-1].split()[1]) / 1024


def measure_inference(routes: list[str], sizes: tuple[int, int]) -> list[dict]:
    rows = []
    for route in routes:
        model_type, framework = route.split(":")
        peaks = [_inference_peak_mb(model_type, framework, s) for s in sizes]
        per_pixel = max(0.0, (peaks[1] - peaks[0]) * 2**20 /
                        (INFERENCE_BATCH * (sizes[1] ** 2 - sizes[0] ** 2)))
        rows.append({"route": route, "recipe": "inference", "sizes": list(sizes),
                     "peak_mb": [round(p) for p in peaks], "bytes_per_pixel": round(per_pixel)})
        print(f"{route:<22} inference peak {peaks[0]:7.0f} / {peaks[1]:7.0f} MB -> "
              f"{per_pixel:8.0f} bytes per pixel per image", flush=True)
    return rows


def measure(routes: list[str], sizes: tuple[int, int]) -> list[dict]:
    from pokedex_trainer.data.synthetic import write_dataset

    rows = []
    with tempfile.TemporaryDirectory(prefix="step_memory_") as tmp:
        folder = Path(tmp)
        data = write_dataset(folder / "data", classes=("A", "B", "C"), per_class=4,
                             size=(max(sizes), max(sizes)), seed=0)
        for route in routes:
            model_type, framework = route.split(":")
            for recipe in ("scratch", "transfer"):
                weights = "none" if recipe == "scratch" else \
                    str(_weights_file(model_type, framework, folder))
                peaks = [_peak_mb(model_type, framework, s, data, folder / "runs", weights)
                         for s in sizes]
                pixels = BATCH * (sizes[1] ** 2 - sizes[0] ** 2)
                per_pixel = max(0.0, (peaks[1] - peaks[0]) * 2**20 / pixels)
                rows.append({"route": route, "recipe": recipe, "sizes": list(sizes),
                             "peak_mb": [round(p) for p in peaks],
                             "bytes_per_pixel": round(per_pixel)})
                print(f"{route:<22} {recipe:<9} peak {peaks[0]:7.0f} / {peaks[1]:7.0f} MB "
                      f"-> {per_pixel:8.0f} bytes per pixel per image", flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--routes", nargs="+", default=list(ROUTES),
                        help="model_type:framework pairs (default: all six)")
    parser.add_argument("--sizes", nargs=2, type=int, default=(96, 192))
    parser.add_argument("--output", default=None, help="write the rows as JSON here")
    parser.add_argument("--inference_only", action="store_true",
                        help="only the forward pass (evaluate.py's latency batch)")
    args = parser.parse_args(argv)
    rows = measure_inference(args.routes, tuple(args.sizes))
    if not args.inference_only:
        rows += measure(args.routes, tuple(args.sizes))
    if args.output:
        Path(args.output).write_text(json.dumps({"machine": platform.processor() or
                                                 platform.machine(), "cpus": os.cpu_count(),
                                                 "batch": BATCH, "rows": rows}, indent=1),
                                     encoding="utf-8")


if __name__ == "__main__":
    main()
