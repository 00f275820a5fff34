"""Bad input: one line on stderr, exit code 2, no traceback, nothing half-written."""

import subprocess
import sys

import pytest

from conftest import ROOT


def _run(*args, cwd=ROOT):
    return subprocess.run([sys.executable, str(ROOT / "train_professional_models.py"), *args],
                          cwd=cwd, capture_output=True, text=True, timeout=120)


def _one_line_error(result, expected):
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and expected in lines[0], result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("case,expected", [
    ("missing", "does not exist"),
    ("empty", "no images found"),
    ("one_class", "a classifier needs at least 2"),
    ("too_few", "class 'Gato' has only 2 images"),
    ("bad_weights", "is neither 'imagenet', 'none' nor an existing weights file"),
    ("unwritable", "cannot write to output directory"),
    ("tiny_size", "too small for MobileNetV2"),
])
def test_bad_input_is_one_line_and_exit_code_2(tmp_path, tiny_dataset, case, expected):
    import shutil

    data = tmp_path / "data"
    args = ["--model_type", "mobilenet", "--image_size", "32", "32", "--weights", "none"]
    output = tmp_path / "runs"
    if case == "missing":
        data = tmp_path / "nowhere"
    elif case == "empty":
        (data / "Gato").mkdir(parents=True)
    elif case == "one_class":
        shutil.copytree(tiny_dataset / "Gato", data / "Gato")
    elif case == "too_few":
        shutil.copytree(tiny_dataset, data)
        for path in sorted((data / "Gato").iterdir())[2:]:
            path.unlink()
    else:
        data = tiny_dataset
    if case == "bad_weights":
        args[-1] = str(tmp_path / "missing.weights.h5")
    if case == "unwritable":
        (tmp_path / "a_file").write_text("x")
        output = tmp_path / "a_file" / "runs"
    if case == "tiny_size":
        args[3:5] = ["16", "16"]
    result = _run("--data_path", str(data), "--output_dir", str(output), "--log_dir",
                  str(tmp_path / "tb"), *args)
    _one_line_error(result, expected)
    assert not (output / "experiments.csv").exists()


def test_evaluate_and_export_without_a_model_say_what_they_need():
    result = subprocess.run([sys.executable, "evaluate.py"], cwd=ROOT, capture_output=True,
                            text=True)
    _one_line_error(result, "--run_dir RUN_DIR, --model FILE")
    result = subprocess.run([sys.executable, "export.py"], cwd=ROOT, capture_output=True,
                            text=True)
    assert result.returncode == 2 and "--run_dir --model --serve is required" in result.stderr


@pytest.mark.parametrize("argv, expected", [
    (["--learning-rate", "0.001"], "did you mean --learning_rate?"),
    (["--model_type", "EfficientNet"], "did you mean --model_type efficientnet?"),
    (["--image_size", "224"], "--image_size HEIGHT WIDTH"),
    (["--modeltype", "resnet"], "did you mean --model_type?"),
])
def test_a_mistyped_option_is_one_line_with_the_nearest_spelling(argv, expected, capsys):
    """Issue 32, item 11: not 45 lines of usage before the one that matters."""
    from pokedex_trainer.cli.commands import run_main, train_main

    assert run_main(train_main, argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    assert expected in err


def test_no_arguments_start_nothing_and_print_a_short_usage(tmp_path, monkeypatch, capsys):
    """The guide's PowerShell command pasted into bash arrives with no option at all."""
    import sys

    from pokedex_trainer.cli.commands import run_main, train_main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["train_professional_models.py"])
    assert run_main(train_main) == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: ") and len(err.splitlines()) < 10
    assert list(tmp_path.iterdir()) == []


def test_help_says_options_may_be_shortened(capsys):
    from pokedex_trainer.cli.parsers import (build_evaluate_parser, build_export_parser,
                                             build_prepare_parser, build_train_parser)

    for build in (build_train_parser, build_prepare_parser, build_evaluate_parser,
                  build_export_parser):
        assert "--epoch means --epochs" in " ".join(build().format_help().split())
