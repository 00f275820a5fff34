"""The exported web page's speed in Chromium, as a slow phone would see it (issue 34, item 6).

For each network size, the page is written exactly as ``export.py --formats web`` writes it
(MobileNetV2 as the trainer builds it, PyTorch, random weights: time does not depend on them),
served by ``export.py --serve`` (HTTPS, cross-origin isolated) and opened in headless Chromium
with the CPU slowed 4x (DevTools' CPU throttling). Two ways of running, in the same browser:

* ``old page``: the page as a git revision wrote it (``--old_rev``; its own scripts and its
  ONNX Runtime build, WebAssembly only, one thread), the same model;
* ``before``: the page of today forced to single-threaded WebAssembly
  (``?backend=wasm&threads=1``);
* ``after``: what the page now picks by itself (WebGPU or a hardware WebGL where the browser
  has them, else WebAssembly with threads when cross-origin isolated).

Measured per way, each in a fresh browser context (nothing cached): model-ready time (from
navigation to the model answering its first blank image, download included) and the time of
each photo (decode, resize, answer) over ``--photos`` photos after the first, median.

    python benchmarks/web_page.py --output benchmarks/results/web_page.json
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

WAYS = {"before": "?backend=wasm&threads=1", "after": ""}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[48, 224],
                        help="square input sides (48: the README demo's; default: %(default)s)")
    parser.add_argument("--classes", type=int, default=6)
    parser.add_argument("--photos", type=int, default=6, help="photos timed per way")
    parser.add_argument("--repeats", type=int, default=2, help="fresh loads per way")
    parser.add_argument("--throttle", type=float, default=4.0, help="CPU slow-down factor")
    parser.add_argument("--old_rev", default="42a1d7d",
                        help="git revision of the old page (default: %(default)s, the last "
                             "before WebGPU/WebGL, threads and live mode)")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "chromium")
    parser.add_argument("--output", default="benchmarks/results/web_page.json")
    return parser.parse_args(argv)


def write_page(folder: Path, size: int, classes: int) -> None:
    import torch

    from pokedex_trainer.backends.torch.torch_networks import build_model
    from pokedex_trainer.exporters.torch_formats import write_onnx
    from pokedex_trainer.exporters.web_page import write_page as write_web
    from pokedex_trainer.exporters.choices import DEFAULT_OPSET
    from pokedex_trainer.networks import get_spec

    torch.manual_seed(0)
    model = build_model(get_spec("mobilenet", "pytorch"), classes, "none", 0.2).eval()
    sidecar = {"class_names": [f"class_{i}" for i in range(classes)],
               "image_size": [size, size],
               "input": {"layout": "NCHW", "mean": [0.0] * 3, "std": [1.0] * 3},
               "output": {"kind": "probabilities"}, "temperature": 1.0,
               "source_model": f"mobilenet_v2 {size}px (random weights)"}
    write_web(folder, lambda path: write_onnx(model, (size, size), path, DEFAULT_OPSET, sidecar),
              sidecar, "fp32", None)


OLD_RUNTIME = ("ort.wasm.min.js", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")


def old_page(web: Path, folder: Path, rev: str) -> Path:
    """A copy of ``web`` with the page files of git revision ``rev`` and its runtime files."""
    import subprocess

    from pokedex_trainer.exporters.web_page import PAGE_FILES, runtime_folder

    shutil.copytree(web, folder)
    for name in PAGE_FILES:
        text = subprocess.run(["git", "-C", str(ROOT), "show",
                               f"{rev}:pokedex_trainer/exporters/web/{name}"],
                              check=True, capture_output=True).stdout
        (folder / name).write_bytes(text)
    for name in OLD_RUNTIME:
        shutil.copyfile(runtime_folder() / name, folder / "ort" / name)
    return folder


def photos(folder: Path, count: int) -> list[Path]:
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    generator = np.random.default_rng(0)
    paths = []
    for index in range(count + 1):
        path = folder / f"photo_{index}.jpg"
        pixels = generator.integers(0, 256, (480, 640, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(path, quality=90)
        paths.append(path)
    return paths


# The same clock for every page, old or new: when "ready" shows, and from a photo's choice
# (the input's change event) to its card (data-processed changes).
MARKS = """
window.__marks = { ready: null, chosen: [], done: [] };
document.addEventListener("change", () => __marks.chosen.push(performance.now()), true);
new MutationObserver(() => {
  const body = document.body;
  if (!body) return;
  if (body.dataset.state === "ready" && __marks.ready === null) __marks.ready = performance.now();
  const processed = Number(body.dataset.processed || 0);
  while (__marks.done.length < processed) __marks.done.push(performance.now());
}).observe(document, { attributes: true, subtree: true,
                       attributeFilter: ["data-state", "data-processed"] });
