"""export.py --formats web: the Pokedex page, checked against evaluate.py --predict.

Default set: the page's resize (preprocess.js, run in Node.js) against OpenCV's INTER_AREA on
many sizes, the format's options and its one-line errors. Slow set: a real export, served with
python -m http.server's handler, opened in headless Chromium (Debian's ``chromium`` driven by
Playwright), 20 test images through the page's own file input, answers compared with Python's.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, force_unknown_rule, train_tiny_run

WEB = ROOT / "pokedex_trainer" / "exporters" / "web"


def _node():
    node = shutil.which("node")
    if node is None:
        pytest.skip("Node.js is not installed (apt install nodejs): the page's resize is "
                    "checked with it")
    return node


def _node_resize(cases):
    """Run preprocess.js's resizeArea on each (image, width, height) in Node.js."""
    script = """
const fs = require("fs");
const source = fs.readFileSync(process.argv[1], "utf8");
const P = new Function(source + "; return PokedexPreprocess;")();
const cases = JSON.parse(fs.readFileSync(0, "utf8"));
const out = cases.map(([data, sw, sh, dw, dh]) =>
  Array.from(P.resizeArea(Uint8Array.from(data), sw, sh, dw, dh)));
process.stdout.write(JSON.stringify(out));
"""
    payload = json.dumps([[image.ravel().tolist(), image.shape[1], image.shape[0], w, h]
                          for image, w, h in cases])
    result = subprocess.run([_node(), "-e", script, str(WEB / "preprocess.js")], input=payload,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return [np.array(values, np.uint8) for values in json.loads(result.stdout)]


def test_the_page_resizes_as_the_trainer_does():
    """preprocess.js against cv2.resize(INTER_AREA), the trainer's eval resize: shrinking by
    any factor, by exact integer factors, growing, and mixed: the same bytes (OpenCV's float32
    sums and round-half-even when shrinking, its fixed-point arithmetic when growing)."""
    import cv2

    rng = np.random.default_rng(0)
    shapes = [((48, 64), (32, 32)), ((64, 64), (32, 32)), ((96, 96), (32, 32)),
              ((20, 24), (32, 32)), ((40, 31), (32, 32)), ((37, 53), (24, 16)),
              ((300, 400), (224, 224)), ((33, 33), (32, 32)), ((64, 20), (32, 32))]
    cases = []
    for (h, w), (dh, dw) in shapes:
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        image[: h // 2] = image[: h // 2] // 3 + 100  # smooth and noisy regions
        cases.append((image, dw, dh))
    results = _node_resize(cases)
    for (image, dw, dh), page in zip(cases, results):
        expected = cv2.resize(image, (dw, dh), interpolation=cv2.INTER_AREA)
        difference = np.abs(page.reshape(expected.shape).astype(int) - expected)
        assert difference.max() == 0, (image.shape, (dh, dw), (difference > 0).mean())


# stand-ins of the runtime's files, as large as the check wants (the page is not run here)
FAKE_WASM = b"\0asm\1\0\0\0" + bytes(1_000_000)
FAKE_SCRIPT = b"// a stand-in\n" * 400


def test_web_is_a_format_of_both_frameworks_and_its_runtime_is_checked_first(monkeypatch,
                                                                            tmp_path):
    from pokedex_trainer.errors import UserError
    from pokedex_trainer.exporters import web_page
    from pokedex_trainer.exporters.choices import parse_formats
    from pokedex_trainer.exporters.targets import export_file_names

    monkeypatch.setenv("POKEDEX_ORT_WEB", str(tmp_path / "nothing"))
    with pytest.raises(UserError, match=r"needs ONNX Runtime Web .* install it with: npm ci"):
        parse_formats("onnx,web", "torch")
    # among "all" (or no --formats) a missing runtime is a warning, the other formats go on
    assert "web" not in parse_formats("all", "keras")
    assert "web" not in parse_formats(None, "torch")
    runtime = tmp_path / "dist"
    runtime.mkdir()
    for name in web_page.RUNTIME_FILES:
        (runtime / name).write_bytes(FAKE_WASM if name.endswith(".wasm") else FAKE_SCRIPT)
    monkeypatch.setenv("POKEDEX_ORT_WEB", str(runtime))
    assert parse_formats("all", "keras")[-1] == "web"
    assert parse_formats("web", "torch") == ["web"]
    assert export_file_names("m_best", "torch", ["onnx", "web"], ()) == [
        "m_best.onnx", "m_best.onnx.json", "web"]
    with pytest.raises(UserError, match="--web_precision fp8"):
        web_page.check_precision("fp8")


def test_a_runtime_folder_of_links_or_other_files_is_refused(monkeypatch, tmp_path):
    """Issue 32, item 4: POKEDEX_ORT_WEB's files are copied into the page: a link would copy
    what it points to, a file that is not the runtime would make a page that never runs."""
    from pokedex_trainer.errors import UserError
    from pokedex_trainer.exporters import web_page

    secret = tmp_path / "secret.txt"
    secret.write_text("private", encoding="utf-8")
    runtime = tmp_path / "dist"
    runtime.mkdir()
    for name in web_page.RUNTIME_FILES:
        (runtime / name).write_bytes(FAKE_WASM if name.endswith(".wasm") else FAKE_SCRIPT)
    monkeypatch.setenv("POKEDEX_ORT_WEB", str(runtime))
    assert web_page.check_runtime() == runtime
    (runtime / "ort.wasm.min.js").unlink()
    (runtime / "ort.wasm.min.js").symlink_to(secret)
    with pytest.raises(UserError, match="a link"):
        web_page.check_runtime()
    (runtime / "ort.wasm.min.js").unlink()
    (runtime / "ort.wasm.min.js").write_bytes(FAKE_SCRIPT)
    (runtime / "ort-wasm-simd-threaded.wasm").write_bytes(b"<html>not found</html>")
    with pytest.raises(UserError, match="no WebAssembly module"):
        web_page.check_runtime()
    (runtime / "ort-wasm-simd-threaded.wasm").write_bytes(b"\0asm\1\0\0\0garbage")
    with pytest.raises(UserError, match="too small for the runtime"):
        web_page.check_runtime()
    (runtime / "ort-wasm-simd-threaded.wasm").write_bytes(FAKE_WASM)
    (runtime / "ort.wasm.min.js").write_bytes(b"dear diary")
    with pytest.raises(UserError, match="too small for the runtime's script"):
        web_page.check_runtime()


def test_the_page_can_be_installed_from_its_manifest_and_icons(tmp_path):
    """Issue 34, item 3: a web app manifest with icons of 192 and 512 px, linked by the page
    and kept by its service worker for offline use."""
    from PIL import Image

    from pokedex_trainer.exporters.web_page import TEMPLATES, write_install_files

    write_install_files(tmp_path, {"class_names": ["Gato", "León", "=cmd"]})
    manifest = json.loads((tmp_path / "manifest.webmanifest").read_text("utf-8"))
    assert (manifest["display"], manifest["start_url"], manifest["scope"]) == \
        ("standalone", "./index.html", "./")
    assert "3 species" in manifest["description"]
    for icon in manifest["icons"]:
        side = int(icon["sizes"].split("x")[0])
        with Image.open(tmp_path / icon["src"]) as image:
            assert (image.format, image.size) == ("PNG", (side, side))
    assert sorted(icon["sizes"] for icon in manifest["icons"]) == ["192x192", "512x512"]
    page = (TEMPLATES / "index.html").read_text("utf-8")
    assert 'rel="manifest" href="manifest.webmanifest"' in page
    worker = (TEMPLATES / "sw.js").read_text("utf-8")
    assert all(f'"{name}"' in worker for name in
               ("manifest.webmanifest", "icon-192.png", "icon-512.png"))


def test_the_page_config_comes_from_the_sidecar():
    from pokedex_trainer.exporters.web_page import page_config

    sidecar = {"class_names": ["Gato", "León"], "image_size": [32, 32],
               "input": {"layout": "NHWC", "mean": [0, 0, 0], "std": [1, 1, 1]},
               "output": {"kind": "probabilities"}, "temperature": 1.7,
               "source_model": "mobilenet_v2_best.keras"}
    config = page_config(sidecar, "fp16", 0.4, "1.31.1")
    assert config["class_names"] == ["Gato", "León"] and config["temperature"] == 1.7
    assert (config["threshold"], config["precision"], config["layout"]) == (0.4, "fp16", "NHWC")


# --- the page in a real browser (slow) --------------------------------------------------------

def _browser():
    """Chromium's path and Playwright, or a skip that says what to install."""
    chromium = os.environ.get("POKEDEX_CHROMIUM") or shutil.which("chromium") or \
        shutil.which("chromium-browser")
    missing = []
    if chromium is None:
        missing.append("Chromium (apt install chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("Playwright for Python (python -m pip install playwright)")
    from pokedex_trainer.errors import UserError
    from pokedex_trainer.exporters.web_page import check_runtime

    try:
        check_runtime()
    except UserError:
        missing.append("ONNX Runtime Web (npm ci in the project folder)")
    if missing:
        pytest.skip("the browser test needs " + ", ".join(missing))
    return chromium


def _sharpen(run: Path, factor: float = 100.0) -> None:
    """Multiply the head of a run's best model by ``factor``: a tiny model trained for seconds
    answers near 1/classes everywhere, which no probability check could tell apart; sharpened,
    its answers are decisive and move with every pixel."""
    import torch

    pth = next(run.glob("*_best.pth"), None)
    if pth is not None:
        payload = torch.load(pth, weights_only=True)
        for name in ("head.weight", "head.bias"):
            payload["state_dict"][name] = payload["state_dict"][name] * factor
        torch.save(payload, pth)
        return
    import keras

    path = next(run.glob("*_best.keras"))
    model = keras.saving.load_model(path, compile=False, safe_mode=True)
    head = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)][-1]
    head.set_weights([w * factor for w in head.get_weights()])
    model.save(path)


def _copy_of(source: Path, folder: Path, per_class: int) -> Path:
    """The first ``per_class`` images of each class of ``source``."""
    for class_dir in sorted(p for p in source.iterdir() if p.is_dir()):
        (folder / class_dir.name).mkdir(parents=True)
        for path in sorted(class_dir.glob("*.jpg"))[:per_class]:
            shutil.copyfile(path, folder / class_dir.name / path.name)
    return folder


def _test_images(dataset: Path, folder: Path) -> list[Path]:
    """20 photos of every kind the page meets: JPEG and PNG, shrunk by any or an integer
    factor, grown, transparent, grey, and turned by an EXIF orientation tag."""
    from PIL import Image

    folder.mkdir()
    sources = sorted(dataset.rglob("*.jpg"))
    kinds = ([("jpg", (64, 48), "RGB")] * 8 + [("png", (64, 64), "RGB")] * 4 +
             [("png", (50, 40), "RGBA")] * 2 + [("exif", (48, 64), "RGB")] * 2 +
             [("jpg", (24, 20), "RGB")] * 2 + [("jpg", (96, 80), "L")] * 2)
    written = []
    for index, (kind, size, mode) in enumerate(kinds):
        source = sources[index * len(sources) // len(kinds)]  # every class, in turn
        image = Image.open(source).convert("RGB").resize(size)
        if mode == "RGBA":
            image = image.convert("RGBA")
            alpha = Image.linear_gradient("L").resize(size)
            image.putalpha(alpha)
        elif mode == "L":
            image = image.convert("L")
        path = folder / f"photo_{index:02d}.{'png' if kind == 'png' else 'jpg'}"
        if kind == "exif":  # stored sideways, with the tag that turns it upright
            exif = Image.Exif()
            exif[0x0112] = 6
            image.transpose(Image.Transpose.ROTATE_90).save(path, quality=92, exif=exif)
        elif kind == "png":
            image.save(path)
        else:
            image.save(path, quality=92)
        written.append(path)
    return written


def _serve(folder: Path):
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0),
                                 functools.partial(Quiet, directory=str(folder)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.mark.slow
@pytest.mark.parametrize("model_type, precision, tolerance", [
    ("tiny_torch", "fp32", 1e-3), ("tiny_keras", "fp32", 1e-3),
    ("tiny_keras", "fp16", 1e-3), ("tiny_torch", "int8", 1e-2)])
def test_the_page_answers_as_evaluate_predict_in_chromium(tmp_path, model_type, precision,
                                                         tolerance, caplog):
    """The same model file in the page (ONNX Runtime Web, wasm) and in evaluate.py --predict
    (ONNX Runtime for Python): same top-1 and 'unknown' on all 20 photos, probabilities within
    1e-3 (int8: 1e-2, its integer kernels differ between the two builds), and the page's
    resized pixels within one level of the trainer's (decoding, EXIF, resize)."""
    chromium = _browser()
    from playwright.sync_api import sync_playwright

    from pokedex_trainer.cli.commands import export_main, run_main
    from pokedex_trainer.evaluation.app_predictions import predict_command
    from pokedex_trainer.data.augment import build_eval_transform
    from pokedex_trainer.data.images import read_image

    if os.environ.get("POKEDEX_WEB_RUN"):  # a run of yours (docs/export.md: the screenshot)
        run, data = Path(os.environ["POKEDEX_WEB_RUN"]), ROOT / "data" / "demo"
    else:
        data = _copy_of(ROOT / "data" / "demo", tmp_path / "demo", per_class=12)
        run = train_tiny_run(data, tmp_path, model_type, "--epochs", "3")
        _sharpen(run)
    assert run_main(export_main, ["--run_dir", str(run), "--formats", "web",
                                  "--web_precision", precision, "--check_images", "6",
                                  "--threshold", "0.5"]) == 0
    page_dir = run / "export" / "web"
    photos = _test_images(data, tmp_path / "photos")
    (tmp_path / "photos" / "notes.txt").write_text("not a photo")
    expected = {Path(r["image"]).name: r for r in predict_command(
        str(tmp_path / "photos"), None, str(page_dir / "model.onnx"), 3, 0.5, None)}
    assert "skipped 1 file(s) that are not .jpg/.jpeg/.png images: notes.txt" in caplog.text
    # the page's folder is what a phone is served: the list of photos goes beside it
    assert (page_dir.parent / "predictions" / "predictions.csv").is_file()
    assert not (page_dir / "predictions").exists()
    (tmp_path / "photos" / "notes.txt").unlink()
    config = json.loads((page_dir / "model.json").read_text("utf-8"))
    size = tuple(config["image_size"])
    server = _serve(page_dir)
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium,
                                                 args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 760, "height": 900})
            page.goto(f"http://127.0.0.1:{server.server_port}/index.html?debug=1")
            page.wait_for_selector("body[data-state=ready]", timeout=120_000)
            page.set_input_files("#files", [str(p) for p in photos])
            page.wait_for_selector(f"body[data-processed='{len(photos)}']", timeout=300_000)
            if os.environ.get("POKEDEX_DOCS_SCREENSHOT") == "1" and precision == "fp32":
                page.screenshot(path=str(ROOT / "docs" / "images" / "web_page.png"))
            broken = tmp_path / "broken.jpg"  # not an image: a card says so, nothing else stops
            broken.write_text("not a photo")
            page.set_input_files("#files", [str(broken)])
            page.wait_for_selector(f"body[data-processed='{len(photos) + 1}']",
                                   timeout=300_000)
            answers = page.evaluate("window.pokedexResults")
            failed = [a for a in answers if a.get("error")]
            assert [a["name"] for a in failed] == ["broken.jpg"], failed
            assert page.locator(".card.failed").count() == 1
            assert "1 could not be read" in page.inner_text("#status")
            answers = [a for a in answers if not a.get("error")]
            page.screenshot(path=str(tmp_path / "page.png"))
            browser.close()
    finally:
        server.shutdown()
    assert len(answers) == len(photos) and not [a for a in answers if a.get("error")]
    worst_pixel = worst_probability = 0.0
    for answer in answers:
        python = expected[answer["name"]]
        pixels = build_eval_transform(size)(image=read_image(tmp_path / "photos" /
                                                             answer["name"]))["image"]
        page_pixels = np.array(answer["pixels"], np.uint8).reshape(pixels.shape)
        worst_pixel = max(worst_pixel, int(np.abs(page_pixels.astype(int) - pixels).max()))
        assert answer["prediction"] == python["prediction"], answer["name"]
        assert [t["label"] for t in answer["top"]][:1] == python["top_classes"][:1]
        for top in answer["top"]:
            index = python["top_classes"].index(top["label"]) \
                if top["label"] in python["top_classes"] else None
            if index is not None:
                difference = abs(top["p"] - python["top_probabilities"][index])
                worst_probability = max(worst_probability, difference)
    assert worst_pixel <= 1, worst_pixel  # decode + EXIF + resize: within one level
    assert worst_probability <= tolerance, worst_probability
    print(f"{model_type} {precision}: pixels within {worst_pixel}, probabilities within "
          f"{worst_probability:.2g}")
    assert (tmp_path / "page.png").stat().st_size > 10_000
    confident = [a for a in answers if a["top"][0]["p"] >= 0.5]
    assert len(confident) >= 5, [a["top"][0]["p"] for a in answers]  # decisive answers


