"""evaluate.py: the honest report on a model, an ensemble, or predictions for the app.

Any model file this tool writes is evaluated in its own runtime (see evaluation/predict.py), on images it
never saw: the run's test split from its manifest, or a separate labelled folder. Confidence is
calibrated by temperature scaling fitted on the validation split, never on the test split.
"""

from __future__ import annotations

import csv
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pokedex_trainer.evaluation.calibration import (CALIBRATION_FILE, apply_temperature, checked_temperature,
                          expected_calibration_error,
                          fit_temperature, negative_log_likelihood, reliability)
from pokedex_trainer.errors import UserError
from pokedex_trainer.evaluation.metrics import compute_metrics, most_confident_mistakes, report_rows
from pokedex_trainer.evaluation.predict import (
    Predictor,
    framework_of,
    import_frameworks,
    load_predictor,
    measure_latency,
    measure_throughput,
)
from pokedex_trainer.runs.layout import CLASS_NAMES, EVALUATION_DIR, RunLayout
from pokedex_trainer.machine.memory import check_latency_batch
from pokedex_trainer.runs.finished import (
    LabelledImages,
    best_model_of,
    folder_images,
    model_and_run,
    run_split,
)
from pokedex_trainer.user_io.output_guard import record_outputs
from pokedex_trainer.runs.records import atomic_write_json
from pokedex_trainer.evaluation.outputs import ENSEMBLE_FILES, PREDICTION_FILES, REPORT_FILES, prepared_folder, \
    report_folder

logger = logging.getLogger(__name__)



@dataclass
class Member:
    """One model with its predictions on the evaluated images."""

    name: str
    predictor: Predictor
    run_dir: Path | None
    probabilities: np.ndarray | None = None
    temperature: float = 1.0
    calibration: dict = field(default_factory=dict)
    calibration_file: Path | None = None  # --calibration; default <run>/calibration.json

    @property
    def calibrated(self) -> np.ndarray:
        return apply_temperature(self.probabilities, self.temperature)

    @property
    def calibration_path(self) -> Path | None:
        """Where this member's temperature is saved and read."""
        if self.calibration_file is not None:
            return Path(self.calibration_file)
        return self.run_dir / CALIBRATION_FILE if self.run_dir else None


def predict_images(predictor: Predictor, images: LabelledImages, batch_size: int = 32,
                   label: str = "predicting") -> tuple[np.ndarray, np.ndarray]:
    """(probabilities, labels) of every readable image, with a progress bar."""
    probabilities, labels = [], []
    for batch, batch_labels in images.load(predictor.info.image_size, batch_size,
                                           progress=label):
        probabilities.append(predictor.predict(batch))
        labels.append(batch_labels)
    if not probabilities:
        raise UserError(f"no readable image in {images.description}")
    return np.concatenate(probabilities), np.concatenate(labels)


def calibrate(member: Member) -> None:
    """Fit the temperature on the member's validation split and save it in its run directory.

    Without a validation split (a loose model file) the saved temperature is used if any (see
    ``saved_calibration``), else 1 (uncalibrated), and the report says so.
    """
    run_dir = member.run_dir
    val = run_split(run_dir, "val") if run_dir else None
    if val is None or not val.samples:
        saved = saved_calibration(member)
        member.temperature = saved["temperature"] if saved else 1.0
        member.calibration = {"temperature": member.temperature,
                              "fitted_on": saved["fitted_on"] if saved else
                              "nothing: no validation split, probabilities are uncalibrated"}
        return
    probabilities, labels = predict_images(member.predictor, val, label="validation split")
    temperature = fit_temperature(probabilities, labels)
    calibrated = apply_temperature(probabilities, temperature)
    member.temperature = temperature
    member.calibration = {
        "temperature": temperature, "fitted_on": f"validation split ({len(labels)} images)",
        "val_ece_before": expected_calibration_error(probabilities, labels),
        "val_ece_after": expected_calibration_error(calibrated, labels),
        "val_loss_before": negative_log_likelihood(probabilities, labels),
        "val_loss_after": negative_log_likelihood(calibrated, labels),
    }
    _save_calibration(run_dir, member.predictor.path, member.calibration,
                      member.calibration_path)


def _save_calibration(run_dir: Path, model_path: Path, details: dict, path: Path) -> None:
    """calibration.json (``path``): per model file, and at the top the run's best model's (used
    by export sidecars and by default)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    from pokedex_trainer.runs.checked_files import read_calibration

    data = read_calibration(path) or {}  # a damaged file is refused, not overwritten
    data.setdefault("models", {})[model_path.name] = details
    if RunLayout.read(run_dir).is_best_model(model_path) or "temperature" not in data:
        data.update({k: v for k, v in details.items()})
        data["model"] = model_path.name
    atomic_write_json(path, data)


def saved_calibration(member: Member) -> dict | None:
    """The temperature saved for a model: its run's calibration.json (this file's entry, else
    the run's), else the one an export recorded in its sidecar; None when there is none."""
    path = member.calibration_path
    if path is not None and path.is_file():
        from pokedex_trainer.runs.checked_files import read_calibration

        data = read_calibration(path)
        entry = data.get("models", {}).get(member.predictor.path.name)
        if entry is None and "temperature" in data:
            entry = {"temperature": data["temperature"],
                     "fitted_on": f"{data.get('fitted_on', 'validation split')} of "
                                  f"{data.get('model', 'the run')}"}
        if entry is not None:
            checked_temperature(entry.get("temperature"), str(path))
            return entry
    sidecar = getattr(member.predictor, "sidecar", {})
    if sidecar.get("temperature"):
        return {"temperature": float(sidecar["temperature"]),
                "fitted_on": f"the validation split of {sidecar.get('source_model', 'its source')}"
                             " (from the export's sidecar)"}
    return None


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