"""


def measure(browser, url: str, shots: list[Path], throttle: float) -> dict:
    context = browser.new_context(ignore_https_errors=True, viewport={"width": 390, "height": 844})
    page = context.new_page()
    page.add_init_script(MARKS)
    cdp = context.new_cdp_session(page)
    cdp.send("Emulation.setCPUThrottlingRate", {"rate": throttle})
    page.goto(url)
    page.wait_for_selector("body[data-state=ready]", timeout=600_000)
    backend = page.get_attribute("body", "data-backend") or "wasm"  # the old page: wasm only
    about = page.inner_text("#about")
    for count, shot in enumerate(shots, start=1):  # one at a time: the first warms up
        page.set_input_files("#files", [str(shot)])
        page.wait_for_selector(f"body[data-processed='{count}']", timeout=600_000)
    marks = page.evaluate("__marks")
    context.close()
    times = [done - chosen for chosen, done in zip(marks["chosen"], marks["done"])][1:]
    return {"ready_ms": marks["ready"], "photo_ms": statistics.median(times),
            "backend": backend, "footer": about}


def main(argv=None) -> int:
    args = parse_args(argv)
    from playwright.sync_api import sync_playwright

    from pokedex_trainer.exporters import serve_page
    from pokedex_trainer.exporters.web_page import RUNTIME_FILES

    rows = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        shots = photos(tmp / "photos", args.photos)
        import os

        os.environ["POKEDEX_SERVE_DIR"] = str(tmp / "certs")
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=args.chromium,
                                                 args=["--no-sandbox",
                                                       "--ignore-certificate-errors"])
            for size in args.sizes:
                web = tmp / f"run_{size}" / "export" / "web"
                write_page(web, size, args.classes)
                pages = {"old page": (old_page(web, tmp / f"old_{size}", args.old_rev), "")}
                pages.update({way: (web, query) for way, query in WAYS.items()})
                for way, (folder, query) in pages.items():
                    ready = threading.Event()
                    thread = threading.Thread(target=serve_page.serve_command,
                                              args=(str(folder), "127.0.0.1", 0, ready),
                                              daemon=True)
                    thread.start()
                    if not ready.wait(60):
                        raise SystemExit("the page server did not start")
                    try:
                        tries = [measure(browser, ready.url + "index.html" + query, shots,
                                         args.throttle) for _ in range(args.repeats)]
                    finally:
                        ready.server.shutdown()
                    row = {"image_size": size, "way": way,
                           "model_bytes": (web / "model.onnx").stat().st_size,
                           "runtime_bytes": sum(f.stat().st_size for f in
                                                (folder / "ort").iterdir()
                                                if f.name in (OLD_RUNTIME if way == "old page"
                                                              else RUNTIME_FILES)),
                           "backend": tries[0]["backend"], "footer": tries[0]["footer"],
                           "ready_ms": statistics.median(t["ready_ms"] for t in tries),
                           "photo_ms": statistics.median(t["photo_ms"] for t in tries),
                           "tries": tries}
                    rows.append(row)
                    print(f"{size:>4}px  {way:<8}  ready {row['ready_ms']:8.0f} ms  photo "
                          f"{row['photo_ms']:7.1f} ms  ({row['footer'].split('(')[-1].split(')')[0]})",
                          flush=True)
            version = browser.version
            browser.close()
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps({
        "rows": rows, "chromium": version, "cpu_throttling": args.throttle,
        "machine": platform.platform(), "processor": platform.processor(),
        "seconds": round(time.perf_counter() - started, 1),
        "date": time.strftime("%Y-%m-%d")}, indent=2))
    print(f"written {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
