"""Photos of none of the classes (issue 33): the scores by hand, the report's section, the
fitted rule in calibration.json and the sidecars, and the same verdicts in every runtime."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pokedex_trainer.cli.commands import evaluate_main, export_main, run_main
from pokedex_trainer.errors import UserError
from pokedex_trainer.evaluation import unknown as scoring

FAST = ["--latency_runs", "1", "--latency_batch", "2"]


def test_scores_and_measures_worked_out_by_hand():
    known, unknown = np.array([0.9, 0.8, 0.7, 0.6]), np.array([0.5, 0.7, 0.1])
    # 12 pairs: 0.9 and 0.8 beat all 3, 0.7 beats 2 and ties 1, 0.6 beats 2
    assert scoring.auroc(known, unknown) == pytest.approx(10.5 / 12)
    assert scoring.threshold_for_recall(known, 0.75) == 0.7  # keeps 3 of 4
    assert scoring.fpr_at_recall(known, unknown, 0.75) == pytest.approx(1 / 3)  # 0.7 >= 0.7
    logits = np.array([[2.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    found = scoring.scores(np.array([[0.8, 0.1, 0.1], [1 / 3] * 3]), logits)
    assert found["max_logit"].tolist() == [2.0, 1.0]
    assert found["energy"] == pytest.approx([np.log(np.exp(2) + 2), 1 + np.log(3)])
    bank = scoring.normalized(np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
    # knn: the similarity to the k-th most similar bank feature (k = 3 here: the whole bank)
    assert scoring.knn_similarity(np.array([[2.0, 0.0]]), bank) == pytest.approx([0.0])
    assert scoring.knn_similarity(np.array([[1.0, 1.0]]), bank) == \
        pytest.approx([np.cos(np.pi / 4)])
    curve = scoring.coverage_curve(np.array([0.9, 0.1, 0.5, 0.4]),
                                   np.array([True, False, True, False]), points=4)
    assert [p["accuracy"] for p in curve] == [1.0, 1.0, 2 / 3, 0.5]


def test_knn_contrast_worked_out_by_hand_and_the_same_inside_a_pytorch_file():
    """knn_contrast = knn - max(knn to the unknown bank, floor); the exported files' module
    computes the same (k-th highest by counting, as LiteRT needs)."""
    import torch

    from pokedex_trainer.exporters.torch_formats import KnownScore

    bank = scoring.normalized(np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
    unknown_bank = scoring.normalized(np.array([[-1.0, 0.0], [-1.0, 1.0]]))
    features = np.array([[2.0, 0.0], [-1.0, 0.0], [0.0, 3.0]])
    # knn (k = 3): 0, -1, 0; to the unknown bank (k = 2): cos 135 deg, cos 45 deg, 0
    found = scoring.scores(np.full((3, 3), 1 / 3), np.zeros((3, 3)), features, bank,
                           (unknown_bank, -0.5))
    assert found["knn"] == pytest.approx([0.0, -1.0, 0.0])
    assert found["knn_contrast"] == pytest.approx(
        [0.0 - (-0.5), -1.0 - np.cos(np.pi / 4), 0.0 - 0.0])
    assert scoring.contrast_floor(features, unknown_bank) == pytest.approx(
        np.quantile([-np.cos(np.pi / 4), np.cos(np.pi / 4), 0.0], scoring.CONTRAST_QUANTILE))
    rng = np.random.default_rng(0)
    bank = scoring.normalized(rng.normal(size=(40, 8))).astype(np.float32)
    unknown_bank = scoring.normalized(rng.normal(size=(15, 8))).astype(np.float32)
    features = rng.normal(size=(12, 8)).astype(np.float32)
    expected = scoring.scores(np.ones((12, 2)) / 2, np.zeros((12, 2)), features, bank,
                              (unknown_bank, 0.1))["knn_contrast"]
    module = KnownScore("knn_contrast", bank, scoring.knn_k(bank), unknown_bank, 0.1)
    inside = module(torch.from_numpy(features), torch.zeros(12, 2)).numpy()
    assert inside == pytest.approx(expected, abs=1e-5)
    # a training bank under k rows and a larger unknown bank: each bank keeps its own k
    small = bank[:5]
    expected_small = scoring.scores(np.ones((12, 2)) / 2, np.zeros((12, 2)), features, small,
                                    (unknown_bank, 0.1))["knn_contrast"]
    module = KnownScore("knn_contrast", small, scoring.knn_k(small), unknown_bank, 0.1)
    assert module(torch.from_numpy(features), torch.zeros(12, 2)).numpy() == \
        pytest.approx(expected_small, abs=1e-5)
    rule = scoring.fit_rule({"knn_contrast": expected}, 0.9, "by hand", score="knn_contrast",
                            bank_photos=40, contrast=(unknown_bank, 0.1))
    assert rule["floor"] == 0.1 and rule["unknown_bank_photos"] == 15
    assert scoring.checked_rule(rule, "here") == rule
    for broken in ({**rule, "floor": None}, {**rule, "floor": 3.0}, {**rule, "threshold": 2.5},
                   {**rule, "score": "energy", "floor": float("nan")},
                   {**rule, "unknown_bank_photos": "lots"}):
        with pytest.raises(UserError):
            scoring.checked_rule(broken, "here")


def test_the_unknown_photos_record_is_read_with_care(tmp_path, caplog):
    """The photos a run held out and trained on: a photo saved twice in the folder is used
    once (never on both sides); a damaged record is said, not silently ignored; a relative
    path, a device or a changed photo in it is never read."""
    from pokedex_trainer.data.unknown_photos import (HELD_OUT_RECORD, held_out_files,
                                                     record_held_out, unknown_training_samples)

    folder = _noise_folder(tmp_path / "unknown", 10, nested=False)
    for path in sorted(folder.iterdir()):
        (folder / f"copy_{path.name}").write_bytes(path.read_bytes())
    held = []
    with caplog.at_level("WARNING"):
        trained = unknown_training_samples(str(folder), tmp_path, [], cap=100, seed=42,
                                           held_out=held)
    assert "10 of its photos are copies of others" in caplog.text
    contents = [Path(p).read_bytes() for p, _ in trained] + [p.read_bytes() for p in held]
    assert len(held) == 2 and len(trained) == 8 and len(set(contents)) == 10
    run = tmp_path / "run"
    run.mkdir()
    record_held_out(run, held, [Path(p) for p, _ in trained])
    assert held_out_files(run) == held and len(held_out_files(run, "trained")) == 8
    data = json.loads((run / HELD_OUT_RECORD).read_text("utf-8"))
    data["trained"][0]["path"] = "relative.png"
    data["trained"][1]["path"] = "/dev/zero"  # read, it would never end
    (run / HELD_OUT_RECORD).write_text(json.dumps(data), "utf-8")
    assert len(held_out_files(run, "trained")) == 6
    for damaged in ('{"photos": "abc", "trained": []}', "{"):
        (run / HELD_OUT_RECORD).write_text(damaged, "utf-8")
        caplog.clear()
        with caplog.at_level("WARNING"):
            assert held_out_files(run) == []
        assert "is damaged" in caplog.text
    (run / HELD_OUT_RECORD).write_text(json.dumps({"photos": []}), "utf-8")  # an earlier run
    caplog.clear()
    with caplog.at_level("WARNING"):
        assert held_out_files(run, "trained") == []
    assert "damaged" not in caplog.text


def _noise_folder(folder, count=10, nested=True):
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(count):
        target = folder / ("deep" if nested and i % 2 else "") / f"noise_{i}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(target)
    return folder


@pytest.mark.parametrize("which", ["keras", pytest.param("torch", marks=pytest.mark.slow)])
def test_unknown_data_adds_every_score_to_the_report(which, keras_run, torch_run, tmp_path,
                                                     capsys):
    run = keras_run if which == "keras" else torch_run
    unknown = _noise_folder(tmp_path / "not_animals")
    out = tmp_path / "report"
    assert run_main(evaluate_main, ["--run_dir", str(run), "--unknown_data", str(unknown),
                                    "--output_dir", str(out), *FAST]) == 0
    printed = capsys.readouterr().out
    section = json.loads((out / "metrics.json").read_text("utf-8"))["unknown"]
    assert section["photos"] == 10
    assert set(section["scores"]) == {"max_softmax", "max_logit", "energy", "knn"}
    for row in section["scores"].values():
        assert 0.0 <= row["auroc"] <= 1.0 and 0.0 <= row["fpr_at_95_recall"] <= 1.0
    # the run's network gives features: knn ships (the best without unknown photos)
    assert section["shipped_rule"]["score"] == "knn"
    assert section["shipped_rule"]["output"] == "known_score"
    assert 0.0 <= section["named_as_species"] <= 1.0
    assert (out / "unknown_scores.png").is_file() and (out / "accuracy_coverage.png").is_file()
    assert "## Photos of none of the classes" in (out / "report.md").read_text("utf-8")
    assert "unknown photos (10): AUROC" in printed
    saved = json.loads((run / "calibration.json").read_text("utf-8"))
    assert saved["models"][next(run.glob("*_best.*")).name]["unknown"]["recall"] == 0.95


@pytest.mark.slow
def test_predict_applies_the_fitted_rule_and_exports_carry_it(keras_run, tiny_dataset,
                                                              tmp_path):
    """One verdict everywhere: the run's model (rule from calibration.json) and its ONNX and
    TFLite exports (rule from their sidecars) answer 'unknown' for the same photos."""
    from pokedex_trainer.evaluation.app_predictions import predict_command

    assert run_main(evaluate_main, ["--run_dir", str(keras_run), "--output_dir",
                                    str(tmp_path / "report"), "--unknown_recall", "0.6",
                                    *FAST]) == 0
    rule = json.loads((keras_run / "calibration.json").read_text("utf-8"))["unknown"]
    assert rule["recall"] == 0.6
    out = tmp_path / "export"
    assert run_main(export_main, ["--run_dir", str(keras_run), "--formats", "onnx,tflite",
                                  "--tflite_precisions", "float32", "--output_dir", str(out),
                                  "--check_images", "6"]) == 0
    photos = tmp_path / "photos"
    photos.mkdir()
    for path in sorted(tiny_dataset.rglob("*.jpg"))[::4][:10]:
        (photos / f"{path.parent.name}_{path.name}").write_bytes(path.read_bytes())
    _noise_folder(photos, 10, nested=False)
    answers = {}
    for model in (next(keras_run.glob("*_best.keras")), out / "tiny_keras_best.onnx",
                  out / "tiny_keras_best_float32.tflite"):
        if model.suffix != ".keras":
            sidecar = json.loads((model.parent / (model.name + ".json")).read_text("utf-8"))
            assert sidecar["unknown"]["threshold"] == rule["threshold"]
        run = keras_run if model.suffix == ".keras" else None  # the knn bank's photos
        rows = predict_command(str(photos), str(run) if run else None,
                               None if run else str(model), 3, None, str(tmp_path / "p"))
        for row in rows:
            assert (row["prediction"] == "unknown") == (row["known_score"] < rule["threshold"])
        answers[model.suffix] = [row["prediction"] for row in rows]
    assert "unknown" in answers[".keras"] and len(set(answers[".keras"])) > 1
    assert answers[".onnx"] == answers[".keras"] == answers[".tflite"]


def test_bad_unknown_input_is_one_line(keras_run, tiny_dataset, tmp_path, capsys):
    from test_hostile import _one_line_error

    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "sub" / "notes.txt").write_text("no photo")
    shared = tmp_path / "shared"
    shared.mkdir()
    twin = next(tiny_dataset.rglob("*.jpg"))
    (shared / "renamed.jpg").write_bytes(twin.read_bytes())
    cases = [(["--unknown_data", str(empty)], "holds no photo"),
             (["--unknown_data", str(shared)], "is also the class photo"),
             (["--unknown_data", str(tmp_path / "absent")], "is not a folder"),
             (["--unknown_recall", "1.5"], "between 0.5 and 0.999"),
             (["--unknown_data", str(empty), "--predict", str(twin)], "not with --predict")]
    for extra, message in cases:
        code = run_main(evaluate_main, ["--run_dir", str(keras_run), "--output_dir",
                                        str(tmp_path / "out"), *FAST, *extra])
        assert code == 2, extra
        assert message in _one_line_error(capsys), extra


def test_a_sidecar_rule_out_of_range_is_refused(keras_exports, tiny_dataset, tmp_path, capsys):
    from test_hostile import _copy_with_sidecar, _one_line_error

    model = _copy_with_sidecar(keras_exports / "export" / "tiny_keras_best.onnx",
                               tmp_path / "m.onnx")
    sidecar = model.with_name(model.name + ".json")
    data = json.loads(sidecar.read_text("utf-8"))
    data["unknown"] = {"score": "max_softmax", "threshold": 7}
    sidecar.write_text(json.dumps(data), encoding="utf-8")
    code = run_main(evaluate_main, ["--model", str(model), "--predict",
                                    str(next(tiny_dataset.rglob("*.jpg")))])
    assert code == 2
    assert "unknown" in _one_line_error(capsys)


@pytest.mark.slow
def test_the_documented_app_snippets_give_the_same_verdicts(keras_run, tiny_dataset, tmp_path,
                                                            monkeypatch, capsys):
    """docs/export.md's ONNX and TFLite snippets, run as printed on photos already at the
    model's size (so PIL's and OpenCV's area resizes agree; PNG, so their decoders agree),
    answer what --predict answers (but where float32 and float64 may round either way of the
    threshold)."""
    import re

    from PIL import Image

    from conftest import ROOT
    from pokedex_trainer.evaluation.app_predictions import predict_command

    assert run_main(evaluate_main, ["--run_dir", str(keras_run), "--output_dir",
                                    str(tmp_path / "report"), "--unknown_recall", "0.6",
                                    *FAST]) == 0
    out = tmp_path / "export"
    assert run_main(export_main, ["--run_dir", str(keras_run), "--formats", "onnx,tflite",
                                  "--tflite_precisions", "float16", "--output_dir", str(out),
                                  "--check_images", "6"]) == 0
    snippets = [block for block in re.findall(r"```python\n(.*?)```",
                                              (ROOT / "docs" / "export.md").read_text("utf-8"),
                                              re.S) if "meta = json.load" in block]
    assert len(snippets) == 2
    rng = np.random.default_rng(2)
    photos = [Image.open(p).convert("RGB").resize((32, 32))
              for p in sorted(tiny_dataset.rglob("*.jpg"))[::9][:4]]
    photos += [Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8))
               for _ in range(4)]
    monkeypatch.chdir(out)
    rule = json.loads((out / "tiny_keras_best.onnx.json").read_text("utf-8"))["unknown"]
    checked = 0
    for index, photo in enumerate(photos):
        photo.save(out / "foto.png")
        expected = predict_command(str(out / "foto.png"), None,
                                   str(out / "tiny_keras_best.onnx"), 3, None, None)[0]
        capsys.readouterr()
        for snippet in snippets:
            code = snippet.replace("mobilenet_v2_best", "tiny_keras_best").replace(
                "foto.jpg", "foto.png")
            exec(compile(code, "docs/export.md", "exec"), {})
            printed = capsys.readouterr().out.split()
            assert float(printed[1]) == pytest.approx(expected["confidence"], abs=1e-3)
            if abs(expected["known_score"] - rule["threshold"]) > 1e-3:
                checked += 1
                assert printed[0] == expected["prediction"], (index, printed, expected)
    assert checked >= 4


def test_predict_on_a_run_without_calibration_takes_the_rule_export_fitted(
        keras_exports, tiny_dataset, tmp_path, caplog):
    """Issue 33, one verdict everywhere: evaluate.py saved no rule, export.py fitted one into
    the sidecars; --predict with the run's own model answers as the exports do."""
    import shutil

    from pokedex_trainer.evaluation.app_predictions import predict_command

    run = tmp_path / "run"
    shutil.copytree(keras_exports, run)
    (run / "calibration.json").unlink(missing_ok=True)  # as if evaluate.py never ran
    shutil.rmtree(run / "export")
    assert run_main(export_main, ["--run_dir", str(run), "--formats", "onnx",
                                  "--check_images", "6"]) == 0
    sidecar = json.loads((run / "export" / "tiny_keras_best.onnx.json").read_text("utf-8"))
    rule = sidecar["unknown"]
    photos = tmp_path / "photos"
    photos.mkdir()
    for path in sorted(tiny_dataset.rglob("*.jpg"))[::4][:6]:
        (photos / f"{path.parent.name}_{path.name}").write_bytes(path.read_bytes())
    _noise_folder(photos, 4, nested=False)
    with caplog.at_level("INFO"):
        rows = predict_command(str(photos), str(run), None, 3, None, str(tmp_path / "p"))
    assert "the one export.py fitted (tiny_keras_best" in caplog.text
    assert rule["score"] == "knn"
    for row in rows:
        assert (row["prediction"] == "unknown") == (row["known_score"] < rule["threshold"])
    sidecar["unknown"]["threshold"] = 2.0  # broken: passed over, never trusted
    (run / "export" / "tiny_keras_best.onnx.json").write_text(json.dumps(sidecar), "utf-8")
    for other in (run / "export").glob("*.json"):
        if other.name != "tiny_keras_best.onnx.json":
            other.unlink()
    caplog.clear()
    with caplog.at_level("INFO"):
        rows = predict_command(str(photos), str(run), None, 3, None, str(tmp_path / "q"))
    assert "export.py fitted" not in caplog.text
    assert all(row["prediction"] != "unknown" for row in rows)


