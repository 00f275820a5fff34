"""Hostile input, second round (issue 26, item 9): a bad --opset is one line before any work,
and a folder named by --output_dir keeps the user's own files: export.py and evaluate.py
overwrite only what they can tell they wrote there, and re-running into that folder works."""

from __future__ import annotations

import json
import shutil

import pytest

from pokedex_trainer.cli.commands import evaluate_main, export_main, run_main
from pokedex_trainer.user_io.output_guard import RECORD

FAST_EXPORT = ["--check_images", "6", "--calibration_images", "6"]
FAST_EVALUATE = ["--latency_runs", "1", "--latency_batch", "2"]
REPORT_FILES = ("report.md", "metrics.json", "classification_report.csv", "confusion_matrix.png",
                "confusion_matrix_normalized.png", "reliability.png", "per_class_f1.png",
                "mistakes.png")
USER_BYTES = b"my own notes, not the tool's\n"


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    return err


@pytest.mark.parametrize("model, opset", [("torch", "0"), ("torch", "999"), ("torch", "17"),
                                          ("keras", "19"), ("keras", "-1")])
def test_an_opset_the_converter_cannot_write_is_one_line_before_any_work(
        model, opset, torch_run, keras_run, tmp_path, capsys):
    run = torch_run if model == "torch" else keras_run
    out = tmp_path / "out"
    code = run_main(export_main, ["--run_dir", str(run), "--formats", "onnx", "--opset", opset,
                                  "--output_dir", str(out), *FAST_EXPORT])
    assert code == 2
    assert f"--opset {opset}" in _one_line_error(capsys)
    assert not out.exists()


@pytest.mark.parametrize("name", ["exports.json", "tiny_torch_best.pt",
                                  "tiny_torch_best.pt.json"])
def test_export_keeps_a_users_own_file_in_output_dir(name, torch_run, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / name).write_bytes(USER_BYTES)
    code = run_main(export_main, ["--run_dir", str(torch_run), "--formats", "torchscript",
                                  "--output_dir", str(out), *FAST_EXPORT])
    assert code == 2
    assert name in _one_line_error(capsys)
    assert (out / name).read_bytes() == USER_BYTES
    assert sorted(p.name for p in out.iterdir()) == [name]  # refused before any work


def test_export_reruns_into_its_own_folder_but_not_over_a_file_edited_since(torch_run, tmp_path,
                                                                            capsys):
    out = tmp_path / "exports"
    argv = ["--run_dir", str(torch_run), "--formats", "torchscript", "--output_dir", str(out),
            *FAST_EXPORT]
    assert run_main(export_main, argv) == 0
    assert run_main(export_main, argv) == 0
    recorded = json.loads((out / RECORD).read_text("utf-8"))["files"]
    written = {p.name for p in out.iterdir() if p.name != RECORD}
    assert written == {"exports.json", "tiny_torch_best.pt", "tiny_torch_best.pt.json"}
    assert written <= set(recorded)  # every file it wrote is recorded as its own
    capsys.readouterr()
    (out / "exports.json").write_bytes(USER_BYTES)  # the user's now
    assert run_main(export_main, argv) == 2
    assert "exports.json" in _one_line_error(capsys)
    assert (out / "exports.json").read_bytes() == USER_BYTES


@pytest.mark.parametrize("name", REPORT_FILES)
def test_evaluate_keeps_a_users_own_report_file_in_output_dir(name, torch_run, tmp_path, capsys):
    out = tmp_path / "report"
    out.mkdir()
    (out / name).write_bytes(USER_BYTES)
    code = run_main(evaluate_main, ["--run_dir", str(torch_run), "--output_dir", str(out),
                                    *FAST_EVALUATE])
    assert code == 2
    assert name in _one_line_error(capsys)
    assert (out / name).read_bytes() == USER_BYTES
    assert sorted(p.name for p in out.iterdir()) == [name]


