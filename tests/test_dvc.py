"""The DVC pipeline (dvc.yaml, params.yaml): four stages that rebuild only what changed."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ROOT
from pokedex_trainer.cli.parsers import (
    build_evaluate_parser,
    build_export_parser,
    build_prepare_parser,
    build_train_parser,
)

STAGES = ("prepare", "train", "evaluate", "export")
PARSERS = {"prepare": build_prepare_parser, "train": build_train_parser,
           "evaluate": build_evaluate_parser, "export": build_export_parser}


def _flags(parser) -> set[str]:
    return {a.option_strings[0].lstrip("-") for a in parser()._actions if a.option_strings}


def test_params_are_options_of_their_scripts():
    """`${train}` in dvc.yaml becomes --key value for every key: each must be a real flag."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    assert tuple(params) == STAGES
    for stage, values in params.items():
        unknown = set(values) - _flags(PARSERS[stage])
        assert not unknown, f"params.yaml {stage}: not options of the script: {unknown}"
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    assert tuple(stages) == STAGES
    assert stages["evaluate"]["metrics"][0] == "model/dvc/evaluation/metrics.json"

def test_no_parameter_can_name_a_folder_dvc_deletes():
    """DVC empties a stage's outputs before it runs it: every output is a fixed path inside
    the pipeline's own folders, and the fixed output options follow the parameters (the last
    value wins), so a params.yaml output_dir pointing at a user's folder changes nothing."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    for name, stage in stages.items():
        for out in stage["outs"]:
            path = out if isinstance(out, str) else next(iter(out))
            assert "${" not in path, f"{name}: output {path} comes from params.yaml"
            assert path.startswith(("data/dvc/", "model/dvc/")), path
        command = " ".join(stage["cmd"].split())
        expansion = command.index("${" + name + "}") if "${" + name + "}" in command else -1
        for fixed in ("--output_dir", "--run_name", "--log_dir"):
            if fixed in command:
                assert command.index(fixed) > expansion, f"{name}: {fixed} before ${{{name}}}"
    params = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    for block in params.values():
        assert not {"output_dir", "run_name", "log_dir"} & set(block)


TINY_PARAMS = {
    "prepare": {"input_dir": "data/raw_images", "size": 48, "mode": "crop", "workers": 0},
    "train": {"model_type": "tiny_torch", "weights": "none",
              "image_size": [32, 32], "batch_size": 8, "epochs": 2, "learning_rate": 0.001,
              "fine_tune_epochs": 1, "fine_tune_learning_rate": 0.0001, "workers": 0,
              "histogram_freq": 0, "seed": 42},
    "evaluate": {"latency_runs": 1, "latency_batch": 4},
    "export": {"formats": "torchscript", "check_images": 6},
}


def _project(tmp_path: Path) -> Path:
    """A git repository with this project's scripts, package and pipeline, tiny parameters
    and tiny raw photos (nested in an archive folder, as a download extracts)."""
    from pokedex_trainer.data.synthetic import write_dataset

    repo = tmp_path / "project"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(ROOT / "pokedex_trainer", repo / "pokedex_trainer", ignore=ignore)
    for name in ("train_professional_models.py", "prepare_dataset.py", "evaluate.py",
                 "export.py", "dvc.yaml", ".dvcignore", ".gitignore"):
        shutil.copy2(ROOT / name, repo / name)
    (repo / "params.yaml").write_text(yaml.safe_dump(TINY_PARAMS), encoding="utf-8")
    write_dataset(repo / "data" / "raw_images" / "raw-img", classes=("Gato", "León", "Perro"),
                  per_class=8, size=(56, 56), seed=4)
    for command in (["git", "init", "-q"], ["dvc", "init", "-q"],
                    ["git", "add", "-A"],
                    ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm",
                     "project"]):
        subprocess.run(command, cwd=repo, check=True, capture_output=True, text=True)
    return repo


def _dvc(repo: Path, *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.mark.slow
def test_dvc_repro_runs_the_four_stages_once_then_only_what_changed(tmp_path):
    pytest.importorskip("dvc")
    repo = _project(tmp_path)
    first = _dvc(repo, "repro")
    for stage in STAGES:
        assert f"Running stage '{stage}'" in first.stdout, first.stdout
    assert (repo / "model/dvc/run/tiny_torch_best.pth").is_file()
    assert (repo / "model/dvc/export/tiny_torch_best.pt").is_file()
    assert (repo / "model/dvc/export/exports.json").is_file()
    assert not (repo / "model/dvc/run/calibration.json").exists()  # the run stays as trained
    metrics = _dvc(repo, "metrics", "show", "--json").stdout
    assert '"accuracy"' in metrics

    second = _dvc(repo, "repro")
    assert "Running stage" not in second.stdout, second.stdout

    # a changed parameter reruns its stage only
    params = yaml.safe_load((repo / "params.yaml").read_text(encoding="utf-8"))
    params["export"]["check_images"] = 5
    (repo / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
    third = _dvc(repo, "repro")
    assert "Running stage 'export'" in third.stdout
    assert not any(f"Running stage '{s}'" in third.stdout for s in STAGES[:3]), third.stdout

    # the grid loop with tracked data and models
    experiment = _dvc(repo, "exp", "run", "-S", "train.learning_rate=0.0005")
    assert "Running stage 'train'" in experiment.stdout
    assert "Running stage 'prepare'" not in experiment.stdout
    table = _dvc(repo, "exp", "show", "--csv").stdout
    assert "0.0005" in table
    header, *rows = [line.split(",") for line in table.strip().splitlines()]
    accuracy = header.index("accuracy")
    # the workspace and the experiment have their metrics (the initial commit ran nothing)
    ran = [row for row in rows if row[1] not in ("master", "main")]
    assert len(ran) == 2 and all(row[accuracy] not in ("", "!") for row in ran), table

    # an old or careless params.yaml naming a user's folder as an output: it is left alone
    mine = repo / "my_photos"
    (mine / "Gato").mkdir(parents=True)
    (mine / "Gato" / "keep.jpg").write_bytes(b"mine")
    params["prepare"]["output_dir"] = "my_photos"
    params["prepare"]["size"] = 40
    (repo / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
    _dvc(repo, "repro", "prepare")
    assert (mine / "Gato" / "keep.jpg").read_bytes() == b"mine"
    assert sorted(p.name for p in mine.rglob("*")) == ["Gato", "keep.jpg"]
    assert (repo / "data/dvc/training").is_dir()


def _snapshot(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*")
            if p.is_file()}


@pytest.mark.slow
def test_evaluate_and_export_with_their_own_folders_only_read_the_run(torch_run, tmp_path):
    """What the pipeline's stages rely on: a later stage never changes an earlier one's output."""
    import json

    from pokedex_trainer.cli.commands import evaluate_main, export_main, run_main

    before = _snapshot(torch_run)
    calibration = tmp_path / "evaluation" / "calibration.json"
    assert run_main(evaluate_main, ["--run_dir", str(torch_run), "--output_dir",
                                    str(tmp_path / "evaluation"), "--calibration",
                                    str(calibration), "--latency_runs", "1"]) == 0
    temperature = json.loads(calibration.read_text(encoding="utf-8"))["temperature"]
    assert run_main(export_main, ["--run_dir", str(torch_run), "--formats", "torchscript",
                                  "--output_dir", str(tmp_path / "export"), "--calibration",
                                  str(calibration), "--check_images", "6"]) == 0
    sidecar = json.loads((tmp_path / "export" / "tiny_torch_best.pt.json").read_text("utf-8"))
    assert sidecar["temperature"] == pytest.approx(temperature)
    assert (tmp_path / "export" / "exports.json").is_file()
    assert _snapshot(torch_run) == before
    assert run_main(export_main, ["--run_dir", str(torch_run), "--formats", "torchscript",
                                  "--output_dir", str(tmp_path / "x"), "--calibration",
                                  str(tmp_path / "missing.json")]) == 2
