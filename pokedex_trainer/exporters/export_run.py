"""Export a trained model to the formats its framework can produce, and prove each file right.

Every file is checked before it is reported as written: the same images go through the source
model and through the exported file in its own runtime, read the way an app reads it (the
sidecar JSON says how to feed it). A file outside its precision's tolerance is deleted and the
export ends with exit code 1; the figures of every file go to ``exports.json``.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from pokedex_trainer import __version__
from pokedex_trainer.errors import UserError
from pokedex_trainer.evaluation.predict import (
    ModelInfo,
    Predictor,
    load_predictor,
    measure_latency,
    sidecar_path,
)
from pokedex_trainer.runs.finished import LabelledImages
from pokedex_trainer.runs.records import atomic_write_json
from pokedex_trainer.user_io.output_guard import record_outputs
from pokedex_trainer.evaluation.safe_loading import file_sha256, is_code_bearing, remember_written
from pokedex_trainer.exporters.keras_formats import TFLITE_PRECISIONS
from pokedex_trainer.exporters.targets import export_folder

logger = logging.getLogger(__name__)

FORMATS = {
    "keras": ("tflite", "onnx", "savedmodel", "web"),
    "torch": ("torchscript", "torch_export", "onnx", "web"),
}
DEFAULT_OPSET = 18


@dataclass(frozen=True)
class Tolerance:
    """How far an exported file may stray from its source model.

    Args:
        max_abs_diff: largest allowed |p_export - p_source| over all images and classes.
        min_agreement: smallest allowed share of images with the same top-1 class, counted over
            the images whose top-2 margin in the source is wider than 2 x max_abs_diff (on the
            others, a flip is within the precision's noise).
    """

    max_abs_diff: float
    min_agreement: float


TOLERANCES = {
    "float32": Tolerance(1e-4, 1.0),
    "float16": Tolerance(1e-2, 0.99),
    "dynamic_int8": Tolerance(0.10, 0.95),
    "int8": Tolerance(0.25, 0.90),
}


@dataclass
class ExportResult:
    """One exported file and its parity figures (``passed`` False: it was deleted)."""

    file: str
    format: str
    precision: str
    runtime: str = ""
    size_mb: float = 0.0
    images: int = 0
    max_abs_diff: float = float("nan")
    mean_abs_diff: float = float("nan")
    top1_agreement: float = float("nan")
    decisive_agreement: float = float("nan")
    accuracy: float = float("nan")
    source_accuracy: float = float("nan")
    latency_ms: float = float("nan")
    tolerance: dict | None = None
    passed: bool = False
    reason: str = ""


def parse_formats(text: str | None, framework: str) -> list[str]:
    """``"tflite,onnx"`` -> ['tflite', 'onnx']; None or 'all' -> every format of ``framework``.

    Raises UserError naming the formats that exist for the framework.
    """
    from pokedex_trainer.exporters import web_page

    available = FORMATS[framework]
    if text is None or text.strip().lower() in ("", "all"):
        try:
            web_page.check_runtime()
        except UserError as exc:  # asked for by name it is an error; among "all", a warning
            logger.warning("web page skipped: %s", str(exc).split("; ", 1)[-1])
            return [name for name in available if name != "web"]
        return list(available)
    wanted = [part.strip().lower() for part in text.split(",") if part.strip()]
    if "web" in wanted:
        web_page.check_runtime()
    if framework == "torch" and "tflite" in wanted:  # on request only: litert-torch is optional
        from pokedex_trainer.exporters.torch_tflite import checked_format
        available = available + checked_format(available)
    wrong = [name for name in wanted if name not in available]
    if wrong:
        kind = "Keras" if framework == "keras" else "PyTorch"
        raise UserError(f"{', '.join(wrong)} cannot be exported from a {kind} model; the "
                        f"formats for it are: {', '.join(available)}")
    return list(dict.fromkeys(wanted))


def compare(reference: np.ndarray, exported: np.ndarray, labels: np.ndarray,
            tolerance: Tolerance) -> dict:
    """Parity figures of exported probabilities against the source's on the same images."""
    diff = np.abs(exported - reference)
    top_ref, top_exp = reference.argmax(1), exported.argmax(1)
    ordered = np.sort(reference, axis=1)
    margin = ordered[:, -1] - ordered[:, -2] if reference.shape[1] > 1 else np.ones(len(reference))
    decisive = margin > 2 * tolerance.max_abs_diff
    agree = top_ref == top_exp
    return {
        "images": int(len(labels)),
        "max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()),
        "top1_agreement": float(agree.mean()),
        "decisive_agreement": float(agree[decisive].mean()) if decisive.any() else 1.0,
        "accuracy": float((top_exp == labels).mean()),
        "source_accuracy": float((top_ref == labels).mean()),
    }


def verdict(figures: dict, tolerance: Tolerance) -> tuple[bool, str]:
    """(passed, why not) of parity ``figures`` against ``tolerance``."""
    problems = []
    if not figures["max_abs_diff"] <= tolerance.max_abs_diff:
        problems.append(f"max |Δp| {figures['max_abs_diff']:.3g} > {tolerance.max_abs_diff:g} "
                        f"(by {figures['max_abs_diff'] - tolerance.max_abs_diff:.3g})")
    if not figures["decisive_agreement"] >= tolerance.min_agreement:
        problems.append(f"top-1 agreement {figures['decisive_agreement']:.3f} < "
                        f"{tolerance.min_agreement:g}")
    return not problems, "; ".join(problems)


def predict_all(predictor: Predictor, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
    return np.concatenate([predictor.predict(images[i:i + batch_size])
                           for i in range(0, len(images), batch_size)])


def verify_file(path: Path, fmt: str, precision: str, reference: np.ndarray,
                images: np.ndarray, labels: np.ndarray) -> ExportResult:
    """Load ``path`` with its sidecar in its own runtime and compare with ``reference``."""
    tolerance = TOLERANCES[precision]
    result = ExportResult(Path(path).name, fmt, precision, tolerance=asdict(tolerance))
    try:
        predictor = load_predictor(path, trust=True)  # written by this process just now
        exported = predict_all(predictor, images)
    except Exception as exc:  # a file its runtime cannot run is a failed export
        result.reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        return result
    figures = compare(reference, exported, labels, tolerance)
    for key, value in figures.items():
        setattr(result, key, value)
    result.runtime = predictor.runtime
    result.size_mb = _size_mb(Path(path))
    result.latency_ms = measure_latency(predictor, images[0], warmup=2, runs=10)["median_ms"]
    result.passed, result.reason = verdict(figures, tolerance)
    return result


def _size_mb(path: Path) -> float:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20
    return path.stat().st_size / 2**20


@dataclass
class ExportJob:
    """What to export and what to check it on.

    Args:
        source: the trained model (``.keras``/``.h5``/``.pth``).
        formats: formats to write (see FORMATS).
        output_dir: where the files go.
        check: the images of the parity check (validation images of the run).
        calibration: training images for full-int8 calibration.
        opset: ONNX opset.
        tflite_precisions: which TFLite precisions to write.
        temperature: the run's calibration temperature, recorded in the sidecars.
    """

    source: Path
    formats: list[str]
    output_dir: Path
    check: LabelledImages
    calibration: LabelledImages | None = None
    opset: int = DEFAULT_OPSET
    tflite_precisions: tuple[str, ...] = TFLITE_PRECISIONS
    temperature: float | None = None
    web_precision: str = "fp32"
    threshold: float | None = None


def run_export(job: ExportJob) -> list[ExportResult]:
    """Write and verify every file of ``job``; failed files are deleted, never reported good."""
    source = load_predictor(job.source)
    if source.runtime not in ("keras", "pytorch"):
        raise UserError(f"'{job.source}' is already an exported file; export from the trained "
                        "model (*_best.keras or *_best.pth)")
    if source.info.class_names != job.check.class_names:
        raise UserError(f"the check images' classes do not match the classes of '{job.source}'")
    job.output_dir.mkdir(parents=True, exist_ok=True)
    images, labels = job.check.load_all(source.info.image_size)
    reference = predict_all(source, images)
    logger.info("checking exports on %d images (%s)", len(images), job.check.description)
    writers = _keras_writers(job, source) if source.runtime == "keras" else \
        _torch_writers(job, source)
    results = []
    for fmt, precision, path, write in writers:
        started = time.perf_counter()
        logger.info("exporting %s (%s) ...", path.name, precision)
        try:
            write(path, _sidecar(source.info, job, fmt, precision))
        except UserError:
            raise
        except Exception as exc:  # converters fail in many ways; the others still run
            if fmt == "web":
                _remove(path.parent)
            results.append(ExportResult(path.name, fmt, precision, reason=f"conversion failed: "
                                        f"{type(exc).__name__}: {str(exc).splitlines()[0]}"))
            logger.error("%s: conversion failed: %s", path.name, exc)
            continue
        result = verify_file(path, fmt, precision, reference, images, labels)
        result.file = path.relative_to(job.output_dir).as_posix()  # web/model.onnx
        logger.info("%s: %s in %.1f s", result.file, "verified" if result.passed else "FAILED",
                    time.perf_counter() - started)
        if not result.passed:
            _remove(path.parent if fmt == "web" else path)
        results.append(result)
    return results


def _sidecar(info: ModelInfo, job: ExportJob, fmt: str, precision: str) -> dict:
    extra = {"format": fmt, "precision": precision, "source_model": job.source.name,
             "created": time.strftime("%Y-%m-%d %H:%M:%S"), "pokedex_trainer": __version__}
    if job.temperature is not None:
        extra["temperature"] = job.temperature
        extra["temperature_note"] = ("calibrated probabilities: softmax(log(p) / temperature); "
                                     "the model's own output is uncalibrated")
    return info.to_sidecar(**extra)


def _write_with_sidecar(writer):
    def write(path: Path, sidecar: dict):
        writer(path, sidecar)
        atomic_write_json(sidecar_path(path), sidecar)
    return write


def _keras_writers(job: ExportJob, source: Predictor):
    from pokedex_trainer.exporters import keras_formats

    model, stem = source.model, job.source.stem
    out = job.output_dir
    state = {"saved_model": None}

    def saved_model_path() -> Path:
        if state["saved_model"] is None:
            if "savedmodel" in job.formats:
                target = out / f"{stem}_saved_model"
            else:
                target = Path(tempfile.mkdtemp(prefix="pokedex_saved_model_")) / "model"
            state["saved_model"] = keras_formats.write_saved_model(model, target)
        return state["saved_model"]

    def calibration():
        if job.calibration is None:
            raise ValueError("full int8 needs calibration images")
        for images, _ in job.calibration.load(source.info.image_size,
                                              progress="int8 calibration"):
            yield images

    writers = []
    if "savedmodel" in job.formats:
        writers.append(("savedmodel", "float32", out / f"{stem}_saved_model",
                        _write_with_sidecar(lambda path, sc: saved_model_path())))
    if "onnx" in job.formats:
        writers.append(("onnx", "float32", out / f"{stem}.onnx", _write_with_sidecar(
            lambda path, sc: keras_formats.write_onnx(saved_model_path(), path, job.opset,
                                                      sc))))
    if "web" in job.formats:
        writers.append(_web_writer(job, lambda path, sc: keras_formats.write_onnx(
            saved_model_path(), path, job.opset, sc)))
    if "tflite" in job.formats:
        for precision in job.tflite_precisions:
            writers.append(("tflite", precision, out / f"{stem}_{precision}.tflite",
                            _write_with_sidecar(
                                lambda path, sc, p=precision: keras_formats.write_tflite(
                                    saved_model_path(), path, p, sc, calibration))))
    yield from writers
    if state["saved_model"] is not None and "savedmodel" not in job.formats:
        shutil.rmtree(state["saved_model"].parent, ignore_errors=True)


def _torch_writers(job: ExportJob, source: Predictor):
    from pokedex_trainer.exporters import torch_formats, torch_tflite

    model, size, stem = source.model, source.info.image_size, job.source.stem
    out = job.output_dir
    table = {
        "torchscript": (out / f"{stem}.pt", lambda path, sc: torch_formats.write_torchscript(
            model, size, path, sc)),
        "torch_export": (out / f"{stem}.pt2", lambda path, sc: torch_formats.write_torch_export(
            model, size, path, sc)),
        "onnx": (out / f"{stem}.onnx", lambda path, sc: torch_formats.write_onnx(
            model, size, path, job.opset, sc)),
        "tflite": (out / f"{stem}_float32.tflite", lambda path, sc: torch_tflite.write_tflite(
            model, size, path, sc)),
    }
    for fmt in job.formats:
        if fmt == "web":
            yield _web_writer(job, table["onnx"][1])
            continue
        path, writer = table[fmt]
        yield fmt, "float32", path, _write_with_sidecar(writer)


def _web_writer(job: ExportJob, write_onnx):
    """The web page (web_page.py): its model is ``write_onnx``'s float32 ONNX, or the fp16 /
    int8 variant, checked like any file (against the precision's tolerance)."""
    from pokedex_trainer.exporters import web_page

    precision = web_page.WEB_PRECISIONS[job.web_precision]
    path = job.output_dir / web_page.WEB_DIR / web_page.MODEL_FILE

    def write(path: Path, sidecar: dict):
        sidecar = {**sidecar, "precision": precision, "web_precision": job.web_precision}
        web_page.write_page(path.parent, lambda target: write_onnx(target, sidecar), sidecar,
                            job.web_precision, job.threshold)
        atomic_write_json(sidecar_path(path), sidecar)

    return "web", precision, path, write


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
    sidecar_path(path).unlink(missing_ok=True)


def record_results(results: list[ExportResult], json_path: Path, job: ExportJob) -> None:
    """Merge ``results`` into ``exports.json`` (one entry per file name, newest wins)."""
    previous = {}
    if json_path.is_file():
        try:
            previous = {e["file"]: e for e in json.loads(json_path.read_text("utf-8"))["files"]}
        except (ValueError, KeyError, TypeError):
            previous = {}
    for result in results:
        entry = asdict(result)
        entry["path"] = str(job.output_dir / result.file)
        written = job.output_dir / result.file
        if result.passed and written.exists():
            # code-bearing formats open later only with this record (see evaluation/safe_loading.py)
            entry["sha256"] = remember_written(written) if is_code_bearing(written) else \
                file_sha256(written)
        entry["checked_on"] = job.check.description
        entry["date"] = time.strftime("%Y-%m-%d %H:%M:%S")
        previous[result.file] = entry
    atomic_write_json(json_path, {"source_model": str(job.source),
                                  "files": list(previous.values())})


def results_table(results: list[ExportResult]) -> str:
    header = (f"{'file':<40} {'runtime':<13} {'MB':>7} {'max|Δp|':>9} {'top-1':>6} "
              f"{'acc':>6} {'src acc':>7} {'ms/img':>7}  result")
    lines = [header, "-" * len(header)]
    for r in results:
        lines.append(f"{r.file:<40} {r.runtime or '-':<13} {r.size_mb:>7.2f} "
                     f"{r.max_abs_diff:>9.2g} {r.top1_agreement:>6.3f} {r.accuracy:>6.3f} "
                     f"{r.source_accuracy:>7.3f} {r.latency_ms:>7.2f}  "
                     f"{'ok' if r.passed else 'FAILED: ' + r.reason}")
    return "\n".join(lines)


def resolve_source(run_dir: str | None, model: str | None) -> tuple[Path, Path | None]:
    """(model file, its run directory or None) from ``--run_dir`` or ``--model``."""
    from pokedex_trainer.runs.finished import model_and_run

    if bool(run_dir) == bool(model):
        raise UserError("give either --run_dir RUN_DIR or --model FILE")
    return model_and_run(run_dir, model)


def export_images(run_dir: Path | None, data_path: str | None, class_names: list[str],
                  check_images: int, calibration_images: int):
    """(check images, calibration images): the run's validation and training splits, or a
    labelled folder (``--data_path``) for a model outside a run directory."""
    from pokedex_trainer.runs.finished import folder_images, run_split

    if data_path:
        images = folder_images(Path(data_path), class_names)
        return images.subset(check_images, seed=1), images.subset(calibration_images, seed=2)
    if run_dir is None:
        raise UserError("the parity check needs labelled images: this model is not inside a run "
                        "directory, so pass --data_path DIR (one sub-folder per class)")
    check = run_split(run_dir, "val")
    if not check.samples:
        check = run_split(run_dir, "test")
    return check.subset(check_images, seed=1), \
        run_split(run_dir, "train").subset(calibration_images, seed=2)


def framework_of_source(path: Path) -> str:
    from pokedex_trainer.evaluation.predict import framework_of

    if path.is_dir():  # a SavedModel runs its graph when loaded: refuse before loading anything
        raise UserError(f"'{path}' is a folder, not a trained model of this tool (*.keras, *.h5 "
                        "or *.pth); exported files are not exported again")
    framework = framework_of(path)
    if framework not in FORMATS or path.suffix.lower() not in (".keras", ".h5", ".pth"):
        raise UserError(f"'{path}' is not a trained model of this tool (*.keras, *.h5 or *.pth); "
                        "exported files are not exported again")
    return framework


def export_command(run_dir: str | None = None, model: str | None = None,
                   formats: str | None = None, output_dir: str | None = None,
                   data_path: str | None = None, check_images: int = 100,
                   calibration_images: int = 200, opset: int = DEFAULT_OPSET,
                   tflite_precisions: str | None = None,
                   calibration_file: str | None = None, web_precision: str | None = None,
                   threshold: float | None = None) -> list[ExportResult]:
    """export.py and ``--export`` on the trainer: write, verify, record, print.

    With ``output_dir`` the run directory is only read: the files and exports.json go there.
    ``calibration_file``: the calibration.json whose temperature the sidecars carry (default: the
    run's).

    Raises UserError on bad input and ExportCheckFailed when any file failed its check.
    """
    from pokedex_trainer.errors import ExportCheckFailed
    from pokedex_trainer.evaluation.predict import class_names_near, import_frameworks

    source, run = resolve_source(run_dir, model)
    framework = framework_of_source(source)
    wanted = parse_formats(formats, framework)
    precisions = _parse_precisions(tflite_precisions)
    from pokedex_trainer.exporters.web_page import check_precision

    web_precision = check_precision(web_precision)
    if threshold is not None and not 0 <= threshold <= 1:
        raise UserError("--threshold is a probability between 0 and 1")
    if "web" not in wanted and (web_precision != "fp32" or threshold is not None):
        logger.warning("--web_precision and --threshold are for the web page, which this "
                       "export does not write (--formats web): ignored")
    out, record, written = export_folder(output_dir, run, source, framework, wanted,
                                         precisions, opset)  # may refuse: before any work
    if framework == "keras":
        from pokedex_trainer.backends.keras.select import activate

        activate("tensorflow")  # the converters are TensorFlow's, whatever backend trained it
    import_frameworks({framework})
    names = class_names_near(source)
    if names is None and framework == "torch":
        names = load_predictor(source).info.class_names
    if names is None:
        raise UserError(f"no class list for '{source}': expected class_names.json beside it")
    check, calibration = export_images(run, data_path, names, check_images, calibration_images)
    job = ExportJob(source, wanted, out, check, calibration, opset, precisions,
                    _temperature(run, calibration_file), web_precision, threshold)
    results = run_export(job)
    record_results(results, record, job)
    record_outputs(out, written)
    print(results_table(results))
    failed = [r for r in results if not r.passed]
    if failed:
        raise ExportCheckFailed(
            f"{len(failed)} of {len(results)} exported files failed their check and were "
            f"deleted: " + "; ".join(f"{r.file}: {r.reason}" for r in failed))
    print(f"{len(results)} files written to {out} and verified; figures in "
          f"{record}")
    return results


def _parse_precisions(text: str | None) -> tuple[str, ...]:
    if not text:
        return TFLITE_PRECISIONS
    wanted = tuple(p.strip().lower() for p in text.split(",") if p.strip())
    wrong = [p for p in wanted if p not in TFLITE_PRECISIONS]
    if wrong:
        raise UserError(f"unknown TFLite precision {', '.join(wrong)}; choose from "
                        f"{', '.join(TFLITE_PRECISIONS)}")
    return wanted


def _temperature(run_dir: Path | None, calibration: str | None = None) -> float | None:
    from pokedex_trainer.evaluation.calibration import read_temperature

    if calibration is not None and not Path(calibration).is_file():
        raise UserError(f"--calibration: '{calibration}' does not exist (evaluate.py writes it)")
    return read_temperature(run_dir, Path(calibration) if calibration else None)