@pytest.mark.slow
@pytest.mark.parametrize("score", ["knn", "knn_contrast"])
def test_the_page_says_i_dont_know_where_python_says_unknown(score, tmp_path):
    """Issue 33: with no --threshold the page applies the sidecar's fitted rule, as evaluate.py
    --predict does: the same 20 photos, half of them noise, get the same 'unknown' verdicts
    through Python and through the page in Chromium, and the page shows "I don't know this
    one" with the guesses greyed. knn_contrast: a run trained with a folder of unknown photos,
    its rule set to that score (the page's model computes it with both banks)."""
    chromium = _browser()
    from PIL import Image
    from playwright.sync_api import sync_playwright

    from pokedex_trainer.cli.commands import evaluate_main, export_main, run_main
    from pokedex_trainer.evaluation.app_predictions import predict_command

    data = _copy_of(ROOT / "data" / "demo", tmp_path / "demo", per_class=12)
    rng = np.random.default_rng(1)
    extra = []
    if score == "knn_contrast":
        unknown = tmp_path / "unknown"
        unknown.mkdir()
        for index in range(20):
            Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(
                unknown / f"noise_{index:02d}.png")
        extra = ["--unknown_dir", str(unknown)]
    run = train_tiny_run(data, tmp_path, "tiny_torch", "--epochs", "3", *extra)
    _sharpen(run)
    assert run_main(evaluate_main, ["--run_dir", str(run), "--unknown_recall", "0.7",
                                    "--latency_runs", "1", "--latency_batch", "2"]) == 0
    rule = json.loads((run / "calibration.json").read_text("utf-8"))["unknown"]
    if score == "knn_contrast":  # the threshold that keeps 70 % of the class photos
        from pokedex_trainer.evaluation.app_predictions import predict_command as predict

        force_unknown_rule(run, score=score, threshold=-2.0)
        scores = [r["known_score"] for r in predict(str(data), str(run), None, 3, None,
                                                      str(tmp_path / "known"))]
        rule = force_unknown_rule(run, threshold=float(np.quantile(scores, 0.3)))
    assert run_main(export_main, ["--run_dir", str(run), "--formats", "web",
                                  "--check_images", "6"]) == 0
    page_dir = run / "export" / "web"
    # the run's network gives features: the rule is knn (or the forced knn_contrast),
    # computed by the model file itself
    assert rule["score"] == score
    assert json.loads((page_dir / "model.json").read_text("utf-8"))["known_score"] == \
        {"score": score, "threshold": rule["threshold"]}
    photos = tmp_path / "photos"
    photos.mkdir()
    for index, path in enumerate(sorted(data.rglob("*.jpg"))[::7][:10]):
        shutil.copyfile(path, photos / f"animal_{index:02d}.jpg")
        Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(
            photos / f"noise_{index:02d}.png")
    files = sorted(photos.iterdir())
    expected = {Path(r["image"]).name: r["prediction"] for r in predict_command(
        str(photos), None, str(page_dir / "model.onnx"), 3, None, str(tmp_path / "p"))}
    assert "unknown" in expected.values() and set(expected.values()) != {"unknown"}
    server = _serve(page_dir)
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium,
                                                 args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 760, "height": 900})
            page.goto(f"http://127.0.0.1:{server.server_port}/index.html")
            page.wait_for_selector("body[data-state=ready]", timeout=120_000)
            page.set_input_files("#files", [str(p) for p in files])
            page.wait_for_selector(f"body[data-processed='{len(files)}']", timeout=300_000)
            answers = {a["name"]: a["prediction"] for a in page.evaluate("window.pokedexResults")}
            shown = page.locator(".card.not-known .answer").all_inner_texts()
            browser.close()
    finally:
        server.shutdown()
    assert answers == expected
    assert shown and set(shown) == {"I don't know this one"}
    assert len(shown) == list(expected.values()).count("unknown")