def test_evaluate_reruns_into_its_own_folder(torch_run, tmp_path, capsys):
    out = tmp_path / "report"
    argv = ["--run_dir", str(torch_run), "--output_dir", str(out), *FAST_EVALUATE]
    assert run_main(evaluate_main, argv) == 0
    assert run_main(evaluate_main, argv) == 0
    assert set(REPORT_FILES) <= set(json.loads((out / RECORD).read_text("utf-8"))["files"])
    capsys.readouterr()
    (out / "report.md").write_bytes(USER_BYTES)
    assert run_main(evaluate_main, argv) == 2
    assert "report.md" in _one_line_error(capsys)
    assert (out / "report.md").read_bytes() == USER_BYTES


@pytest.mark.parametrize("name", ["predictions.csv", "predictions.json"])
def test_predict_keeps_a_users_own_predictions(name, torch_run, tiny_dataset, tmp_path, capsys):
    out = tmp_path / "predicted"
    out.mkdir()
    (out / name).write_bytes(USER_BYTES)
    code = run_main(evaluate_main, ["--run_dir", str(torch_run), "--predict",
                                    str(tiny_dataset / "Gato"), "--output_dir", str(out)])
    assert code == 2
    assert name in _one_line_error(capsys)
    assert (out / name).read_bytes() == USER_BYTES


def test_predictions_beside_a_loose_model_keep_a_users_predictions_folder(torch_run,
                                                                         tiny_dataset, tmp_path,
                                                                         capsys):
    # without --output_dir a loose model's predictions go to <its folder>/predictions, which
    # may be the user's own folder
    shutil.copy(torch_run / "tiny_torch_best.pth", tmp_path / "tiny_torch_best.pth")
    (tmp_path / "predictions").mkdir()
    (tmp_path / "predictions" / "predictions.csv").write_bytes(USER_BYTES)
    code = run_main(evaluate_main, ["--model", str(tmp_path / "tiny_torch_best.pth"),
                                    "--predict", str(tiny_dataset / "Gato")])
    assert code == 2
    assert "predictions.csv" in _one_line_error(capsys)
    assert (tmp_path / "predictions" / "predictions.csv").read_bytes() == USER_BYTES


def test_ensemble_keeps_a_users_own_report(torch_run, tmp_path, capsys):
    twin = tmp_path / "twin"
    shutil.copytree(torch_run, twin)
    out = tmp_path / "ensemble"
    out.mkdir()
    (out / "ensemble.csv").write_bytes(USER_BYTES)
    code = run_main(evaluate_main, ["--ensemble", str(torch_run), str(twin), "--output_dir",
                                    str(out), *FAST_EVALUATE])
    assert code == 2
    assert "ensemble.csv" in _one_line_error(capsys)
    assert sorted(p.name for p in out.iterdir()) == ["ensemble.csv"]


@pytest.mark.parametrize("record", ["not json", json.dumps({"format": 1, "files": []}),
                                    json.dumps({"format": 1, "files": {"report.md": 3}}),
                                    json.dumps(["report.md"])])
def test_a_record_the_tool_did_not_write_vouches_for_nothing(record, tmp_path):
    from pokedex_trainer.errors import UserError
    from pokedex_trainer.user_io.output_guard import claim_outputs

    (tmp_path / RECORD).write_text(record, "utf-8")
    (tmp_path / "report.md").write_bytes(USER_BYTES)
    with pytest.raises(UserError, match="not the record"):
        claim_outputs(tmp_path, ["report.md"])
    assert (tmp_path / RECORD).read_text("utf-8") == record