def device_of(predictor: Predictor) -> str:
    if predictor.runtime in ("keras", "tf.saved_model"):
        import tensorflow as tf

        gpus = tf.config.list_logical_devices("GPU")
        return f"GPU ({gpus[0].name})" if gpus else "CPU"
    if predictor.runtime in ("pytorch", "torchscript", "torch.export"):
        return "CPU"  # the predictors run PyTorch files on the CPU
    if predictor.runtime == "onnxruntime":
        return "CPU (" + ", ".join(predictor.session.get_providers()) + ")"
    return "CPU"


def latency(predictor: Predictor, images: np.ndarray, runs: int, batch: int) -> dict:
    """Batch-1 milliseconds (median, p95) and images/s at ``batch``."""
    single = measure_latency(predictor, images[0], warmup=3, runs=runs)
    tiled = np.resize(images, (batch, *images.shape[1:]))
    return {"batch1_median_ms": single["median_ms"], "batch1_p95_ms": single["p95_ms"],
            "runs": runs, "throughput_batch": batch,
            "throughput_images_per_s": measure_throughput(predictor, tiled, repeats=2),
            "runtime": predictor.runtime, "device": device_of(predictor),
            "threads": predictor.threads}


@dataclass
class EvaluateOptions:
    output_dir: str | None = None
    latency_runs: int = 20
    latency_batch: int = 32
    mistakes: int = 16
    calibration: str | None = None  # calibration.json to write (default: in the run)


def evaluate_model(run_dir: str | None, model: str | None, data_path: str | None,
                   options: EvaluateOptions) -> Path:
    """Evaluate one model; writes the report and returns its folder."""
    model_path, run = model_and_run(run_dir, model)
    out = report_folder(options.output_dir, run, model_path)  # before any work: it may refuse
    predictor = _load(model_path, run)
    check_latency_batch(options.latency_batch, predictor.info.image_size)  # before any work
    images = evaluation_images(run, data_path, predictor.info.class_names)
    member = Member(model_path.name, predictor, run,
                    calibration_file=Path(options.calibration) if options.calibration else None)
    calibrate(member)
    member.probabilities, labels = predict_images(predictor, images, label="test images")
    metrics = member_metrics(member, labels)
    sample = next(images.load(predictor.info.image_size, batch_size=options.latency_batch))[0]
    metrics["latency"] = latency(predictor, sample, options.latency_runs, options.latency_batch)
    metrics.update(model=str(model_path), runtime=predictor.runtime,
                   evaluated_on=images.description, date=time.strftime("%Y-%m-%d %H:%M:%S"))
    write_report(out, metrics, member, labels, images, options.mistakes)
    record_outputs(out, REPORT_FILES)
    print_summary(metrics, out)
    return out


def _load(model_path: Path, run: Path | None) -> Predictor:
    names = None
    if run is not None and (run / CLASS_NAMES).is_file():
        from pokedex_trainer.runs.checked_files import run_class_names

        names = run_class_names(run)
    predictor = load_predictor(model_path, names)
    if names is not None and list(predictor.info.class_names) != names:
        raise UserError(f"{run / CLASS_NAMES}: its {len(names)} classes are not the "
                        f"{len(predictor.info.class_names)} of '{model_path.name}'; the model is "
                        "not this run's (pass --model with the run's own file)")
    return predictor


def member_metrics(member: Member, labels: np.ndarray) -> dict:
    names = member.predictor.info.class_names
    metrics = compute_metrics(labels, member.probabilities, names)
    calibrated = member.calibrated
    metrics["calibration"] = dict(member.calibration)
    metrics["calibration"].update(
        test_ece_before=metrics["ece"],
        test_ece_after=expected_calibration_error(calibrated, labels),
        test_loss_after=negative_log_likelihood(calibrated, labels))
    return metrics


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
    _write_csv(out / "classification_report.csv", report_rows(metrics))
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


def _write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


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
    print(f"report: {out / 'report.md'}")