@pytest.mark.slow
def test_every_pytorch_export_computes_the_rule_score_and_gives_the_same_verdicts(
        torch_run, tiny_dataset, tmp_path):
    """The knn rule of a PyTorch run: TorchScript, torch.export, ONNX and TFLite (one image
    per call: litert-torch fixes the batch) each compute known_score themselves, and answer
    'unknown' for the same photos as the run's .pth with its bank."""
    import shutil

    from pokedex_trainer.evaluation.app_predictions import predict_command

    run = tmp_path / "run"
    shutil.copytree(torch_run, run)
    shutil.rmtree(run / "export", ignore_errors=True)
    assert run_main(evaluate_main, ["--run_dir", str(run), "--output_dir",
                                    str(tmp_path / "report"), "--unknown_recall", "0.6",
                                    *FAST]) == 0
    rule = json.loads((run / "calibration.json").read_text("utf-8"))["unknown"]
    assert rule["score"] == "knn" and rule["output"] == "known_score"
    bank = np.load(next((run / "unknown_bank").glob("*.npy")))
    assert len(np.unique(bank, axis=0)) == len(bank) == rule["bank_photos"]
    assert run_main(export_main, ["--run_dir", str(run), "--formats",
                                  "torchscript,torch_export,onnx,tflite",
                                  "--check_images", "6"]) == 0
    photos = tmp_path / "photos"
    photos.mkdir()
    for path in sorted(tiny_dataset.rglob("*.jpg"))[::4][:8]:
        (photos / f"{path.parent.name}_{path.name}").write_bytes(path.read_bytes())
    _noise_folder(photos, 8, nested=False)
    own = predict_command(str(photos), str(run), None, 3, None, str(tmp_path / "own"))
    assert {"unknown"} != {r["prediction"] for r in own} and \
        "unknown" in {r["prediction"] for r in own}
    for name in ("tiny_torch_best.pt", "tiny_torch_best.pt2", "tiny_torch_best.onnx",
                 "tiny_torch_best_float32.tflite"):
        model = run / "export" / name
        assert json.loads(model.with_name(name + ".json").read_text("utf-8"))["unknown"] == rule
        rows = predict_command(str(photos), None, str(model), 3, None, str(tmp_path / name))
        for mine, theirs in zip(own, rows):
            assert theirs["known_score"] == pytest.approx(mine["known_score"], abs=1e-4)
            if abs(mine["known_score"] - rule["threshold"]) > 1e-4:
                assert theirs["prediction"] == mine["prediction"], name


