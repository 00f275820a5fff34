"""The files of an export: one writer per format, each with its sidecar, checked as written.

``run_export`` writes every file of an ``ExportJob`` and checks it at once (exporters/parity.py):
a file outside its precision's tolerance is deleted, never reported good.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from pokedex_trainer import __version__
from pokedex_trainer.errors import UserError, reason_line
from pokedex_trainer.evaluation.model_files import ModelInfo, sidecar_path
from pokedex_trainer.evaluation.predict import Predictor, load_predictor
from pokedex_trainer.exporters.choices import DEFAULT_OPSET
from pokedex_trainer.exporters.keras_formats import TFLITE_PRECISIONS
from pokedex_trainer.exporters.parity import ExportResult, predict_all, verify_file
from pokedex_trainer.runs.finished import LabelledImages
from pokedex_trainer.user_io.atomic import atomic_write_json

logger = logging.getLogger(__name__)


@dataclass
class ExportJob:
    """What to export and what to check it on.

    Args:
        source: the trained model (``.keras``/``.h5``/``.pth``).
        formats: formats to write (see FORMATS).
        output_dir: where the files go.
        check: the images of the parity check (validation images of the run).
        int8_images: training images that calibrate full-int8 quantization (not the
            temperature: that is ``temperature``).
        opset: ONNX opset.
        tflite_precisions: which TFLite precisions to write.
        temperature: the run's calibration temperature, recorded in the sidecars.
    """

    source: Path
    formats: list[str]
    output_dir: Path
    check: LabelledImages
    int8_images: LabelledImages | None = None
    opset: int = DEFAULT_OPSET
    tflite_precisions: tuple[str, ...] = TFLITE_PRECISIONS
    temperature: float | None = None
    web_precision: str = "fp32"
    threshold: float | None = None
    unknown: dict | None = None  # the "unknown" rule the sidecars carry (None: fitted here)
    run: Path | None = None  # the run of ``source`` (the knn bank's training photos)
    graph: tuple | None = None  # (score, bank, k, unknown bank, floor) computed inside the
    #                             files (exporters/torch_formats.py KnownScore); None: max softmax


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
    reference_score = _settle_unknown_rule(source, job, reference, images)
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
                                        f"{type(exc).__name__}: {reason_line(exc)}"))
            logger.error("%s: conversion failed: %s", path.name, exc)
            continue
        result = verify_file(path, fmt, precision, reference, images, labels,
                             reference_score)
        result.file = path.relative_to(job.output_dir).as_posix()  # web/model.onnx
        logger.info("%s: %s in %.1f s", result.file, "verified" if result.passed else "FAILED",
                    time.perf_counter() - started)
        if not result.passed:
            _remove(path.parent if fmt == "web" else path)
        results.append(result)
    return results


def _settle_unknown_rule(source: Predictor, job: ExportJob, reference, images):
    """The rule the sidecars carry (evaluate.py's, else fitted here on the check images, the
    validation split, with the run's temperature, to keep 95 % of them), the score the files
    compute for it (``job.graph``) and that score of the source model on ``images``."""
    from pokedex_trainer.evaluation import unknown as scoring
    from pokedex_trainer.evaluation.calibration import apply_temperature
    from pokedex_trainer.evaluation.known_score import RuleScorer, fitted_rule

    calibrated = apply_temperature(reference, job.temperature or 1.0)
    inner = source.logits_and_features(images)
    if job.unknown is not None and job.unknown["score"] in scoring.GRAPH_SCORES and \
            (inner is None or (job.unknown["score"] in scoring.BANK_SCORES
                               and job.run is None)):
        logger.warning("the saved 'unknown' rule (%s) needs the run's features: fitted again "
                       "here", job.unknown["score"])
        job.unknown = None
    if job.unknown is None:
        job.unknown = fitted_rule(source, job.run, calibrated,
                                     *(inner if inner is not None else (None, None)),
                                     scoring.DEFAULT_RECALL,
                                     f"{job.check.description}, at export",
                                     job.temperature or 1.0, keep=False)
        logger.info("'unknown' below a %s score of %.3f (keeps %.0f %% of %s)",
                    job.unknown["score"], job.unknown["threshold"],
                    100 * scoring.DEFAULT_RECALL, job.check.description)
    name = job.unknown["score"]
    if name == scoring.SHIPPED_SCORE:
        job.graph = None
        return None
    scorer = RuleScorer(job.unknown, source, job.run, keep=False)  # the run is only read
    bank, unknown_bank = scorer.banks or (None, None)
    job.graph = (name, bank, 1 if bank is None else scoring.knn_k(bank), unknown_bank,
                 job.unknown.get("floor"))
    return scorer.score(images, calibrated)


def _sidecar(info: ModelInfo, job: ExportJob, fmt: str, precision: str) -> dict:
    extra = {"format": fmt, "precision": precision, "source_model": job.source.name,
             "created": time.strftime("%Y-%m-%d %H:%M:%S"), "pokedex_trainer": __version__}
    if job.temperature is not None:
        extra["temperature"] = job.temperature
        extra["temperature_note"] = ("calibrated probabilities: softmax(log(p) / temperature); "
                                     "the model's own output is uncalibrated")
    if job.unknown is not None:
        extra["unknown"] = job.unknown
    if fmt == "web" and job.threshold is not None:  # the page's rule is the one asked for
        extra["unknown"] = {"score": "max_softmax", "threshold": job.threshold,
                            "fitted_on": "export.py --threshold",
                            "rule": "unknown when the top calibrated probability is below "
                                    "the threshold"}
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
            state["saved_model"] = keras_formats.write_saved_model(
                keras_formats.scored_model(model, job.graph), target)
        return state["saved_model"]

    def int8_batches():
        if job.int8_images is None:
            raise ValueError("full int8 needs calibration images")
        for images, _ in job.int8_images.load(source.info.image_size,
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
                                    saved_model_path(), path, p, sc, int8_batches))))
    yield from writers
    if state["saved_model"] is not None and "savedmodel" not in job.formats:
        shutil.rmtree(state["saved_model"].parent, ignore_errors=True)


def _torch_writers(job: ExportJob, source: Predictor):
    from pokedex_trainer.exporters import torch_formats, torch_tflite

    model, size, stem = source.model, source.info.image_size, job.source.stem
    out = job.output_dir
    table = {
        "torchscript": (out / f"{stem}.pt", lambda path, sc: torch_formats.write_torchscript(
            model, size, path, sc, job.graph)),
        "torch_export": (out / f"{stem}.pt2", lambda path, sc: torch_formats.write_torch_export(
            model, size, path, sc, job.graph)),
        "onnx": (out / f"{stem}.onnx", lambda path, sc: torch_formats.write_onnx(
            model, size, path, job.opset, sc, job.graph)),
        "tflite": (out / f"{stem}_float32.tflite", lambda path, sc: torch_tflite.write_tflite(
            model, size, path, sc, job.graph)),
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
