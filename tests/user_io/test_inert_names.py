"""Names users give stay text (issue 32, items 5 and 6): no spreadsheet formula in a CSV the tool
writes, no terminal escape sequence printed as given, one Unicode form for class names."""

from __future__ import annotations

import csv
import io
import shutil
import unicodedata

import pytest

from conftest import tiny_run_argv
from pokedex_trainer.cli.commands import evaluate_main, run_main, train_main
from pokedex_trainer.user_io.inert_text import (InertStream, from_spreadsheet_cell,
                                                spreadsheet_cell, terminal_text)

TITLE = "\x1b]0;owned\x07"  # sets the terminal window's title
CLEAR = "\x1b[2J\x1b[H"     # clears the screen


@pytest.mark.parametrize("value", ["=1+1", "+Gato", "-León", "@SUM(A1)", "\tx", "'quoted",
                                   "''=x", "=HYPERLINK(\"http://x\",\"y\")"])
def test_a_formula_cell_is_written_as_text_and_read_back_as_given(value):
    cell = spreadsheet_cell(value)
    assert cell.startswith("'")
    assert from_spreadsheet_cell(cell) == value


@pytest.mark.parametrize("value", ["-0.25", "+1e-3", "Gato", "", "León", "0.5"])
def test_numbers_and_plain_names_are_left_alone(value):
    assert spreadsheet_cell(value) == value
    assert from_spreadsheet_cell(value) == value


def test_every_escape_sequence_becomes_visible_and_progress_bars_still_redraw():
    shown = terminal_text(f"class {TITLE}Gato{CLEAR} \x1b[8mhidden\x1b[0m \x1b[A\r\b\n")
    assert "\x1b" not in shown and "\x07" not in shown
    assert "\\x1b]0;owned\\x07" in shown and "\\x1b[8mhidden" in shown
    assert shown.endswith("\r\b\n")  # what tqdm and Keras' bar redraw with


def test_a_sequence_split_across_two_writes_is_still_caught():
    console = io.StringIO()
    stream = InertStream(console)
    stream.write("a\x1b")
    stream.write("]0;owned\x07b")
    stream.flush()
    assert "\x1b" not in console.getvalue() and console.getvalue().startswith("a\\x1b]0;")


HOSTILE_CLASSES = ("=HYPERLINK(\"x\",\"y\")", "+Gato", f"@Perro{TITLE}")


def test_hostile_class_and_run_names_stay_text_in_every_table_and_terminal(tmp_path, capfd):
    """One tiny run whose class and run names are formulas and escape sequences: the tables
    hold them as text, the tool reads its own table back as given, the console shows no
    escape sequence."""
    from pokedex_trainer.data.synthetic import write_dataset
    from pokedex_trainer.runs.experiments_table import read_experiments

    data = write_dataset(tmp_path / "data", classes=HOSTILE_CLASSES, per_class=8,
                         size=(40, 40), seed=3)
    run_name = "=cmd+1"  # control characters are refused in run names (Windows forbids them)
    assert run_main(train_main, tiny_run_argv(data, tmp_path, "tiny_torch",
                                              run_name=run_name, epochs=1)) == 0
    run = tmp_path / "runs" / run_name
    out = tmp_path / "evaluation"
    assert run_main(evaluate_main, ["--run_dir", str(run), "--output_dir", str(out),
                                    "--latency_runs", "1", "--latency_batch", "2"]) == 0
    assert run_main(evaluate_main, ["--model", str(run / "tiny_torch_best.pth"),
                                    "--predict", str(data / HOSTILE_CLASSES[1]),
                                    "--output_dir", str(tmp_path / "predicted")]) == 0
    printed = capfd.readouterr()
    for stream in (printed.out, printed.err):
        assert "\x1b]" not in stream and "\x07" not in stream

    tables = [out / "classification_report.csv", tmp_path / "predicted" / "predictions.csv",
              tmp_path / "runs" / "experiments.csv"]
    for table in tables:
        text = table.read_text(encoding="utf-8")
        assert "\x1b" not in text and "\x07" not in text, table.name  # cat shows it as text
        with open(table, encoding="utf-8", newline="") as handle:
            cells = [cell for row in csv.reader(handle) for cell in row]
        risky = [c for c in cells if c.startswith(("=", "+", "@")) or
                 (c.startswith("-") and not c.lstrip("-").replace(".", "").isdigit())]
        assert not risky, (table.name, risky)
    rows = read_experiments(tmp_path / "runs" / "experiments.csv")
    assert rows[-1]["run_name"] == run_name
    assert "\x1b" not in (run / "training.log").read_text(encoding="utf-8")


def test_a_folder_copied_from_macos_matches_the_model(torch_run, tiny_dataset, tmp_path, capsys):
    """León decomposed (e + combining accent) is León: the run's classes are found."""
    data = tmp_path / "macos"
    shutil.copytree(tiny_dataset, data)
    (data / "León").rename(data / unicodedata.normalize("NFD", "León"))
    assert unicodedata.normalize("NFD", "León") in {p.name for p in data.iterdir()}
    code = run_main(evaluate_main, ["--run_dir", str(torch_run), "--data_path", str(data),
                                    "--output_dir", str(tmp_path / "out"),
                                    "--latency_runs", "1", "--latency_batch", "2"])
    assert code == 0, capsys.readouterr().err


def test_one_name_in_two_unicode_forms_is_one_line(tiny_dataset, tmp_path, capsys):
    data = tmp_path / "both"
    shutil.copytree(tiny_dataset, data)
    shutil.copytree(data / "León", data / unicodedata.normalize("NFD", "León"))
    code = run_main(train_main, tiny_run_argv(data, tmp_path, "tiny_torch", epochs=1))
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and err.startswith("error: ") and "Unicode forms" in err, err