def test_a_damaged_feature_bank_is_computed_again(torch_run, tmp_path, caplog):
    """unknown_bank/*.npy is a cache: a bank of the wrong width, with NaN, negated, cut or
    truncated is never used (a warning, then the bank is computed again from the photos), a
    pickled one never runs, and a bank that cannot be kept is still used."""
    import shutil

    from pokedex_trainer.evaluation.known_score import feature_bank
    from pokedex_trainer.evaluation.predict import load_predictor

    run = tmp_path / "run"
    shutil.copytree(torch_run, run)
    predictor = load_predictor(run / "tiny_torch_best.pth")
    good = feature_bank(predictor, run)
    target = run / "unknown_bank" / "tiny_torch_best.pth.npy"
    assert target.is_file() and np.allclose(np.linalg.norm(good, axis=1), 1.0, atol=1e-5)
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    for damage in (lambda b: b[:, :3], lambda b: b * np.nan, lambda b: -2 * b,
                   lambda b: np.array([Exploit()], dtype=object)):
        damaged = damage(good)
        np.save(target, damaged, allow_pickle=True)
        caplog.clear()
        with caplog.at_level("WARNING"):
            again = feature_bank(predictor, run)
        np.testing.assert_array_equal(again, good)
        assert not marker.exists()
        assert "is damaged or was edited" in caplog.text  # a pickle: never even unpickled
    # a cut or truncated file, and a bank folder that cannot be written: computed, still used
    np.save(target, good[:1])
    assert np.array_equal(feature_bank(predictor, run), good)
    target.write_bytes(target.read_bytes()[:100])
    assert np.array_equal(feature_bank(predictor, run), good)
    shutil.rmtree(run / "unknown_bank")
    (run / "unknown_bank").write_text("not a folder")
    with caplog.at_level("WARNING"):
        assert np.array_equal(feature_bank(predictor, run), good)
    assert "could not keep the feature bank" in caplog.text


