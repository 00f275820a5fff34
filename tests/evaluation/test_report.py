"""evaluate.py: metrics worked out by hand, calibration, pictures, exported files, ensembles,
predictions for the app, and --kfold on the trainer."""

from __future__ import annotations

import csv
import json
import math
import shutil

import numpy as np
import pytest

from conftest import train_tiny_run
from pokedex_trainer.cli.commands import evaluate_main, run_main
from pokedex_trainer.data.synthetic import write_dataset

FAST = ["--latency_runs", "3", "--latency_batch", "4"]

# 6 images, 3 classes: predicted [0, 1, 1, 1, 2, 0] for true [0, 0, 1, 1, 2, 2]
LABELS = np.array([0, 0, 1, 1, 2, 2])
PROBS = np.array([[0.70, 0.20, 0.10], [0.10, 0.60, 0.30], [0.20, 0.50, 0.30],
                  [0.25, 0.40, 0.35], [0.10, 0.10, 0.80], [0.50, 0.30, 0.20]])


def test_metrics_match_values_worked_out_by_hand():
    from pokedex_trainer.evaluation.metrics import compute_metrics, top_k_accuracy

    m = compute_metrics(LABELS, PROBS, ["a", "b", "c"])
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert top_k_accuracy(LABELS, PROBS, 2) == pytest.approx(4 / 6)
    assert m["top5_accuracy"] == 1.0  # 3 classes: every class is in the top 5
    assert m["loss"] == pytest.approx(-np.mean(np.log([0.7, 0.1, 0.5, 0.4, 0.8, 0.2])))
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    a, b, c = (m["per_class"][k] for k in "abc")
    assert (a["precision"], a["recall"], a["f1-score"]) == pytest.approx((0.5, 0.5, 0.5))
    assert (b["precision"], b["recall"], b["f1-score"]) == pytest.approx((2 / 3, 1.0, 0.8))
    assert (c["precision"], c["recall"], c["f1-score"]) == pytest.approx((1.0, 0.5, 2 / 3))
    assert m["macro_avg"]["f1-score"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    assert [(p["true"], p["predicted"], p["count"]) for p in m["most_confused"]] == \
        [("a", "b", 1), ("c", "a", 1)]


def test_expected_calibration_error_by_hand():
    from pokedex_trainer.evaluation.calibration import expected_calibration_error

    probs = np.array([[0.9, 0.1]] * 4 + [[0.3, 0.7]] * 2)
    labels = np.array([0, 0, 0, 1, 1, 1])
    # bin of 0.9: accuracy 3/4 -> |0.75 - 0.9|; bin of 0.7: accuracy 1 -> |1 - 0.7|
    assert expected_calibration_error(probs, labels) == pytest.approx(4 / 6 * 0.15 + 2 / 6 * 0.3)


def test_temperature_scaling_fixes_over_confident_logits():
    from pokedex_trainer.evaluation.calibration import (apply_temperature, expected_calibration_error,
                                             fit_temperature)
    from pokedex_trainer.evaluation.predict import softmax

    rng = np.random.default_rng(0)
    logits = rng.normal(0, 1.5, (4000, 5))
    labels = np.array([rng.choice(5, p=p) for p in softmax(logits)])
    over_confident = softmax(3.0 * logits)  # the truth is softmax(logits)
    temperature = fit_temperature(over_confident[:2000], labels[:2000])
    assert temperature == pytest.approx(3.0, rel=0.15)
    before = expected_calibration_error(over_confident[2000:], labels[2000:])
    after = expected_calibration_error(apply_temperature(over_confident[2000:], temperature),
                                       labels[2000:])
    assert after < before / 3
    assert (apply_temperature(over_confident, temperature).argmax(1) ==
            over_confident.argmax(1)).all()


@pytest.fixture(scope="module")
def run_report(keras_run, monkeypatch_module):
    """evaluate.py --run_dir, with the temperature fit spied on."""
    import pokedex_trainer.evaluation.members as evaluating

    seen = {}
    original = evaluating.fit_temperature

    def spy(probabilities, labels):
        seen["probabilities"], seen["labels"] = probabilities, labels
        return original(probabilities, labels)

    monkeypatch_module.setattr(evaluating, "fit_temperature", spy)
    assert run_main(evaluate_main, ["--run_dir", str(keras_run), *FAST]) == 0
    return keras_run / "evaluation", seen


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def test_run_report_has_every_part(run_report, keras_run):
    out, _ = run_report
    for name in ("metrics.json", "classification_report.csv", "report.md",
                 "confusion_matrix.png", "confusion_matrix_normalized.png", "reliability.png",
                 "mistakes.png", "per_class_f1.png"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    manifest = json.loads((keras_run / "split_manifest.json").read_text(encoding="utf-8"))
    assert metrics["images"] == len(manifest["splits"]["test"])
    for key in ("accuracy", "top5_accuracy", "loss", "ece", "macro_avg", "weighted_avg"):
        assert key in metrics
    assert set(metrics["per_class"]) == {"Gato", "León", "Perro"}
    latency = metrics["latency"]
    assert latency["batch1_median_ms"] > 0 and latency["throughput_images_per_s"] > 0
    assert latency["runtime"] == "keras" and latency["device"] and latency["threads"] >= 1
    with open(out / "classification_report.csv", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["class"] for r in rows] == ["Gato", "León", "Perro", "macro avg", "weighted avg"]
    report = (out / "report.md").read_text(encoding="utf-8")
    for picture in ("confusion_matrix.png", "reliability.png", "mistakes.png",
                    "per_class_f1.png", "classification_report.csv"):
        assert f"({picture})" in report


def test_temperature_is_fitted_on_the_validation_split_and_saved(run_report, keras_run):
    from pokedex_trainer.evaluation.members import predict_images
    from pokedex_trainer.evaluation.predict import load_predictor
    from pokedex_trainer.runs.finished import run_split

    _, seen = run_report
    predictor = load_predictor(keras_run / "tiny_keras_best.keras")
    val_probs, val_labels = predict_images(predictor, run_split(keras_run, "val"))
    np.testing.assert_array_equal(seen["labels"], val_labels)
    np.testing.assert_allclose(seen["probabilities"], val_probs, atol=1e-6)
    saved = json.loads((keras_run / "calibration.json").read_text(encoding="utf-8"))
    assert saved["fitted_on"] == f"validation split ({len(val_labels)} images)"
    assert 0.05 <= saved["temperature"] <= 20


def test_every_png_is_a_valid_image_of_the_expected_size(run_report, tmp_path):
    from PIL import Image

    from pokedex_trainer.evaluation import plots

    out, _ = run_report
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    mistakes = max(1, len(metrics["most_confident_mistakes"]))
    expected = {"confusion_matrix.png": plots.confusion_figsize(3),
                "confusion_matrix_normalized.png": plots.confusion_figsize(3),
                "reliability.png": (6, 6), "per_class_f1.png": plots.bars_figsize(3),
                "mistakes.png": plots.gallery_figsize(mistakes)}
    for name, (width, height) in expected.items():
        with Image.open(out / name) as image:
            image.verify()
        with Image.open(out / name) as image:
            assert image.format == "PNG"
            assert image.size == (round(width * plots.DPI), round(height * plots.DPI)), name
    # 60 classes: the matrix grows so each cell and label keeps its room
    names = [f"Especie_{i:02d}" for i in range(60)]
    matrix = np.random.default_rng(0).integers(0, 9, (60, 60))
    big = plots.plot_confusion(matrix, names, tmp_path / "big.png", normalized=True)
    with Image.open(big) as image:
        assert image.size[1] >= 60 * 30  # at least 30 px per class row
        assert image.size == tuple(round(v * plots.DPI) for v in plots.confusion_figsize(60))


def test_exported_onnx_and_tflite_report_the_same_as_the_keras_model(keras_exports, run_report):
    keras_metrics = json.loads((run_report[0] / "metrics.json").read_text(encoding="utf-8"))
    for name in ("tiny_keras_best.onnx", "tiny_keras_best_float32.tflite"):
        exported = keras_exports / "export" / name
        assert run_main(evaluate_main, ["--model", str(exported), *FAST]) == 0
        out = keras_exports / "evaluation" / name
        metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
        assert metrics["runtime"] in ("onnxruntime", "litert")
        assert metrics["accuracy"] == keras_metrics["accuracy"]
        assert metrics["confusion_matrix"] == keras_metrics["confusion_matrix"]
        assert metrics["loss"] == pytest.approx(keras_metrics["loss"], abs=1e-4)


def test_ensemble_of_two_runs_across_frameworks_reports_three_result_sets(keras_run,
                                                                          torch_run, tmp_path):
    out = tmp_path / "ensemble"
    assert run_main(evaluate_main, ["--ensemble", str(keras_run), str(torch_run),
                                    "--output_dir", str(out)]) == 0
    report = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert set(report["members"]) == {keras_run.name, torch_run.name}
    with open(out / "ensemble.csv", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["model"] for r in rows] == ["ensemble", keras_run.name, torch_run.name]
    for row in rows:
        assert 0 <= float(row["accuracy"]) <= 1 and math.isfinite(float(row["loss"]))
    images = report["ensemble"]["images"]
    assert all(m["images"] == images for m in report["members"].values())


def test_predict_folder_writes_one_row_per_image_and_unknown_below_threshold(
        keras_run, tiny_dataset, tmp_path, capsys):
    out = tmp_path / "predictions"
    folder = tiny_dataset / "León"
    assert run_main(evaluate_main, ["--run_dir", str(keras_run), "--predict", str(folder),
                                    "--threshold", "0.5", "--top_k", "2",
                                    "--output_dir", str(out)]) == 0
    with open(out / "predictions.csv", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(list(folder.iterdir())) == 12
    for row in rows:
        confidence = float(row["confidence"])
        assert row["prediction"] == ("unknown" if confidence < 0.5 else row["top1_class"])
        assert float(row["top1_probability"]) >= float(row["top2_probability"])
    assert len(json.loads((out / "predictions.json").read_text(encoding="utf-8"))) == 12
    assert run_main(evaluate_main, ["--run_dir", str(keras_run), "--predict",
                                    str(rows[0]["image"]), "--threshold", "1"]) == 0
    assert ": unknown" in capsys.readouterr().out
    for wrong in ("1.01", "-0.1"):  # the same bound as export.py's --threshold
        assert run_main(evaluate_main, ["--run_dir", str(keras_run), "--predict",
                                        str(rows[0]["image"]), "--threshold", wrong]) == 2
        assert "between 0 (never 'unknown') and 1" in capsys.readouterr().err


def test_mismatched_classes_and_missing_model_are_one_line_errors(keras_run, tmp_path,
                                                                  capsys):
    other = write_dataset(tmp_path / "other", classes=("Gato", "Perro", "Zorro"), per_class=3,
                          size=(32, 32), seed=2)
    assert run_main(evaluate_main, ["--run_dir", str(keras_run), "--data_path",
                                    str(other)]) == 2
    err = capsys.readouterr().err.strip()
    assert "do not match" in err and "Zorro" in err and len(err.splitlines()) == 1
    assert run_main(evaluate_main, ["--model", str(tmp_path / "missing.keras")]) == 2
    err = capsys.readouterr().err.strip()
    assert "does not exist" in err and len(err.splitlines()) == 1


def test_loose_model_is_evaluated_on_a_labelled_folder(keras_run, tiny_dataset, tmp_path):
    loose = tmp_path / "tiny_keras_best.keras"
    shutil.copy(keras_run / "tiny_keras_best.keras", loose)
    shutil.copy(keras_run / "class_names.json", tmp_path / "class_names.json")
    assert run_main(evaluate_main, ["--model", str(loose), "--data_path", str(tiny_dataset),
                                    *FAST]) == 0
    metrics = json.loads((tmp_path / "evaluation_tiny_keras_best.keras" / "metrics.json")
                         .read_text(encoding="utf-8"))
    assert metrics["images"] == 36
    # a loose file has no validation split and nothing saved: uncalibrated, and it says so
    assert metrics["calibration"]["fitted_on"] == \
        "nothing: no validation split, probabilities are uncalibrated"
    assert metrics["calibration"]["temperature"] == 1.0


def test_kfold_trains_one_run_per_fold_and_summarizes(tiny_dataset, tmp_path, capsys):
    train_tiny_run(tiny_dataset, tmp_path, "tiny_keras", "--kfold", "2", "--epochs", "1")
    runs = tmp_path / "runs"
    summary = json.loads((runs / "tiny_keras_tiny_kfold2.json").read_text(encoding="utf-8"))
    assert summary["folds"] == 2
    stats = summary["metrics"]["test_accuracy"]
    assert len(stats["folds"]) == 2
    assert stats["mean"] == pytest.approx(np.mean(stats["folds"]))
    assert stats["std"] == pytest.approx(np.std(stats["folds"], ddof=1))
    tests = []
    for fold in (1, 2):
        manifest = json.loads((runs / f"tiny_keras_tiny_fold{fold}of2" / "split_manifest.json")
                              .read_text(encoding="utf-8"))
        tests.append({p for p, _ in manifest["splits"]["test"]})
        train_val = {p for s in ("train", "val") for p, _ in manifest["splits"][s]}
        assert not tests[-1] & train_val
    assert not tests[0] & tests[1] and len(tests[0] | tests[1]) == 36
    assert "±" in capsys.readouterr().out


def test_predict_with_a_loose_export_uses_the_temperature_in_its_sidecar(keras_exports,
                                                                        tiny_dataset, tmp_path):
    from pokedex_trainer.evaluation.calibration import apply_temperature
    from pokedex_trainer.evaluation.app_predictions import predict_command
    from pokedex_trainer.evaluation.predict import load_predictor

    for suffix in ("", ".json"):
        shutil.copy(keras_exports / "export" / f"tiny_keras_best.onnx{suffix}",
                    tmp_path / f"model.onnx{suffix}")
    sidecar = json.loads((tmp_path / "model.onnx.json").read_text(encoding="utf-8"))
    sidecar["temperature"] = 2.5
    (tmp_path / "model.onnx.json").write_text(json.dumps(sidecar), encoding="utf-8")
    photo = next((tiny_dataset / "Gato").iterdir())
    row = predict_command(str(photo), None, str(tmp_path / "model.onnx"), 3, None, None)[0]
    from pokedex_trainer.data.augment import build_eval_transform
    from pokedex_trainer.data.images import read_image

    image = build_eval_transform((32, 32))(image=read_image(photo))["image"]
    expected = apply_temperature(load_predictor(tmp_path / "model.onnx").predict(image[None]),
                                 2.5)[0]
    assert row["confidence"] == pytest.approx(float(expected.max()), abs=1e-6)
    assert row["top_probabilities"] == pytest.approx(sorted(expected, reverse=True), abs=1e-6)


def test_ensemble_of_runs_with_different_test_splits_is_refused(keras_run, torch_run,
                                                                 tmp_path, capsys):
    other = tmp_path / "other_split"
    shutil.copytree(keras_run, other, ignore=shutil.ignore_patterns("export", "evaluation*"))
    manifest = json.loads((other / "split_manifest.json").read_text(encoding="utf-8"))
    manifest["splits"]["train"].append(manifest["splits"]["test"].pop())  # one image moves
    (other / "split_manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    assert run_main(evaluate_main, ["--ensemble", str(torch_run), str(other)]) == 2
    err = capsys.readouterr().err.strip()
    assert "different test splits" in err and len(err.splitlines()) == 1


def test_a_kfold_fold_is_locked_and_leaves_nothing_when_stopped_before_its_first_epoch(
        tiny_dataset, tmp_path, monkeypatch, capsys):
    """Each fold goes through the run lifecycle of any run: the run lock while it trains, and
    its directory removed again when bad input stops it before its first epoch."""
    import pokedex_trainer.runs.lifecycle as training
    from pokedex_trainer.cli.commands import run_main, train_main
    from pokedex_trainer.errors import UserError
    from pokedex_trainer.runs.lock import RunLock

    locked = []
    real_acquire = RunLock.acquire

    def acquire(self):
        locked.append(self.run_dir.name)
        return real_acquire(self)

    def refuse(framework):
        raise UserError("this fold's input is refused")

    monkeypatch.setattr(RunLock, "acquire", acquire)
    monkeypatch.setattr(training, "load_training_backend", refuse)
    argv = ["--data_path", str(tiny_dataset), "--model_type", "tiny_keras", "--weights",
            "none", "--kfold", "2", "--output_dir", str(tmp_path / "runs"), "--log_dir",
            str(tmp_path / "tb"), "--run_name", "k", "--workers", "0"]
    assert run_main(train_main, argv) == 2
    assert "this fold's input is refused" in capsys.readouterr().err
    assert locked == ["k_fold1of2"]  # the first fold, locked; the k-fold stopped there
    assert not (tmp_path / "runs" / "k_fold1of2").exists()


def test_kfold_with_export_is_a_one_line_error_before_training(tiny_dataset, tmp_path, capsys):
    from pokedex_trainer.cli.commands import train_main

    assert run_main(train_main, ["--data_path", str(tiny_dataset), "--kfold", "2", "--export",
                                 "--output_dir", str(tmp_path / "runs")]) == 2
    assert "--kfold" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