def _exported_page(tmp_path) -> tuple[Path, Path]:
    """A tiny Keras run's web page and the demo photos it was trained on."""
    from pokedex_trainer.cli.commands import export_main, run_main

    data = _copy_of(ROOT / "data" / "demo", tmp_path / "demo", per_class=12)
    run = train_tiny_run(data, tmp_path, "tiny_keras", "--epochs", "2")
    assert run_main(export_main, ["--run_dir", str(run), "--formats", "web",
                                  "--check_images", "6"]) == 0
    return run / "export" / "web", data


def _no_overflow(page) -> bool:
    return page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")


@pytest.mark.slow
def test_the_page_fits_phones_is_accessible_and_works_by_keyboard(tmp_path):
    """Issue 34, items 1, 2 and 7: no sideways scrolling from 320 to 1440 px and at 200 % text
    with answers on screen; axe-core finds no serious or critical violation; Tab reaches
    "Choose photos" and Enter opens the picker; the same photo can be chosen twice; the status
    is red after a bad file and recovers with the next good one."""
    chromium = _browser()
    from playwright.sync_api import sync_playwright

    page_dir, data = _exported_page(tmp_path)
    photos = sorted(data.rglob("*.jpg"))[:2]
    long_name = tmp_path / ("a_very_long_photo_name_from_a_phone_camera_" + "7" * 40 + ".jpg")
    shutil.copyfile(photos[0], long_name)
    broken = tmp_path / "broken.jpg"
    broken.write_text("not a photo")
    axe = ROOT / "node_modules" / "axe-core" / "axe.min.js"
    if not axe.is_file():
        pytest.skip("axe-core is not installed (npm ci)")
    server = _serve(page_dir)
    url = f"http://127.0.0.1:{server.server_port}/index.html"
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium,
                                                 args=["--no-sandbox"])
            for width, height, big_text in [(320, 640, False), (320, 640, True),
                                            (390, 844, False), (390, 844, True),
                                            (768, 1024, False), (1440, 900, False)]:
                page = browser.new_page(viewport={"width": width, "height": height},
                                        device_scale_factor=3 if width == 390 else 1,
                                        has_touch=width < 500)
                page.goto(url)
                page.wait_for_selector("body[data-state=ready]", timeout=120_000)
                if big_text:
                    page.add_style_tag(content="html { font-size: 200% }")
                page.set_input_files("#files", [str(p) for p in (*photos, long_name)])
                page.wait_for_selector("body[data-processed='3']", timeout=120_000)
                assert _no_overflow(page), (width, big_text)
                if width == 390 and not big_text:
                    if os.environ.get("POKEDEX_DOCS_SCREENSHOT") == "1":
                        page.screenshot(path=str(ROOT / "docs" / "images" /
                                                 "web_page_phone.png"))
                    page.add_script_tag(path=str(axe))
                    serious = page.evaluate(
                        "axe.run().then(r => r.violations.filter(v => "
                        "['serious', 'critical'].includes(v.impact)).map(v => v.id))")
                    assert serious == []
                    assert "Gato" in page.inner_text("#announce") or \
                        page.inner_text("#announce")
                page.close()
            page = browser.new_page(viewport={"width": 390, "height": 844})
            # intercepting file choosers is switched on by the first listener: before the page
            # loads, so the Enter below cannot come before it
            page.on("filechooser", lambda chooser: None)
            page.goto(url)
            page.wait_for_selector("body[data-state=ready]", timeout=120_000)
            page.keyboard.press("Tab")
            assert page.evaluate("document.activeElement.id") == "choose"
            with page.expect_file_chooser() as chooser:
                page.keyboard.press("Enter")
            chooser.value.set_files([str(photos[0])])
            page.wait_for_selector("body[data-processed='1']", timeout=120_000)
            page.set_input_files("#files", [str(photos[0])])  # the same photo again
            page.wait_for_selector("body[data-processed='2']", timeout=120_000)
            page.set_input_files("#files", [str(broken)])
            page.wait_for_selector("body[data-processed='3']", timeout=120_000)
            assert page.get_attribute("#status", "class") == "error"
            assert "cannot read this file as a photo" in page.inner_text(".card.failed")
            page.set_input_files("#files", [str(photos[1])])
            page.wait_for_selector("body[data-processed='4']", timeout=120_000)
            assert page.get_attribute("#status", "class") != "error"
            assert "svg" not in page.get_attribute("#files", "accept")
            # ?backend=webgpu where there is none: WebAssembly, and the footer says so
            page = browser.new_page(viewport={"width": 390, "height": 844})
            page.goto(url + "?backend=webgpu&threads=-1")
            page.wait_for_selector("body[data-state=ready]", timeout=120_000)
            assert page.get_attribute("body", "data-backend") == "wasm"
            assert "(WebGPU is not available here: WebAssembly, 1 thread)" in \
                page.inner_text("#about")
            # a camera refused: live mode says so and points to stills
            page = browser.new_page(viewport={"width": 390, "height": 844})
            page.add_init_script("navigator.mediaDevices.getUserMedia = () => Promise.reject("
                                 "new DOMException('denied', 'NotAllowedError'));")
            page.goto(url)
            page.wait_for_selector("body[data-state=ready]", timeout=120_000)
            page.click("#live")
            page.wait_for_selector("body[data-live=refused]", timeout=60_000)
            assert "the camera was refused" in page.inner_text("#status")
            assert "Take a photo instead" in page.inner_text("#status")
            assert page.is_hidden("#live_panel")
            browser.close()
    finally:
        server.shutdown()


