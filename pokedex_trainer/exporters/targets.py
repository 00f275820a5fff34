"""What an export will write, known before any work: the ONNX opset range it can honour and the
names of its files (so a user's own files in ``--output_dir`` are refused up front)."""

from __future__ import annotations

from pathlib import Path

from pokedex_trainer.errors import UserError

EXPORTS_JSON = "exports.json"

# The opsets the installed converters produce and verify. tf2onnx (Keras) converts opset 14 to
# 18 and rejects newer ones. PyTorch's exporter builds opset 18 and converts upwards through
# onnxscript (to 25); below 18 its conversion fails with a traceback and quietly keeps 18, so
# the file would not have the opset asked for.
ONNX_OPSETS = {"keras": (14, 18), "torch": (18, 25)}


def check_opset(opset: int, framework: str) -> None:
    """UserError (one line) for an ONNX opset the framework's converter cannot write."""
    low, high = ONNX_OPSETS[framework]
    if not low <= opset <= high:
        converter = "tf2onnx" if framework == "keras" else "torch.onnx"
        raise UserError(f"--opset {opset}: {converter} writes ONNX opsets {low} to {high} for "
                        f"this {'Keras' if framework == 'keras' else 'PyTorch'} model "
                        f"(default 18)")


def export_file_names(stem: str, framework: str, formats: list[str],
                      precisions: tuple[str, ...]) -> list[str]:
    """The files (and folders) an export of ``stem`` writes, each with its sidecar JSON; the
    names follow ``writers._keras_writers`` / ``_torch_writers``."""
    from pokedex_trainer.evaluation.model_files import sidecar_path

    if framework == "keras":
        named = {"savedmodel": [f"{stem}_saved_model"], "onnx": [f"{stem}.onnx"],
                 "tflite": [f"{stem}_{p}.tflite" for p in precisions]}
    else:
        named = {"torchscript": [f"{stem}.pt"], "torch_export": [f"{stem}.pt2"],
                 "onnx": [f"{stem}.onnx"]}
    files = [name for fmt in formats for name in named.get(fmt, [])]
    folders = ["web"] if "web" in formats else []  # the page: one folder, its sidecar inside
    return [n for name in files for n in (name, sidecar_path(name).name)] + folders


def export_folder(output_dir: str | None, run: Path | None, source: Path, framework: str,
                  formats: list[str], precisions: tuple[str, ...], opset: int
                  ) -> tuple[Path, Path, list[str]]:
    """Before any work: (folder of the files, exports.json, names written into the folder).

    The opset is checked, and a folder that is not the run's own (``--output_dir``, or
    ``export/`` beside a loose model file) is cleared for writing: refused in one line when it
    holds a file of one of those names that this tool did not write there.
    """
    from pokedex_trainer.runs.layout import EXPORT_DIR
    from pokedex_trainer.user_io.output_guard import claim_outputs

    check_opset(opset, framework)
    out = Path(output_dir) if output_dir else (run or source.parent) / EXPORT_DIR
    record = (out if output_dir or run is None else run) / EXPORTS_JSON
    names = export_file_names(source.stem, framework, formats, precisions)
    if record.parent == out:
        names.append(EXPORTS_JSON)
    if output_dir or run is None:
        claim_outputs(out, names)
    return out, record, names