@pytest.mark.slow
def test_an_exported_file_keeps_its_own_rule_and_a_run_read_elsewhere_is_not_written(
        torch_run, tiny_dataset, tmp_path, capsys, caplog):
    """Found by a probe: evaluating an exported file wrote a max-softmax rule for it into the
    run's calibration.json, which --predict then preferred over the score the file computes;
    --calibration FILE --output_dir DIR wrote the knn bank into the run; a rule with a broken
    recall crashed --predict; photos added to the unknown folder after training changed which
    ones were 'held out'."""
    import shutil

    from test_hostile import _one_line_error

    from pokedex_trainer.data.unknown_photos import HELD_OUT_RECORD, held_out_files
    from pokedex_trainer.evaluation.app_predictions import predict_command

    run = tmp_path / "run"
    shutil.copytree(torch_run, run)
    shutil.rmtree(run / "unknown_bank", ignore_errors=True)
    (run / "calibration.json").unlink(missing_ok=True)
    before = sorted(p.relative_to(run).as_posix() for p in run.rglob("*"))
    elsewhere = tmp_path / "cal.json"
    assert run_main(evaluate_main, ["--run_dir", str(run), "--calibration", str(elsewhere),
                                    "--output_dir", str(tmp_path / "r0"), *FAST]) == 0
    assert sorted(p.relative_to(run).as_posix() for p in run.rglob("*")) == before
    assert json.loads(elsewhere.read_text("utf-8"))["unknown"]["score"] == "knn"
    assert run_main(evaluate_main, ["--run_dir", str(run), "--output_dir",
                                    str(tmp_path / "r1"), *FAST]) == 0
    assert run_main(export_main, ["--run_dir", str(run), "--formats", "onnx",
                                  "--check_images", "6"]) == 0
    model = run / "export" / "tiny_torch_best.onnx"
    own = json.loads(model.with_name(model.name + ".json").read_text("utf-8"))["unknown"]
    photos = _noise_folder(tmp_path / "photos", 6, nested=False)
    first = predict_command(str(photos), None, str(model), 3, None, str(tmp_path / "p1"))
    assert run_main(evaluate_main, ["--model", str(model), "--output_dir",
                                    str(tmp_path / "r2"), *FAST]) == 0
    # the file keeps its own temperature and rule: nothing of the run's is laid over them
    assert model.name not in json.loads((run / "calibration.json").read_text("utf-8"))["models"]
    report = json.loads((tmp_path / "r2" / "metrics.json").read_text("utf-8"))
    assert report["calibration"]["unknown"] == own
    second = predict_command(str(photos), None, str(model), 3, None, str(tmp_path / "p2"))
    assert [r["prediction"] for r in first] == [r["prediction"] for r in second]
    assert all("known_score" in r for r in second)
    # the run evaluated again with another recall: the export answers as before, and says why
    assert run_main(evaluate_main, ["--run_dir", str(run), "--output_dir",
                                    str(tmp_path / "r3"), "--unknown_recall", "0.6",
                                    *FAST]) == 0
    with caplog.at_level("WARNING"):
        third = predict_command(str(photos), None, str(model), 3, None, str(tmp_path / "p3"))
    assert [r["prediction"] for r in third] == [r["prediction"] for r in first]
    assert "was exported before the run's latest evaluation" in caplog.text
    data = json.loads((run / "calibration.json").read_text("utf-8"))
    data["unknown"]["recall"] = None
    data["models"]["tiny_torch_best.pth"]["unknown"]["recall"] = None
    (run / "calibration.json").write_text(json.dumps(data), "utf-8")
    assert run_main(evaluate_main, ["--run_dir", str(run), "--predict", str(photos)]) == 2
    assert "recall must be a share" in _one_line_error(capsys)
    # the held-out record: later photos in the folder are not 'held out'
    unknown = _noise_folder(tmp_path / "unknown", 20, nested=False)
    from conftest import train_tiny_run

    taught = train_tiny_run(tiny_dataset, tmp_path / "t", "tiny_torch", "--epochs", "1",
                            "--unknown_dir", str(unknown))
    held = held_out_files(taught)
    assert len(held) == 4 and (taught / HELD_OUT_RECORD).is_file()
    _noise_folder(tmp_path / "more", 10, nested=False)
    for extra in (tmp_path / "more").iterdir():
        shutil.copyfile(extra, unknown / f"late_{extra.name}")
    assert held_out_files(taught) == held
    held[0].write_bytes(b"changed")
    assert held_out_files(taught) == held[1:]


