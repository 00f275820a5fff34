"""evaluate.py: the honest report on one model (metrics.json, report.md, the plots).

Any model file this tool writes is evaluated in its own runtime (see evaluation/predict.py), on images it
never saw: the run's test split from its manifest, or a separate labelled folder. Confidence is
calibrated by temperature scaling fitted on the validation split, never on the test split
(evaluation/members.py). An ensemble's report is evaluation/ensemble.py's, ``--predict``'s
output for the app evaluation/app_predictions.py's.
"""

from __future__ import annotations

import csv
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pokedex_trainer.errors import UserError
from pokedex_trainer.evaluation.calibration import reliability
from pokedex_trainer.evaluation.latency import latency
from pokedex_trainer.evaluation.members import (
    Member,
    calibrate,
    load_for_run,
    member_metrics,
    predict_images,
)
from pokedex_trainer.evaluation.metrics import most_confident_mistakes, report_rows
from pokedex_trainer.evaluation.outputs import REPORT_FILES, report_folder
from pokedex_trainer.machine.memory import check_latency_batch
from pokedex_trainer.runs.finished import LabelledImages, folder_images, model_and_run, run_split
from pokedex_trainer.user_io.atomic import atomic_write_json
from pokedex_trainer.user_io.output_guard import record_outputs


def evaluation_images(run_dir: Path | None, data_path: str | None,
                      class_names: list[str]) -> LabelledImages:
    """The images a model is judged on: ``--data_path`` or the run's test split."""
    if data_path:
        return folder_images(Path(data_path), class_names)
    if run_dir is None:
        raise UserError("this model is not inside a run directory: pass --data_path DIR (a "
                        "labelled folder, one sub-folder per class) to evaluate it")
    images = run_split(run_dir, "test")
    if images.class_names != list(class_names):
        raise UserError(f"the model's {len(class_names)} classes do not match the "
                        f"{len(images.class_names)} classes of run '{run_dir.name}'")
    if not images.samples:
        raise UserError(f"run '{run_dir.name}' has no test split (--test_split 0): pass "
                        "--data_path DIR with labelled images it never saw")
    return images


@dataclass
class EvaluateOptions:
    output_dir: str | None = None
    latency_runs: int = 20
    latency_batch: int = 32
    mistakes: int = 16
    calibration: str | None = None  # calibration.json to write (default: in the run)
    unknown_data: str | None = None  # a folder of photos of none of the classes
    unknown_recall: float = 0.95  # known photos the fitted "unknown" rule keeps


def evaluate_model(run_dir: str | None, model: str | None, data_path: str | None,
                   options: EvaluateOptions) -> Path:
    """Evaluate one model; writes the report and returns its folder."""
    model_path, run = model_and_run(run_dir, model)
    out = report_folder(options.output_dir, run, model_path)  # before any work: it may refuse
    predictor = load_for_run(model_path, run)
    check_latency_batch(options.latency_batch, predictor.info.image_size,  # before any work
                        predictor.info.model_type, predictor.info.source_framework)
    images = evaluation_images(run, data_path, predictor.info.class_names)
    member = Member(model_path.name, predictor, run,
                    calibration_file=Path(options.calibration) if options.calibration else None,
                    unknown_recall=options.unknown_recall)
    if options.unknown_data:  # before any work: a folder with no photo is one line
        from pokedex_trainer.data.unknown_photos import photo_files

        photo_files(Path(options.unknown_data), "--unknown_data")
    calibrate(member)
    member.probabilities, labels = predict_images(predictor, images, label="test images")
    metrics = member_metrics(member, labels)
    for name in ("unknown_scores.png", "accuracy_coverage.png"):
        (out / name).unlink(missing_ok=True)  # an earlier report's (report_folder checked)
    if options.unknown_data:
        from pokedex_trainer.evaluation.unknown_report import measure_unknown

        metrics["unknown"] = measure_unknown(member, images, labels,
                                             Path(options.unknown_data), out)
    sample = next(images.load(predictor.info.image_size, batch_size=options.latency_batch))[0]
    metrics["latency"] = latency(predictor, sample, options.latency_runs, options.latency_batch)
    metrics.update(model=str(model_path), runtime=predictor.runtime,
                   evaluated_on=images.description, date=time.strftime("%Y-%m-%d %H:%M:%S"))
    write_report(out, metrics, member, labels, images, options.mistakes)
    record_outputs(out, REPORT_FILES)
    print_summary(metrics, out)
    return out


def write_report(out: Path, metrics: dict, member: Member, labels: np.ndarray,
                 images: LabelledImages, mistakes: int) -> None:
    """metrics.json, classification_report.csv, the PNGs and report.md in ``out``."""
    from pokedex_trainer.evaluation import plots

    names = member.predictor.info.class_names
    matrix = np.asarray(metrics["confusion_matrix"])
    plots.plot_confusion(matrix, names, out / "confusion_matrix.png", normalized=False)
    plots.plot_confusion(matrix, names, out / "confusion_matrix_normalized.png", normalized=True)
    cal = metrics["calibration"]
    plots.plot_reliability(reliability(member.probabilities, labels),
                           reliability(member.calibrated, labels), out / "reliability.png",
                           cal["test_ece_before"], cal["test_ece_after"], cal["temperature"])
    plots.plot_per_class_f1(metrics["per_class"], out / "per_class_f1.png")
    wrong = most_confident_mistakes(labels, member.calibrated, mistakes)
    gallery, titles = _mistake_images(wrong, member, images, names)
    plots.plot_mistakes(gallery, titles, out / "mistakes.png")
    metrics["most_confident_mistakes"] = [
        {"image": images.samples[i][0], "true": names[labels[i]],
         "predicted": names[int(member.calibrated[i].argmax())],
         "confidence": float(member.calibrated[i].max())} for i in wrong]
    atomic_write_json(out / "metrics.json", metrics)
    write_csv(out / "classification_report.csv", report_rows(metrics))
    (out / "report.md").write_text(report_markdown(metrics, names), encoding="utf-8")


