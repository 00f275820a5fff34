"""A run's own files are input too (issue #26, item 8): every file the tool reads back from a
run directory is checked, and a malformed one stops the script with one line and exit code 2,
naming the file, before anything in the run is changed (no history row deleted, no silent
restart, no traceback)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

pytest.importorskip("torch")

from pokedex_trainer.cli.commands import (  # noqa: E402
    evaluate_main,
    export_main,
    run_main,
    train_main,
)

STATE = "resume/state.json"


@pytest.fixture(scope="module")
def interrupted_run(torch_run, tmp_path_factory) -> Path:
    """The session's tiny PyTorch run, recorded as interrupted (so ``--resume`` reads its
    state) and writing only under its own folder."""
    root = tmp_path_factory.mktemp("hostile_run_files")
    run = root / "runs" / torch_run.name
    shutil.copytree(torch_run, run, ignore=shutil.ignore_patterns("evaluation", "export",
                                                                  "calibration.json"))
    config = json.loads((run / "config.json").read_text("utf-8"))
    config.update(output_dir=str(root / "runs"), log_dir=str(root / "tb"))
    (run / "config.json").write_text(json.dumps(config, indent=2), "utf-8")
    summary = json.loads((run / "summary.json").read_text("utf-8"))
    summary["status"] = "interrupted"
    (run / "summary.json").write_text(json.dumps(summary, indent=2), "utf-8")
    return run


@pytest.fixture
def run_copy(interrupted_run, tmp_path) -> Path:
    target = tmp_path / "runs" / interrupted_run.name
    shutil.copytree(interrupted_run, target)
    return target


def _edit_json(name: str, change):
    """A case that rewrites the JSON file ``name`` of the run with ``change(data)``'s result."""
    def apply(run: Path):
        path = run / name
        data = json.loads(path.read_text("utf-8")) if path.is_file() else None
        path.write_text(json.dumps(change(data)), "utf-8")
    return apply


def _write(name: str, content):
    def apply(run: Path):
        path = run / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, "utf-8")
    return apply


def _set(name: str, *keys_and_value):
    """Set a nested key of a JSON file: ``_set(file, "run_state", "epochs_run", -5)``."""
    *keys, value = keys_and_value

    def change(data):
        node = data
        for key in keys[:-1]:
            node = node[key]
        node[keys[-1]] = value
        return data
    return _edit_json(name, change)


def _drop(name: str, *keys):
    def change(data):
        node = data
        for key in keys[:-1]:
            node = node[key]
        del node[keys[-1]]
        return data
    return _edit_json(name, change)


def _history_rows(keep: int):
    def apply(run: Path):
        path = run / "history.csv"
        lines = path.read_text("utf-8").splitlines(keepends=True)
        path.write_text("".join(lines[:1 + keep]), "utf-8")
    return apply


def _history_cell(row: int, value: str):
    def apply(run: Path):
        path = run / "history.csv"
        lines = path.read_text("utf-8").splitlines(keepends=True)
        cells = lines[row].split(",")
        cells[0] = value
        lines[row] = ",".join(cells)
        path.write_text("".join(lines), "utf-8")
    return apply


def _first_sample(value):
    def change(data):
        data["splits"]["val"][0] = value
        return data
    return _edit_json("split_manifest.json", change)


