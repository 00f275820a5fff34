"""``export.py --formats web``: a static page that names the animal in a photo, in any browser.

``<export>/web/`` holds ``index.html``, its scripts, the model as ONNX (``model.onnx``, float32,
or the smaller verified fp16 / int8 variant asked with ``--web_precision``), ``model.json``
(labels, input size and layout, normalization, calibration temperature, threshold: taken from
the sidecar) and ONNX Runtime Web under ``ort/``, copied from the pinned npm package
(``npm ci`` in the project folder): no CDN, no network once the page is loaded. Serve the
folder with ``python -m http.server`` and open it on a laptop or a phone on the same network.

The page's preprocessing is the trainer's: decode, EXIF orientation, transparency over white,
resize with OpenCV's INTER_AREA arithmetic (``preprocess.js``), RGB 0..255, ``(x - mean) /
std``; its answers are checked against ``evaluate.py --predict`` in a real browser (tests).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from pokedex_trainer.errors import UserError

WEB_DIR = "web"
MODEL_FILE = "model.onnx"
CONFIG_FILE = "model.json"
PAGE_FILES = ("index.html", "app.js", "preprocess.js", "sw.js")
MANIFEST_FILE = "manifest.webmanifest"
ICON_SIZES = (192, 512)
RUNTIME_DIR = "ort"
# ONNX Runtime Web's WebAssembly build, which every browser runs (threads where the page is
# cross-origin isolated): the loader, its module and the binary. Then its WebGPU build (loader,
# module, binary), which the page fetches only on a device with a hardware WebGPU adapter: its
# binary is twice the size and, measured, slower without a GPU (docs/export.md). Not the WebGL
# build: it refuses a model whose batch dimension is free, as every exported model's is.
RUNTIME_FILES = ("ort.wasm.min.js", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm",
                 "ort.webgpu.min.js", "ort-wasm-simd-threaded.asyncify.mjs",
                 "ort-wasm-simd-threaded.asyncify.wasm")
# far below the runtime's files (onnxruntime-web 1.31.1: the .wasm 14.8 and 28.7 MB, the
# scripts 25 to 474 KB): a few bytes of something else make a page that never runs
MIN_WASM_BYTES, MIN_SCRIPT_BYTES = 1_000_000, 4_096
# --web_precision -> the tolerance (parity.TOLERANCES) its check is held to
WEB_PRECISIONS = {"fp32": "float32", "fp16": "float16", "int8": "dynamic_int8"}
PROJECT = Path(__file__).resolve().parents[2]
TEMPLATES = Path(__file__).resolve().parent / "web"
INSTALL = "npm ci (in the project folder, with Node.js's npm; the version is pinned in " \
          "package.json)"


def runtime_folder() -> Path:
    """Where ONNX Runtime Web's files are: ``POKEDEX_ORT_WEB`` or the project's node_modules."""
    from pokedex_trainer.user_io.env_values import env_path

    return env_path("POKEDEX_ORT_WEB") or PROJECT / "node_modules" / "onnxruntime-web" / "dist"


def check_runtime() -> Path:
    """The runtime folder, or UserError (one line) saying how to install it. Checked before
    any work, so an export never stops halfway for it."""
    folder = runtime_folder()
    missing = [name for name in RUNTIME_FILES if not (folder / name).is_file()]
    if missing:
        raise UserError(f"the web page needs ONNX Runtime Web ({', '.join(missing)} not in "
                        f"{folder}); install it with: {INSTALL}")
    for name in RUNTIME_FILES:
        problem = _runtime_file_problem(folder / name)
        if problem:
            raise UserError(f"'{folder / name}' is not ONNX Runtime Web's file ({problem}): "
                            f"the page would not run; install it with: {INSTALL}")
    return folder


def _runtime_file_problem(path: Path) -> str | None:
    """Why a runtime file would make a broken page (or copy what a link points to)."""
    if path.is_symlink():
        return "a link: only the files themselves are copied"
    with open(path, "rb") as handle:
        head = handle.read(4096)
    size = path.stat().st_size
    if path.suffix == ".wasm":
        if not head.startswith(b"\0asm\x01\0\0\0"):
            return "no WebAssembly module"
        return None if size >= MIN_WASM_BYTES else f"{size} bytes, too small for the runtime"
    if size < MIN_SCRIPT_BYTES:
        return f"{size} bytes, too small for the runtime's script"
    try:
        text = head.decode("utf-8", errors="strict") if len(head) < 4096 else \
            head[:4000].decode("utf-8", errors="ignore")
    except UnicodeDecodeError:
        return "not JavaScript text"
    return None if text.strip() and "\0" not in text else "not JavaScript text"


def runtime_version(folder: Path) -> str:
    try:
        return json.loads((folder.parent / "package.json").read_text("utf-8"))["version"]
    except (OSError, ValueError, KeyError, TypeError):
        return "unknown"


def check_precision(text: str | None) -> str:
    precision = (text or "fp32").strip().lower()
    if precision not in WEB_PRECISIONS:
        raise UserError(f"--web_precision {text}: choose {', '.join(WEB_PRECISIONS)}")
    return precision


def smaller_onnx(source: Path, target: Path, precision: str) -> None:
    """The fp16 or int8 variant of a float32 ONNX file (inputs and outputs stay float32)."""
    import onnx

    if precision == "fp16":
        from onnxruntime.transformers.float16 import convert_float_to_float16

        model = convert_float_to_float16(onnx.load(str(source)), keep_io_types=True)
        onnx.save(model, str(target))
    else:  # int8: weights quantized, activations quantized on the fly (dynamic)
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(str(source), str(target), weight_type=QuantType.QUInt8)


def page_config(sidecar: dict, precision: str, threshold: float | None,
                runtime: str) -> dict:
    """model.json: what the page needs, from the model's sidecar."""
    given = sidecar["input"]
    rule = sidecar.get("unknown") or {}
    by_score = threshold is None and rule.get("score", "max_softmax") != "max_softmax"
    return {
        "class_names": sidecar["class_names"], "image_size": sidecar["image_size"],
        "layout": given.get("layout", "NHWC"), "mean": given.get("mean", [0.0] * 3),
        "std": given.get("std", [1.0] * 3), "resize": "area",
        "output": sidecar.get("output", {}).get("kind", "probabilities"),
        "temperature": sidecar.get("temperature", 1.0),
        # --threshold wins; else the sidecar's "unknown" rule, as evaluate.py --predict applies
        # it: a top-probability threshold (the slider's start), or a threshold on the model's
        # known_score output (then the slider starts at 0 and adds its own)
        "threshold": threshold if threshold is not None else
        (0.0 if by_score else rule.get("threshold")),
        "known_score": {"score": rule["score"], "threshold": rule["threshold"]} if by_score
        else None,
        "precision": precision, "model": MODEL_FILE,
        "source_model": sidecar.get("source_model", ""), "created": sidecar.get("created", ""),
        "onnxruntime_web": runtime,
    }


