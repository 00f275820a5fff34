"""evaluate.py --ensemble: the mean of several runs' calibrated probabilities, beside each run's."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from pokedex_trainer.errors import UserError
from pokedex_trainer.evaluation.members import (
    Member,
    calibrate,
    load_for_run,
    member_metrics,
    predict_images,
)
from pokedex_trainer.evaluation.metrics import compute_metrics
from pokedex_trainer.evaluation.model_files import framework_of, import_frameworks
from pokedex_trainer.evaluation.outputs import ENSEMBLE_FILES, prepared_folder
from pokedex_trainer.evaluation.report import EvaluateOptions, write_csv
from pokedex_trainer.runs.finished import LabelledImages, best_model_of, folder_images, run_split
from pokedex_trainer.runs.layout import EVALUATION_DIR
from pokedex_trainer.user_io.atomic import atomic_write_json
from pokedex_trainer.user_io.output_guard import record_outputs


def evaluate_ensemble(run_dirs: list[str], data_path: str | None,
                      options: EvaluateOptions) -> Path:
    """Average the members' calibrated probabilities; report the ensemble beside each member."""
    if len(run_dirs) < 2:
        raise UserError("--ensemble needs at least two run directories")
    out = prepared_folder(options.output_dir, Path(run_dirs[0]) / EVALUATION_DIR / "ensemble",
                          ENSEMBLE_FILES, own_default=True)
    paths = [best_model_of(Path(d)) for d in run_dirs]
    import_frameworks({framework_of(p) for p in paths})  # torch before TensorFlow
    members = [Member(Path(d).name, load_for_run(p, Path(d)), Path(d))
               for d, p in zip(run_dirs, paths)]
    names = members[0].predictor.info.class_names
    for member in members[1:]:
        if member.predictor.info.class_names != names:
            raise UserError(f"run '{member.name}' has other classes than '{members[0].name}'; "
                            "an ensemble needs the same class list")
    images = _common_test_images(members, data_path, names)
    results = {}
    for member in members:
        calibrate(member)
        member.probabilities, labels = predict_images(member.predictor, images,
                                                      label=member.name)
        results[member.name] = member_metrics(member, labels)
        results[member.name]["model"] = str(member.predictor.path)
    average = np.mean([m.calibrated for m in members], axis=0)
    ensemble = compute_metrics(labels, average, names)
    report = {"ensemble": ensemble, "members": results, "evaluated_on": images.description,
              "method": "mean of the members' temperature-calibrated probabilities",
              "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    atomic_write_json(out / "metrics.json", report)
    rows = [{"model": "ensemble", **_headline(ensemble)}] + \
        [{"model": name, **_headline(m)} for name, m in results.items()]
    write_csv(out / "ensemble.csv", rows)
    from pokedex_trainer.evaluation.plots import plot_confusion

    plot_confusion(np.asarray(ensemble["confusion_matrix"]), names,
                   out / "confusion_matrix.png", normalized=False)
    (out / "report.md").write_text(_ensemble_markdown(rows, images.description), "utf-8")
    print(f"ensemble of {len(members)} runs on {images.description}")
    for row in rows:
        print(f"  {row['model']:<40} accuracy {row['accuracy']:.4f}  top-5 "
              f"{row['top5_accuracy']:.4f}  loss {row['loss']:.4f}  ECE {row['ece']:.4f}")
    record_outputs(out, ENSEMBLE_FILES)
    print(f"report: {out / 'report.md'}")
    return out


def _headline(metrics: dict) -> dict:
    return {key: round(metrics[key], 6) for key in ("accuracy", "top5_accuracy", "loss", "ece")} \
        | {"macro_f1": round(metrics["macro_avg"]["f1-score"], 6)}


def _ensemble_markdown(rows: list[dict], description: str) -> str:
    lines = ["# Ensemble evaluation", "", f"On {description}; the ensemble averages the members' "
             "calibrated probabilities.", "",
             "| model | accuracy | top-5 | loss | ECE | macro F1 |",
             "| --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {r['model']} | {r['accuracy']:.4f} | {r['top5_accuracy']:.4f} | "
              f"{r['loss']:.4f} | {r['ece']:.4f} | {r['macro_f1']:.4f} |" for r in rows]
    return "\n".join(lines + ["", "![ensemble confusion matrix](confusion_matrix.png)", ""])


def _common_test_images(members: list[Member], data_path: str | None,
                        names: list[str]) -> LabelledImages:
    if data_path:
        return folder_images(Path(data_path), names)
    splits = [run_split(m.run_dir, "test") for m in members]
    first = {p for p, _ in splits[0].samples}
    for member, split in zip(members[1:], splits[1:]):
        if {p for p, _ in split.samples} != first:
            raise UserError(f"runs '{members[0].name}' and '{member.name}' have different test "
                            "splits (another seed or data), so one's test images may be the "
                            "other's training images: pass --data_path DIR with images none of "
                            "them trained on")
    if not splits[0].samples:
        raise UserError("the runs have no test split: pass --data_path DIR")
    return splits[0]