@pytest.mark.slow
@pytest.mark.parametrize("network, formats", [
    ("tiny_torch", "torchscript,onnx,tflite"), ("tiny_keras", "onnx,tflite")])
def test_a_run_with_an_unknown_folder_carries_knn_contrast_into_every_export(
        network, formats, tiny_dataset, tmp_path, caplog):
    """A run trained with --unknown_dir records the photos it trained on; evaluate.py builds
    their bank and the rule's floor; with knn_contrast as the rule, every exported file
    computes it itself and answers 'unknown' for the same photos as the run's own model."""
    from conftest import force_unknown_rule, train_tiny_run

    from pokedex_trainer.data.unknown_photos import held_out_files
    from pokedex_trainer.evaluation.app_predictions import predict_command

    unknown = _noise_folder(tmp_path / "unknown", 20, nested=False)
    run = train_tiny_run(tiny_dataset, tmp_path / "t", network, "--epochs", "2",
                         "--unknown_dir", str(unknown))
    trained = held_out_files(run, "trained")
    assert len(trained) == 16 and not set(trained) & set(held_out_files(run))
    assert run_main(evaluate_main, ["--run_dir", str(run), "--output_dir",
                                    str(tmp_path / "report"), *FAST]) == 0
    data = json.loads((run / "calibration.json").read_text("utf-8"))
    rule = data["unknown"]
    assert "knn_contrast" in rule["chosen_on"]["auroc"]
    assert rule["unknown_bank_photos"] == 16 and -1.0 <= rule["floor"] <= 1.0
    assert len(list((run / "unknown_bank").glob("*.unknown.npy"))) == 1
    # a copy of that folder measured as unknown photos: the report says it is not fair
    import shutil

    copy = tmp_path / "copy_of_unknown"
    shutil.copytree(unknown, copy)
    caplog.clear()
    with caplog.at_level("WARNING"):
        assert run_main(evaluate_main, ["--run_dir", str(run), "--unknown_data", str(copy),
                                        "--output_dir", str(tmp_path / "copied"), *FAST]) == 0
    assert "20 photos of --unknown_data" in caplog.text and "optimistic" in caplog.text
    photos = tmp_path / "photos"
    photos.mkdir()
    for path in sorted(tiny_dataset.rglob("*.jpg"))[::4][:8]:
        (photos / f"{path.parent.name}_{path.name}").write_bytes(path.read_bytes())
    _noise_folder(photos, 8, nested=False)

    force_unknown_rule(run, score="knn_contrast", threshold=0.0)
    scores = [r["known_score"] for r in
              predict_command(str(photos), str(run), None, 3, None, str(tmp_path / "p0"))]
    forced = force_unknown_rule(run, threshold=float(np.median(scores)))
    own = predict_command(str(photos), str(run), None, 3, None, str(tmp_path / "own"))
    assert "unknown" in {r["prediction"] for r in own} != {"unknown"}
    assert run_main(export_main, ["--run_dir", str(run), "--formats", formats,
                                  "--check_images", "6"]) == 0
    exported = [p for p in (run / "export").iterdir()
                if p.suffix in (".pt", ".onnx", ".tflite") and "int8" not in p.name]
    assert len(exported) >= len(formats.split(","))
    for model in exported:
        sidecar = json.loads(model.with_name(model.name + ".json").read_text("utf-8"))
        assert sidecar["unknown"] == forced
        rows = predict_command(str(photos), None, str(model), 3, None,
                               str(tmp_path / model.name))
        tolerance = 1e-2 if "float16" in model.name else 1e-4  # half-precision weights
        for mine, theirs in zip(own, rows):
            assert theirs["known_score"] == pytest.approx(mine["known_score"], abs=tolerance)
            if abs(mine["known_score"] - forced["threshold"]) > tolerance:
                assert theirs["prediction"] == mine["prediction"], model.name
    # trained photos that cannot be read (recorded as they are): the run is still evaluated,
    # knn_contrast is left out with a warning
    from pokedex_trainer.data.unknown_photos import HELD_OUT_RECORD, content_hash

    record = json.loads((run / HELD_OUT_RECORD).read_text("utf-8"))
    for entry in record["trained"]:
        Path(entry["path"]).write_bytes(b"not a photo")
        entry["hash"] = content_hash(Path(entry["path"]))
    (run / HELD_OUT_RECORD).write_text(json.dumps(record), "utf-8")
    for cached in (run / "unknown_bank").glob("*.unknown.*"):
        cached.unlink()
    (run / "calibration.json").unlink()
    assert run_main(evaluate_main, ["--run_dir", str(run), "--output_dir",
                                    str(tmp_path / "report2"), *FAST]) == 0
    again = json.loads((run / "calibration.json").read_text("utf-8"))["unknown"]
    assert "knn_contrast" not in again["chosen_on"]["auroc"] and "floor" not in again