def app_manifest(sidecar: dict) -> dict:
    """The web app manifest: what "Add to Home Screen" / "Install app" needs (a name, icons of
    192 and 512 px, a start address, standalone display)."""
    count = len(sidecar["class_names"])
    return {
        "name": "Pokedex Ultra", "short_name": "Pokedex",
        "description": f"Names the animal in a photo: {count} species, on this device.",
        "start_url": "./index.html", "scope": "./", "display": "standalone",
        "background_color": "#f4f6fb", "theme_color": "#c8102e",
        "icons": [{"src": f"icon-{size}.png", "sizes": f"{size}x{size}", "type": "image/png",
                   "purpose": "any"} for size in ICON_SIZES],
    }


def draw_icon(size: int):
    """The page's icon (a PIL image): a red and white ball, kept inside the middle 80 % that
    a launcher's mask leaves visible."""
    from PIL import Image, ImageDraw

    scale = 4  # drawn large, then shrunk: smooth edges
    side = size * scale
    image = Image.new("RGB", (side, side), "#c8102e")
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, side // 2, side, side), fill="#f4f6fb")
    radius = side * 0.36
    middle = side / 2
    box = (middle - radius, middle - radius, middle + radius, middle + radius)
    draw.pieslice(box, 180, 360, fill="#ffffff")
    draw.pieslice(box, 0, 180, fill="#1d2330")
    draw.ellipse(box, outline="#1d2330", width=side // 40)
    inner = (middle - radius, middle - radius * 0.02, middle + radius, middle + radius * 0.02)
    draw.rectangle(inner, fill="#1d2330")
    knob = radius * 0.28
    draw.ellipse((middle - knob, middle - knob, middle + knob, middle + knob), fill="#ffffff",
                 outline="#1d2330", width=side // 40)
    return image.resize((size, size), Image.Resampling.LANCZOS)


def write_install_files(folder: Path, sidecar: dict) -> None:
    """manifest.webmanifest and its icons beside the page."""
    from pokedex_trainer.user_io.atomic import atomic_write_json

    for size in ICON_SIZES:
        draw_icon(size).save(folder / f"icon-{size}.png", optimize=True)
    atomic_write_json(folder / MANIFEST_FILE, app_manifest(sidecar))


def write_page(folder: Path, write_float32_onnx, sidecar: dict, precision: str,
               threshold: float | None) -> Path:
    """Write the page into ``folder``; ``write_float32_onnx(path)`` writes the model there.
    Returns the model file (the one the export check runs)."""
    from pokedex_trainer.user_io.atomic import atomic_write_json

    runtime = check_runtime()
    folder.mkdir(parents=True, exist_ok=True)
    model = folder / MODEL_FILE
    if precision == "fp32":
        write_float32_onnx(model)
    else:
        full = folder / ".model_float32.onnx"
        try:
            write_float32_onnx(full)
            smaller_onnx(full, model, precision)
        finally:
            full.unlink(missing_ok=True)
    for name in PAGE_FILES:
        shutil.copyfile(TEMPLATES / name, folder / name)
    write_install_files(folder, sidecar)
    (folder / RUNTIME_DIR).mkdir(exist_ok=True)
    for name in RUNTIME_FILES:
        shutil.copyfile(runtime / name, folder / RUNTIME_DIR / name)
    config = page_config(sidecar, precision, threshold, runtime_version(runtime))
    from pokedex_trainer.user_io.output_guard import content_sha256

    # the page asks for model.onnx?v=<hash>: a service worker keeps one copy per export
    config.update(model_sha256=content_sha256(model), model_bytes=model.stat().st_size)
    atomic_write_json(folder / CONFIG_FILE, config)
    return model