# (id, file the error must name, how the file is damaged)
STATE_CASES = [
    ("list", "state.json", _write(STATE, "[]")),
    ("empty_object", "state.json", _write(STATE, "{}")),
    ("truncated", "state.json", _write(STATE, '{"phase_index": 0,')),
    ("binary", "state.json", _write(STATE, b"\xff\xfe\x00\x81")),
    ("epochs_run_negative", "state.json", _set(STATE, "run_state", "epochs_run", -5)),
    ("epochs_run_text", "state.json", _set(STATE, "run_state", "epochs_run", "2")),
    ("epochs_run_fraction", "state.json", _set(STATE, "run_state", "epochs_run", 2.5)),
    ("epochs_run_bool", "state.json", _set(STATE, "run_state", "epochs_run", True)),
    ("epochs_run_beyond_plan", "state.json", _set(STATE, "run_state", "epochs_run", 99)),
    ("epochs_run_missing", "state.json", _drop(STATE, "run_state", "epochs_run")),
    ("run_state_missing", "state.json", _drop(STATE, "run_state")),
    ("run_state_list", "state.json", _set(STATE, "run_state", [])),
    ("tracker_text", "state.json", _set(STATE, "run_state", "tracker", "x")),
    ("tracker_best_text", "state.json", _set(STATE, "run_state", "tracker", "best", "high")),
    ("early_stopping_negative", "state.json",
     _set(STATE, "run_state", "early_stopping", "wait", -1)),
    ("best_logs_list", "state.json", _set(STATE, "run_state", "best_logs", [])),
    ("phase_index_beyond_plan", "state.json", _set(STATE, "phase_index", 5)),
    ("phase_index_text", "state.json", _set(STATE, "phase_index", "0")),
    ("next_epoch_negative", "state.json", _set(STATE, "next_epoch", -1)),
    ("phase_start_after_next_epoch", "state.json", _set(STATE, "phase_start", 9)),
    ("phase_done_text", "state.json", _set(STATE, "phase_done", "no")),
    ("learning_rate_negative", "state.json", _set(STATE, "learning_rate", -0.1)),
    ("learning_rate_text", "state.json", _set(STATE, "learning_rate", "fast")),
    ("learning_rate_nan", "state.json", _set(STATE, "learning_rate", float("nan"))),
    ("plateau_text_wait", "state.json", _set(STATE, "plateau", {"wait": "x"})),
    ("state_dir_outside", "state.json", _set(STATE, "state_dir", "../../..")),
    ("state_dir_missing", "state.json", _set(STATE, "state_dir", "epoch_999")),
    ("history_fewer_rows", "history.csv", _history_rows(1)),
    ("history_empty", "history.csv", _write("history.csv", "")),
    ("history_epoch_text", "history.csv", _history_cell(2, "two")),
    ("history_epochs_out_of_order", "history.csv", _history_cell(1, "3")),
    ("summary_list", "summary.json", _write("summary.json", "[]")),
    ("summary_truncated", "summary.json", _write("summary.json", '{"status": ')),
    ("summary_status_number", "summary.json", _set("summary.json", "status", 5)),
]

CONFIG_CASES = [
    ("config_list", "config.json", _write("config.json", "[]")),
    ("config_empty_object", "config.json", _write("config.json", "{}")),
    ("config_without_model_type", "config.json", _drop("config.json", "model_type")),
    ("config_truncated", "config.json", _write("config.json", '{"model_type": "tiny_torch"')),
    ("config_epochs_text", "config.json", _set("config.json", "epochs", "4")),
    ("config_epochs_negative", "config.json", _set("config.json", "epochs", -4)),
    ("config_image_size_short", "config.json", _set("config.json", "image_size", [32])),
    ("config_image_size_text", "config.json", _set("config.json", "image_size", "32x32")),
    ("config_learning_rate_nan", "config.json",
     _set("config.json", "learning_rate", float("nan"))),
    ("config_data_path_number", "config.json", _set("config.json", "data_path", 5)),
    ("config_model_type_unknown", "config.json", _set("config.json", "model_type", "nope")),
    ("config_model_type_number", "config.json", _set("config.json", "model_type", 5)),
    ("config_seed_text", "config.json", _set("config.json", "seed", "x")),
]

MANIFEST_CASES = [
    ("manifest_list", "split_manifest.json", _write("split_manifest.json", "[]")),
    ("manifest_truncated", "split_manifest.json", _write("split_manifest.json", '{"splits":')),
    ("manifest_no_splits", "split_manifest.json", _drop("split_manifest.json", "splits")),
    ("manifest_split_text", "split_manifest.json", _set("split_manifest.json", "splits", "val",
                                                        "x")),
    ("manifest_label_text", "split_manifest.json", _first_sample(["Gato/Gato_0000.jpg", "0"])),
    ("manifest_label_out_of_range", "split_manifest.json",
     _first_sample(["Gato/Gato_0000.jpg", 7])),
    ("manifest_sample_short", "split_manifest.json", _first_sample(["Gato/Gato_0000.jpg"])),
    ("manifest_path_outside", "split_manifest.json", _first_sample(["../../../etc/passwd", 0])),
    ("manifest_path_absolute", "split_manifest.json", _first_sample(["/etc/passwd", 0])),
    ("manifest_data_path_number", "split_manifest.json",
     _set("split_manifest.json", "data_path", 5)),
    ("manifest_class_names_other", "split_manifest.json",
     _set("split_manifest.json", "class_names", ["A", "B", "C"])),
]

CLASS_NAMES_CASES = [
    ("class_names_object", "class_names.json", _write("class_names.json", "{}")),
    ("class_names_truncated", "class_names.json", _write("class_names.json", '["Gato", ')),
    ("class_names_numbers", "class_names.json", _write("class_names.json", "[1, 2, 3]")),
    ("class_names_twice", "class_names.json",
     _write("class_names.json", '["Gato", "Gato", "Perro"]')),
    ("class_names_fewer", "class_names.json", _write("class_names.json", '["Gato", "Perro"]')),
]