@pytest.mark.slow
def test_a_broken_model_is_shown_and_later_photos_say_so(tmp_path):
    """Issue 34, item 7: a damaged model.onnx is a message a user can act on, it stays, and a
    photo chosen afterwards gets a card saying it was not answered (not an endless wait)."""
    chromium = _browser()
    from playwright.sync_api import sync_playwright

    page_dir, data = _exported_page(tmp_path)
    (page_dir / "model.onnx").write_bytes(b"not a model")
    server = _serve(page_dir)
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium,
                                                 args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 390, "height": 844})
            page.goto(f"http://127.0.0.1:{server.server_port}/index.html")
            page.wait_for_selector("body[data-state=error]", timeout=120_000)
            status = page.inner_text("#status")
            assert "model.onnx" in status and "export the page again" in status
            page.set_input_files("#files", [str(next(data.rglob("*.jpg")))])
            page.wait_for_selector("body[data-processed='1']", timeout=60_000)
            assert "not answered: the model is not loaded" in page.inner_text(".card.failed")
            assert page.inner_text("#status") == status
            browser.close()
    finally:
        server.shutdown()


@pytest.mark.slow
def test_the_model_is_fetched_once_per_export_and_works_offline(tmp_path):
    """Issue 34, items 4 and 3 (offline part): on 127.0.0.1 (a secure context) model.onnx is
    fetched once across the first visit and two reloads; offline, the page (also with a query
    string) reloads and still answers a photo; the slider keeps the user's value."""
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    chromium = _browser()
    from playwright.sync_api import sync_playwright

    page_dir, data = _exported_page(tmp_path)
    asked = []

    class Counting(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            asked.append(self.path.split("?")[0])
            super().do_GET()

    server = ThreadingHTTPServer(("127.0.0.1", 0),
                                 functools.partial(Counting, directory=str(page_dir)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/index.html"
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium,
                                                 args=["--no-sandbox"])
            context = browser.new_context(viewport={"width": 390, "height": 844})
            page = context.new_page()
            page.goto(url)
            page.wait_for_selector("body[data-state=ready]", timeout=120_000)
            page.wait_for_function("navigator.serviceWorker.getRegistration()"
                                   ".then(r => !!(r && r.active))", timeout=60_000)
            for _ in range(2):
                page.reload()
                page.wait_for_selector("body[data-state=ready]", timeout=120_000)
            assert asked.count("/model.onnx") == 1, asked
            page.wait_for_function("navigator.serviceWorker.getRegistration()"
                                   ".then(r => !!(r && r.active))", timeout=60_000)
            page.wait_for_function("navigator.serviceWorker.controller !== null",
                                   timeout=60_000)
            context.set_offline(True)
            page.goto(url + "?from=home_screen")
            page.wait_for_selector("body[data-state=ready]", timeout=120_000)
            page.evaluate(
                "(() => { const s = document.getElementById('threshold'); s.value = '0.9';"
                " s.dispatchEvent(new Event('input')); })()")
            page.set_input_files("#files", [str(next(data.rglob("*.jpg")))])
            page.wait_for_selector("body[data-processed='1']", timeout=120_000)
            assert page.locator("#results .card").count() == 1
            assert page.locator(".card.failed").count() == 0
            assert page.input_value("#threshold") == "0.9"
            browser.close()
    finally:
        server.shutdown()


def test_the_serve_certificate_is_made_once_and_covers_the_address(tmp_path, capsys):
    """export.py --serve's certificate: made with cryptography for localhost, 127.0.0.1 and the
    given address, kept while it covers them, made again for a new address; a folder without
    a page is one line."""
    from cryptography import x509

    from pokedex_trainer.cli.commands import export_main, run_main
    from pokedex_trainer.exporters.serve_page import certificate
    from test_hostile import _one_line_error

    cert, key = certificate(tmp_path, "192.168.1.20")
    names = x509.load_pem_x509_certificate(cert.read_bytes()).extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value
    assert {str(ip) for ip in names.get_values_for_type(x509.IPAddress)} == {
        "127.0.0.1", "192.168.1.20"}
    assert names.get_values_for_type(x509.DNSName) == ["localhost"]
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    first = cert.read_bytes()
    assert certificate(tmp_path, "192.168.1.20")[0].read_bytes() == first  # kept
    assert certificate(tmp_path, "10.0.0.7")[0].read_bytes() != first  # a new address
    assert run_main(export_main, ["--serve", str(tmp_path)]) == 2
    assert "holds no exported web page" in _one_line_error(capsys)


def test_a_serve_that_cannot_start_says_why_and_keeps_the_certificate(tmp_path):
    """Found by a probe: an address this computer lacks is one line that names --bind, and
    leaves the kept certificate alone (the phone accepted that one); a certificate folder that
    cannot be made names POKEDEX_SERVE_DIR."""
    from pokedex_trainer.errors import UserError
    from pokedex_trainer.exporters.serve_page import certificate, make_server

    kept = tmp_path / "certs"
    first = certificate(kept, "192.168.1.20")[0].read_bytes()
    with pytest.raises(UserError, match=r"cannot listen on 10\.255\.255\.1:0 .*is --bind an "
                                        r"address of this computer"):
        make_server(tmp_path, "10.255.255.1", 0, cert_folder=kept)
    assert (kept / "cert.pem").read_bytes() == first
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(UserError, match="cannot keep the page's certificate in .*"
                                        "POKEDEX_SERVE_DIR sets another folder"):
        make_server(tmp_path, "127.0.0.1", 0, cert_folder=blocker / "certs")


@pytest.mark.slow
def test_served_over_https_the_page_is_isolated_and_works_offline(tmp_path, monkeypatch,
                                                                  capsys):
    """Issue 34, item 3: export.py --serve on 127.0.0.1 over HTTPS with its own certificate:
    cross-origin isolated (threads), loads, answers; offline, it reloads and answers again."""
    import threading

    chromium = _browser()
    from playwright.sync_api import sync_playwright

    from pokedex_trainer.exporters import serve_page

    monkeypatch.setenv("POKEDEX_SERVE_DIR", str(tmp_path / "certs"))
    page_dir, data = _exported_page(tmp_path)
    ready = threading.Event()
    thread = threading.Thread(target=serve_page.serve_command,
                              args=(str(page_dir.parent.parent), "127.0.0.1", 0, ready),
                              daemon=True)
    thread.start()
    assert ready.wait(60)
    printed = capsys.readouterr().out  # 127.0.0.1: for this computer, no QR code for a phone
    assert "Open it in a browser on this computer" in printed and "Wi-Fi (scan" not in printed
    photo = str(next(data.rglob("*.jpg")))
    try:
        with sync_playwright() as playwright:
            # as a phone that accepted the certificate: Chromium runs service workers only for
            # a certificate it trusts, which this flag stands in for
            # a fake camera (Chromium's moving test picture), allowed without asking
            browser = playwright.chromium.launch(executable_path=chromium,
                                                 args=["--no-sandbox",
                                                       "--ignore-certificate-errors",
                                                       "--use-fake-device-for-media-stream",
                                                       "--use-fake-ui-for-media-stream",
                                                       # WebGPU on SwiftShader's (software)
                                                       # adapter: asked for by ?backend=webgpu
                                                       "--enable-unsafe-webgpu",
                                                       "--enable-features=Vulkan",
                                                       "--use-webgpu-adapter=swiftshader",
                                                       "--enable-unsafe-swiftshader"])
            context = browser.new_context(ignore_https_errors=True,
                                          viewport={"width": 390, "height": 844},
                                          device_scale_factor=2, has_touch=True)
            page = context.new_page()
            response = page.goto(ready.url + "index.html")
            assert response.headers["cross-origin-opener-policy"] == "same-origin"
            page.wait_for_selector("body[data-state=ready]", timeout=120_000)
            assert page.evaluate("self.crossOriginIsolated") is True
            # the only WebGPU adapter here is a software one: WebAssembly (threads) is chosen,
            # and the footer says which runs
            assert page.get_attribute("body", "data-backend") == "wasm"
            assert "(WebAssembly, " in page.inner_text("#about")
            # item 6: the WebGPU build, asked for, loads and gives WebAssembly's answers
            gpu = context.new_page()
            gpu.goto(ready.url + "index.html?backend=webgpu")
            gpu.wait_for_selector("body[data-state=ready]", timeout=120_000)
            assert gpu.get_attribute("body", "data-backend") == "webgpu"
            assert "(WebGPU)" in gpu.inner_text("#about")
            for tab in (gpu, page):
                tab.set_input_files("#files", [photo])
            for tab in (gpu, page):
                tab.wait_for_selector("body[data-processed='1']", timeout=120_000)
            on_gpu, on_cpu = (np.array(tab.evaluate("pokedexResults[0].probabilities"))
                              for tab in (gpu, page))
            assert np.abs(on_gpu - on_cpu).max() < 1e-4
            gpu.close()
            page.reload()
            page.wait_for_selector("body[data-state=ready]", timeout=120_000)
            assert "works offline once loaded" in page.inner_text("#about")
            page.set_input_files("#files", [photo])
            page.wait_for_selector("body[data-processed='1']", timeout=120_000)
            page.wait_for_function("navigator.serviceWorker.getRegistration()"
                                   ".then(r => !!(r && r.active))", timeout=60_000)
            # item 3: installable ("Add to Home Screen"): Chromium's own check of the
            # manifest, its icons and the service worker
            cdp = context.new_cdp_session(page)
            manifest = cdp.send("Page.getAppManifest")
            assert manifest["errors"] == [] and manifest["url"].endswith("manifest.webmanifest")
            errors = cdp.send("Page.getInstallabilityErrors")["installabilityErrors"]
            # Playwright's contexts are incognito, which alone keeps Chromium from installing
            assert [e["errorId"] for e in errors if e["errorId"] != "in-incognito"] == []
            # item 5: live camera, several answers, top 3, paused while the tab is hidden
            page.click("#live")
            page.wait_for_selector("body[data-live=on]", timeout=60_000)
            page.wait_for_function("Number(document.body.dataset.liveFrames) >= 3",
                                   timeout=120_000)
            assert page.get_attribute("#live", "aria-pressed") == "true"
            assert page.locator("#live_bars .bar").count() == 3  # the top 3 of 6 classes
            names = sorted(p.name for p in data.iterdir())
            assert page.inner_text("#live_answer") in [*names, "I don't know this one"]
            assert page.evaluate("pokedexLive.last.top.map(t => t.label)")[0] in names
            if os.environ.get("POKEDEX_DOCS_SCREENSHOT") == "1":
                page.screenshot(path=str(ROOT / "docs" / "images" / "web_page_live.png"))
            page.evaluate("""() => {
                Object.defineProperty(document, 'visibilityState',
                                      {value: 'hidden', configurable: true});
                document.dispatchEvent(new Event('visibilitychange')); }""")
            assert page.get_attribute("body", "data-live") == "paused"
            frames = page.evaluate("pokedexLive.frames")
            assert page.evaluate("pokedexLive.stream") is None  # the camera is let go
            page.evaluate("""() => {
                Object.defineProperty(document, 'visibilityState',
                                      {value: 'visible', configurable: true});
                document.dispatchEvent(new Event('visibilitychange')); }""")
            page.wait_for_function(f"pokedexLive.frames > {frames}", timeout=120_000)
            page.click("#live")
            assert page.get_attribute("body", "data-live") == "off"
            assert page.is_hidden("#live_panel")
            assert "Live camera stopped" in page.inner_text("#status")
            # found by a probe: two presses at once start and stop; no camera is left on
            page.evaluate("() => { const b = document.getElementById('live'); b.click(); "
                          "b.click(); }")
            assert page.get_attribute("body", "data-live") == "off"
            page.wait_for_function("pokedexLive.stream === null && "
                                   "document.getElementById('video').srcObject === null",
                                   timeout=30_000)
            page.evaluate("() => navigator.mediaDevices.getUserMedia({video: true})"
                          ".then(s => { window.__probe = s; })")  # the camera is free again
            page.wait_for_function("!!window.__probe", timeout=30_000)
            page.evaluate("__probe.getTracks().forEach(t => t.stop())")
            page.reload()
            page.wait_for_selector("body[data-state=ready]", timeout=120_000)
            context.set_offline(True)
            page.reload()
            page.wait_for_selector("body[data-state=ready]", timeout=120_000)
            page.set_input_files("#files", [photo])
            page.wait_for_selector("body[data-processed='1']", timeout=120_000)
            assert page.locator(".card.failed").count() == 0
            browser.close()
    finally:
        ready.server.shutdown()
