"""Export a trained model to the formats its framework can produce, and prove each file right.

Every file is checked before it is reported as written: the same images go through the source
model and through the exported file in its own runtime, read the way an app reads it (the
sidecar JSON says how to feed it). A file outside its precision's tolerance is deleted and the
export ends with exit code 1; the figures of every file go to ``exports.json``.
"""

from __future__ import annotations

import logging

from pokedex_trainer.errors import UserError
from pokedex_trainer.evaluation.predict import load_predictor
from pokedex_trainer.exporters.choices import (
    DEFAULT_OPSET,
    export_images,
    export_temperature,
    export_unknown_rule,
    framework_of_source,
    parse_formats,
    parse_precisions,
    resolve_source,
)
from pokedex_trainer.exporters.parity import ExportResult
from pokedex_trainer.exporters.record import record_results, results_table
from pokedex_trainer.exporters.targets import export_folder
from pokedex_trainer.exporters.writers import ExportJob, run_export
from pokedex_trainer.user_io.output_guard import record_outputs

logger = logging.getLogger(__name__)


def export_command(*, run_dir: str | None = None, model: str | None = None,
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
    from pokedex_trainer.evaluation.model_files import class_names_near, import_frameworks

    source, run = resolve_source(run_dir, model)
    framework = framework_of_source(source)
    wanted = parse_formats(formats, framework)
    precisions = parse_precisions(tflite_precisions)
    from pokedex_trainer.exporters.web_page import check_precision

    web_precision = check_precision(web_precision)
    from pokedex_trainer.evaluation.unknown import check_threshold

    check_threshold(threshold)
    if "web" not in wanted and (web_precision != "fp32" or threshold is not None):
        logger.warning("--web_precision and --threshold are for the web page, which this "
                       "export does not write (--formats web): ignored")
    if {"torchscript", "savedmodel"} & set(wanted):  # recorded in the trust store
        from pokedex_trainer.evaluation.safe_loading import check_trust_store

        check_trust_store()
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
    check, int8_images = export_images(run, data_path, names, check_images, calibration_images)
    job = ExportJob(source, wanted, out, check, int8_images, opset, precisions,
                    export_temperature(run, calibration_file), web_precision, threshold,
                    export_unknown_rule(run, calibration_file), run)
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