CALIBRATION_CASES = [
    ("calibration_list", "calibration.json", _write("calibration.json", "[]")),
    ("calibration_truncated", "calibration.json", _write("calibration.json", '{"temp')),
    ("calibration_temperature_text", "calibration.json",
     _write("calibration.json", '{"temperature": "1.5"}')),
    ("calibration_temperature_negative", "calibration.json",
     _write("calibration.json", '{"temperature": -1}')),
    ("calibration_models_list", "calibration.json",
     _write("calibration.json", '{"temperature": 1.2, "models": []}')),
    ("calibration_model_entry_zero", "calibration.json",
     _write("calibration.json", '{"temperature": 1.2, "models": '
                                '{"tiny_torch_best.pth": {"temperature": 0}}}')),
]

BEST = "tiny_torch_best.pth"


def _checkpoint(key: str, value):
    """A case that changes one entry of the description the best checkpoint carries."""
    def apply(run: Path):
        import torch

        payload = torch.load(run / BEST, weights_only=True)
        payload[key] = value
        torch.save(payload, run / BEST)
    return apply


CHECKPOINT_CASES = [
    ("checkpoint_class_names_text", BEST, _checkpoint("class_names", "GatoLeónPerro")),
    ("checkpoint_class_names_numbers", BEST, _checkpoint("class_names", [1, 2, 3])),
    ("checkpoint_image_size_text", BEST, _checkpoint("image_size", "32x32")),
    ("checkpoint_image_size_zero", BEST, _checkpoint("image_size", [0, 32])),
    ("checkpoint_of_other_classes", BEST, _checkpoint("class_names", ["A", "B", "C"])),
]


def _snapshot(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*"))
            if p.is_file() and p.name != ".lock"}


def _assert_refused(argv: list[str], main, run: Path, damage, file_name: str, capsys):
    damage(run)
    before = _snapshot(run)
    capsys.readouterr()
    assert run_main(main, argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, err
    assert file_name in errors[0], errors[0]
    assert _snapshot(run) == before  # nothing rewritten, no history row lost, no new file


# The probe's own cases and every third one run in the default set (the README's test command
# has a time budget); the rest, of the same kinds, in the slow set.
PROBE_CASES = {"list", "epochs_run_negative"}


def _params(cases):
    return [pytest.param(case, id=case[0], marks=() if index % 3 == 0 or case[0] in PROBE_CASES
                         else pytest.mark.slow) for index, case in enumerate(cases)]


RESUME_CASES = STATE_CASES + CONFIG_CASES + MANIFEST_CASES + CLASS_NAMES_CASES


@pytest.mark.parametrize("case", _params(RESUME_CASES))
def test_resume_refuses_a_malformed_run_file(run_copy, capsys, case):
    _, file_name, damage = case
    _assert_refused(["--resume", str(run_copy), "--workers", "0"], train_main, run_copy,
                    damage, file_name, capsys)


READ_BACK_CASES = CONFIG_CASES + MANIFEST_CASES + CLASS_NAMES_CASES + CALIBRATION_CASES + \
    CHECKPOINT_CASES


@pytest.mark.parametrize("case", _params(READ_BACK_CASES))
def test_evaluate_refuses_a_malformed_run_file(run_copy, capsys, case):
    _, file_name, damage = case
    _assert_refused(["--run_dir", str(run_copy), "--latency_runs", "1"], evaluate_main,
                    run_copy, damage, file_name, capsys)


@pytest.mark.parametrize("case", _params(READ_BACK_CASES))
def test_export_refuses_a_malformed_run_file(run_copy, capsys, case):
    _, file_name, damage = case
    _assert_refused(["--run_dir", str(run_copy), "--formats", "onnx", "--check_images", "6"],
                    export_main, run_copy, damage, file_name, capsys)


def test_the_untouched_run_still_resumes_evaluates_and_exports(run_copy):
    """The checks refuse only what is wrong: the same run, unchanged, goes through all three."""
    history = (run_copy / "history.csv").read_text("utf-8")
    assert run_main(train_main, ["--resume", str(run_copy), "--workers", "0"]) == 0
    assert (run_copy / "history.csv").read_text("utf-8") == history  # nothing left to train
    assert run_main(evaluate_main, ["--run_dir", str(run_copy), "--latency_runs", "1"]) == 0
    assert run_main(export_main, ["--run_dir", str(run_copy), "--formats", "onnx",
                                  "--check_images", "6"]) == 0
    # evaluate.py wrote calibration.json: it is read back by a second evaluation
    assert json.loads((run_copy / "calibration.json").read_text("utf-8"))["temperature"] > 0
    assert run_main(evaluate_main, ["--run_dir", str(run_copy), "--latency_runs", "1"]) == 0
