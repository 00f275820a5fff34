"""What an export is asked for, checked before any work: source, formats, precisions, images."""

from __future__ import annotations

import logging
from pathlib import Path

from pokedex_trainer.errors import UserError
from pokedex_trainer.exporters.keras_formats import TFLITE_PRECISIONS

logger = logging.getLogger(__name__)

FORMATS = {
    "keras": ("tflite", "onnx", "savedmodel", "web"),
    "torch": ("torchscript", "torch_export", "onnx", "web"),
}
DEFAULT_OPSET = 18


def parse_formats(text: str | None, framework: str) -> list[str]:
    """``"tflite,onnx"`` -> ['tflite', 'onnx']; None or 'all' -> every format of ``framework``.

    Raises UserError naming the formats that exist for the framework.
    """
    from pokedex_trainer.exporters import web_page

    available = FORMATS[framework]
    if text is None or text.strip().lower() in ("", "all"):
        if framework == "torch":  # the app's TFLite file: said, since "all" leaves it out
            from pokedex_trainer.exporters.torch_tflite import litert_torch_available

            logger.info("TFLite (the app's file) is written from a PyTorch model on request: "
                        "--formats tflite%s (see docs/export.md)",
                        "" if litert_torch_available() else
                        ", converted in litert-torch's own environment, made on first use "
                        "(requirements-tflite.txt)")
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


def resolve_source(run_dir: str | None, model: str | None) -> tuple[Path, Path | None]:
    """(model file, its run directory or None) from ``--run_dir`` or ``--model``."""
    from pokedex_trainer.runs.finished import model_and_run

    if bool(run_dir) == bool(model):
        raise UserError("give either --run_dir RUN_DIR or --model FILE")
    return model_and_run(run_dir, model)


def export_images(run_dir: Path | None, data_path: str | None, class_names: list[str],
                  check_images: int, calibration_images: int):
    """(check images, int8 calibration images): the run's validation and training splits, or a
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
    from pokedex_trainer.evaluation.model_files import framework_of

    if path.is_dir():  # a SavedModel runs its graph when loaded: refuse before loading anything
        raise UserError(f"'{path}' is a folder, not a trained model of this tool (*.keras, *.h5 "
                        "or *.pth); exported files are not exported again")
    framework = framework_of(path)
    if framework not in FORMATS or path.suffix.lower() not in (".keras", ".h5", ".pth"):
        raise UserError(f"'{path}' is not a trained model of this tool (*.keras, *.h5 or *.pth); "
                        "exported files are not exported again")
    return framework


def parse_precisions(text: str | None) -> tuple[str, ...]:
    if not text:
        return TFLITE_PRECISIONS
    wanted = tuple(p.strip().lower() for p in text.split(",") if p.strip())
    wrong = [p for p in wanted if p not in TFLITE_PRECISIONS]
    if wrong:
        raise UserError(f"unknown TFLite precision {', '.join(wrong)}; choose from "
                        f"{', '.join(TFLITE_PRECISIONS)}")
    return wanted


def export_temperature(run_dir: Path | None, calibration: str | None = None) -> float | None:
    from pokedex_trainer.evaluation.calibration import read_temperature

    if calibration is not None and not Path(calibration).is_file():
        raise UserError(f"--calibration: '{calibration}' does not exist (evaluate.py writes it)")
    return read_temperature(run_dir, Path(calibration) if calibration else None)


def export_unknown_rule(run_dir: Path | None, calibration: str | None = None) -> dict | None:
    """The "unknown" rule evaluate.py saved beside the temperature (calibration.json), or None
    (run_export then fits one on the check images)."""
    from pokedex_trainer.evaluation.unknown import checked_rule
    from pokedex_trainer.runs.store import RunStore, read_calibration_file

    path = Path(calibration) if calibration else (
        RunStore(Path(run_dir)).calibration_path if run_dir is not None else None)
    if path is None or not path.is_file():
        return None
    return checked_rule(read_calibration_file(path).get("unknown"), str(path))