def test_a_link_in_place_of_a_recorded_file_is_not_followed(tmp_path):
    from pokedex_trainer.errors import UserError
    from pokedex_trainer.user_io.output_guard import claim_outputs, record_outputs

    claim_outputs(tmp_path, ["report.md"])
    (tmp_path / "report.md").write_text("written by the tool", "utf-8")
    record_outputs(tmp_path, ["report.md"])
    precious = tmp_path / "precious.txt"
    precious.write_bytes(USER_BYTES)
    (tmp_path / "report.md").unlink()
    (tmp_path / "report.md").symlink_to(precious)
    with pytest.raises(UserError, match="report.md"):
        claim_outputs(tmp_path, ["report.md"])


def test_output_dir_that_is_a_file_is_one_line(torch_run, tmp_path, capsys):
    target = tmp_path / "a_file"
    target.write_bytes(USER_BYTES)
    assert run_main(evaluate_main, ["--run_dir", str(torch_run), "--output_dir", str(target),
                                    *FAST_EVALUATE]) == 2
    assert "is a file" in _one_line_error(capsys)
    assert target.read_bytes() == USER_BYTES


def _tiny_study(folder) -> None:
    """A search database with one completed trial, made by Optuna directly (no training)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study(study_name="s", storage=f"sqlite:///{folder / 's.db'}",
                                direction="maximize")
    study.add_trial(optuna.trial.create_trial(
        params={"learning_rate": 1e-3},
        distributions={"learning_rate": optuna.distributions.FloatDistribution(1e-4, 1e-2)},
        value=0.5, user_attrs={"command": "python train_professional_models.py"}))


def test_search_report_keeps_a_users_own_file_and_reruns_into_its_own(tmp_path, capsys):
    _tiny_study(tmp_path)
    out = tmp_path / "report"
    argv = ["--search", str(tmp_path / "s.db"), "--output_dir", str(out)]
    assert run_main(evaluate_main, argv) == 0
    assert run_main(evaluate_main, argv) == 0
    capsys.readouterr()
    (out / "best_command.txt").write_bytes(USER_BYTES)
    assert run_main(evaluate_main, argv) == 2
    assert "best_command.txt" in _one_line_error(capsys)
    assert (out / "best_command.txt").read_bytes() == USER_BYTES


@pytest.mark.parametrize("kind", ["a user's text file", "under a file"])
def test_a_trust_store_that_is_not_the_tools_is_never_written(kind, torch_run, tmp_path,
                                                              monkeypatch, capsys):
    """Issue 32, items 4 and 7: POKEDEX_TRUST_STORE at a user's file gets no line appended;
    one that cannot be created is named; no exported file is left behind either way."""
    notes = tmp_path / "notes.txt"
    notes.write_bytes(USER_BYTES)
    store = notes if kind == "a user's text file" else notes / "trusted_models.jsonl"
    monkeypatch.setenv("POKEDEX_TRUST_STORE", str(store))
    out = tmp_path / "out"
    code = run_main(export_main, ["--run_dir", str(torch_run), "--formats", "torchscript",
                                  "--output_dir", str(out), *FAST_EXPORT])
    assert code == 2
    err = _one_line_error(capsys)
    assert str(store) in err and "POKEDEX_TRUST_STORE" in err
    assert notes.read_bytes() == USER_BYTES
    assert not out.exists() or not list(out.glob("*.pt"))


def test_an_export_that_cannot_be_recorded_is_removed_again(torch_run, tmp_path, monkeypatch,
                                                             capsys):
    """The store went bad between the check and the record: the .pt would never open again."""
    from pokedex_trainer.exporters import record

    def refuse(path):
        from pokedex_trainer.errors import UserError

        raise UserError("the trust store 'x' (POKEDEX_TRUST_STORE) cannot be written: full")

    monkeypatch.setattr(record, "remember_written", refuse)
    out = tmp_path / "out"
    code = run_main(export_main, ["--run_dir", str(torch_run), "--formats", "torchscript",
                                  "--output_dir", str(out), *FAST_EXPORT])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: ") and "was removed again" in err, err
    assert not list(out.glob("*.pt")) and not list(out.glob("*.pt.json"))