def _mistake_images(indices: list[int], member: Member, images: LabelledImages,
                    names: list[str]) -> tuple[list[np.ndarray], list[str]]:
    from pokedex_trainer.data.augment import build_eval_transform
    from pokedex_trainer.data.images import UnreadableImageError, read_image

    transform = build_eval_transform(member.predictor.info.image_size)
    pictures, titles = [], []
    for i in indices:
        relative, label = images.samples[i]
        try:
            picture = transform(image=read_image(images.root / relative))["image"]
        except UnreadableImageError:
            continue
        p = member.calibrated[i]
        pictures.append(picture)
        titles.append(f"true: {names[label]}\npred: {names[int(p.argmax())]} ({p.max():.0%})")
    return pictures, titles


def write_csv(path: Path, rows: list[dict]) -> None:
    """A table of names and figures; no cell runs as a spreadsheet formula."""
    from pokedex_trainer.user_io.inert_text import spreadsheet_row

    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(spreadsheet_row(row) for row in rows)


def report_markdown(metrics: dict, names: list[str]) -> str:
    cal, lat = metrics["calibration"], metrics.get("latency")
    lines = [f"# Evaluation of {Path(metrics['model']).name}", "",
             f"Evaluated on {metrics['evaluated_on']} with {metrics['runtime']}, "
             f"{metrics['date']}.", "",
             "| metric | value |", "| --- | --- |",
             f"| accuracy | {metrics['accuracy']:.4f} |",
             f"| top-5 accuracy | {metrics['top5_accuracy']:.4f} |",
             f"| cross-entropy loss | {metrics['loss']:.4f} |",
             f"| macro F1 | {metrics['macro_avg']['f1-score']:.4f} |",
             f"| weighted F1 | {metrics['weighted_avg']['f1-score']:.4f} |",
             f"| ECE before / after temperature | {cal['test_ece_before']:.4f} / "
             f"{cal['test_ece_after']:.4f} |",
             f"| temperature | {cal['temperature']:.3f} (fitted on {cal['fitted_on']}) |"]
    if lat:
        lines += [f"| latency, batch 1 | {lat['batch1_median_ms']:.2f} ms median, "
                  f"{lat['batch1_p95_ms']:.2f} ms p95 ({lat['runtime']}, {lat['device']}, "
                  f"{lat['threads']} threads) |",
                  f"| throughput, batch {lat['throughput_batch']} | "
                  f"{lat['throughput_images_per_s']:.1f} images/s |"]
    lines += ["", "Per-class precision, recall and F1: [classification_report.csv]"
              "(classification_report.csv)", "",
              "![F1 per class](per_class_f1.png)", "",
              "## Confusion", "", "![confusion matrix](confusion_matrix.png)",
              "![confusion matrix, row-normalized](confusion_matrix_normalized.png)", ""]
    if metrics["most_confused"]:
        lines += ["| true | taken for | count | share of true class |", "| --- | --- | --- | --- |"]
        lines += [f"| {p['true']} | {p['predicted']} | {p['count']} | "
                  f"{p['share_of_true']:.1%} |" for p in metrics["most_confused"]]
    else:
        lines.append("No confusion: every image was classified correctly.")
    lines += ["", "## Confidence", "", "![reliability diagram](reliability.png)", "",
              "## Most confident mistakes", "", "![mistakes](mistakes.png)", ""]
    if metrics.get("unknown"):
        from pokedex_trainer.evaluation.unknown_report import unknown_markdown

        lines += unknown_markdown(metrics["unknown"])
    return "\n".join(lines)


def print_summary(metrics: dict, out: Path) -> None:
    lat = metrics.get("latency")
    cal = metrics["calibration"]
    print(f"{Path(metrics['model']).name} ({metrics['runtime']}) on {metrics['evaluated_on']}")
    print(f"  accuracy {metrics['accuracy']:.4f}   top-5 {metrics['top5_accuracy']:.4f}   "
          f"loss {metrics['loss']:.4f}   macro F1 {metrics['macro_avg']['f1-score']:.4f}")
    print(f"  ECE {cal['test_ece_before']:.4f} -> {cal['test_ece_after']:.4f} with temperature "
          f"{cal['temperature']:.3f}")
    if lat:
        print(f"  latency {lat['batch1_median_ms']:.2f} ms/image (p95 {lat['batch1_p95_ms']:.2f})"
              f", {lat['throughput_images_per_s']:.1f} images/s at batch "
              f"{lat['throughput_batch']}")
    for pair in metrics["most_confused"][:3]:
        print(f"  {pair['true']} taken for {pair['predicted']}: {pair['count']}x")
    if metrics.get("unknown"):
        from pokedex_trainer.evaluation.unknown_report import unknown_line

        print(f"  {unknown_line(metrics['unknown'])}")
    print(f"report: {out / 'report.md'}")