def evaluate_ensemble(run_dirs: list[str], data_path: str | None,
                      options: EvaluateOptions) -> Path:
    """Average the members' calibrated probabilities; report the ensemble beside each member."""
    if len(run_dirs) < 2:
        raise UserError("--ensemble needs at least two run directories")
    out = prepared_folder(options.output_dir, Path(run_dirs[0]) / EVALUATION_DIR / "ensemble",
                          ENSEMBLE_FILES, own_default=True)
    paths = [best_model_of(Path(d)) for d in run_dirs]
    import_frameworks({framework_of(p) for p in paths})  # torch before TensorFlow
    members = [Member(Path(d).name, _load(p, Path(d)), Path(d)) for d, p in zip(run_dirs, paths)]
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
    _write_csv(out / "ensemble.csv", rows)
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


def predict_command(target: str, run_dir: str | None, model: str | None, top_k: int,
                    threshold: float | None, output_dir: str | None,
                    calibration: str | None = None) -> list[dict]:
    """``--predict``: top-k calibrated classes per image; "unknown" below ``threshold``."""
    from pokedex_trainer.data.scan import is_image_file

    model_path, run = model_and_run(run_dir, model)
    home = run or model_path.parent
    if (home / "index.html").is_file() and (home / "model.json").is_file():
        home = home.parent  # a web page's folder is served to the network: not the photo list
    if Path(target).is_dir():  # before any work: the folder may hold the user's own files
        out = prepared_folder(output_dir, home / "predictions", PREDICTION_FILES,
                              own_default=run is not None)
    predictor = _load(model_path, run)
    member = Member(model_path.name, predictor, run,
                    calibration_file=Path(calibration) if calibration else None)
    saved = saved_calibration(member)
    member.temperature = saved["temperature"] if saved else 1.0
    if saved is None:
        logger.warning("no calibration saved for %s: probabilities are uncalibrated (run "
                       "evaluate.py --run_dir first to fit the temperature)", model_path.name)
    target_path = Path(target)
    if target_path.is_dir():
        found = sorted(p for p in target_path.rglob("*") if p.is_file())
        files = [p for p in found if is_image_file(p)]
        others = [p for p in found if p not in files and not p.name.startswith(".")
                  and p.name not in PREDICTION_FILES]
        if others:
            logger.warning("skipped %d file(s) that are not .jpg/.jpeg/.png images: %s%s",
                           len(others), ", ".join(p.name for p in others[:5]),
                           " ..." if len(others) > 5 else "")
        if not files:
            raise UserError(f"'{target}' holds no .jpg/.jpeg/.png image")
    elif target_path.is_file():
        files = [target_path]
    else:
        raise UserError(f"--predict: '{target}' is neither an image nor a folder")
    rows = _predict_files(files, member, top_k, threshold)
    for row in rows:
        shown = ", ".join(f"{c} {p:.1%}" for c, p in zip(row["top_classes"],
                                                          row["top_probabilities"]))
        print(f"{row['image']}: {row['prediction']}  ({shown})" if not row.get("error")
              else f"{row['image']}: skipped ({row['error']})")
    if target_path.is_dir():
        _write_predictions(out, rows, top_k)
        record_outputs(out, PREDICTION_FILES)
        print(f"{len(rows)} predictions written to {out / 'predictions.csv'} and "
              f"{out / 'predictions.json'}")
    return rows


def _predict_files(files: list[Path], member: Member, top_k: int,
                   threshold: float | None) -> list[dict]:
    from tqdm import tqdm

    from pokedex_trainer.data.augment import build_eval_transform
    from pokedex_trainer.data.images import UnreadableImageError, read_image

    names = member.predictor.info.class_names
    transform = build_eval_transform(member.predictor.info.image_size)
    rows = []
    for path in tqdm(files, desc="predicting", unit="img", leave=False,
                     disable=len(files) < 2):
        try:
            image = transform(image=read_image(path))["image"]
        except UnreadableImageError as exc:
            logger.warning("skipped unreadable image %s: %s", path, exc.reason)
            rows.append({"image": str(path), "prediction": "", "confidence": None,
                         "top_classes": [], "top_probabilities": [], "error": exc.reason})
            continue
        probabilities = apply_temperature(member.predictor.predict(image[None]),
                                          member.temperature)[0]
        order = np.argsort(-probabilities, kind="stable")[:min(top_k, len(names))]
        confidence = float(probabilities[order[0]])
        known = threshold is None or confidence >= threshold
        rows.append({"image": str(path), "prediction": names[order[0]] if known else "unknown",
                     "confidence": confidence, "top_classes": [names[i] for i in order],
                     "top_probabilities": [float(probabilities[i]) for i in order]})
    return rows


def _write_predictions(out: Path, rows: list[dict], top_k: int) -> None:
    atomic_write_json(out / "predictions.json", rows)
    flat = []
    for row in rows:
        entry = {"image": row["image"], "prediction": row["prediction"],
                 "confidence": "" if row["confidence"] is None else f"{row['confidence']:.6f}"}
        for k in range(top_k):
            has = k < len(row["top_classes"])
            entry[f"top{k + 1}_class"] = row["top_classes"][k] if has else ""
            entry[f"top{k + 1}_probability"] = f"{row['top_probabilities'][k]:.6f}" if has else ""
        entry["error"] = row.get("error", "")
        flat.append(entry)
    _write_csv(out / "predictions.csv", flat)
