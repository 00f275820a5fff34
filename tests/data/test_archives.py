"""An extracted archive (Animals-10's ``raw-img/<italian>/``) through prepare and training."""

import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT
from pokedex_trainer.data.archives import ANIMALS10, find_image_roots, prepare_command
from pokedex_trainer.cli.commands import run_main, train_main
from pokedex_trainer.cli.parsers import build_prepare_parser
from pokedex_trainer.errors import UserError
from pokedex_trainer.prepare.run import prepare
from pokedex_trainer.data.synthetic import write_dataset


def animals10_archive(folder: Path, per_class: int = 4, size=(40, 40)) -> Path:
    """``folder/raw-img/<cane|cavallo|...>/`` and the archive's loose script, as Kaggle's
    animals10.zip extracts."""
    write_dataset(folder / "raw-img", classes=tuple(ANIMALS10), per_class=per_class, size=size,
                  seed=3)
    (folder / "translate.py").write_text("translate = {}\n", encoding="utf-8")
    return folder


def test_roots_of_a_wrapper_a_deeper_wrapper_and_a_nested_layout(tmp_path):
    write_dataset(tmp_path / "plain", classes=("Gato", "León"), per_class=2, size=(16, 16))
    assert find_image_roots(tmp_path / "plain") is None  # already a dataset
    write_dataset(tmp_path / "deep" / "animals10" / "raw-img", classes=("cane", "gatto"),
                  per_class=2, size=(16, 16))
    deep = find_image_roots(tmp_path / "deep")
    assert deep.roots == (tmp_path / "deep" / "animals10" / "raw-img",)
    for split in ("train", "test"):
        write_dataset(tmp_path / "nested" / split, classes=("Gato", "León"), per_class=2,
                      size=(16, 16))
    nested = find_image_roots(tmp_path / "nested")
    assert [r.name for r in nested.roots] == ["test", "train"]
    assert nested.class_names == ["Gato", "León"] and not nested.is_animals10
    (tmp_path / "empty" / "a" / "b").mkdir(parents=True)
    assert find_image_roots(tmp_path / "empty") is None


def test_training_on_the_guides_extraction_names_the_prepare_command(tmp_path, monkeypatch,
                                                                     capsys):
    monkeypatch.chdir(tmp_path)
    animals10_archive(Path("data/training"), per_class=1, size=(16, 16))
    code = run_main(train_main, ["--data_path", "data/training", "--model_type", "tiny_torch",
                                 "--output_dir", "runs", "--log_dir", "tb", "--live_log", "none"])
    assert code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("error: 'data/training' holds no class folders of its own")
    assert ("python prepare_dataset.py --input_dir data/training/raw-img --output_dir "
            "data/animals10 --class_map animals10 ; then train with --data_path "
            "data/animals10") in error
    assert not Path("runs").exists() or not any(Path("runs").iterdir())


def test_prepare_refuses_to_write_the_archive_into_itself_and_names_a_command(tmp_path,
                                                                              monkeypatch):
    monkeypatch.chdir(tmp_path)
    animals10_archive(Path("data/training"), per_class=1, size=(16, 16))
    args = build_prepare_parser().parse_args(["--input_dir", "data/training", "--workers", "0"])
    with pytest.raises(UserError) as raised:
        prepare(args)  # the default output, data/training, holds the archive
    assert "inside the output folder 'data/training'" in str(raised.value)
    assert str(raised.value).endswith(
        "python prepare_dataset.py --input_dir data/training/raw-img --output_dir "
        "data/animals10 --class_map animals10")
    assert sorted(p.name for p in Path("data/training").iterdir()) == ["raw-img", "translate.py"]


def test_prepare_reads_the_wrapper_and_names_the_classes_in_spanish(tmp_path):
    archive = animals10_archive(tmp_path / "download", per_class=2, size=(40, 40))
    out = tmp_path / "prepared"
    report = prepare(build_prepare_parser().parse_args(
        ["--input_dir", str(archive), "--output_dir", str(out), "--size", "32",
         "--workers", "0"]))
    assert sorted(report.classes) == sorted(ANIMALS10.values())
    assert (out / "Perro" / "Perro_0000.jpg").is_file()
    assert not (out / "raw-img").exists()
    kept = prepare(build_prepare_parser().parse_args(
        ["--input_dir", str(archive / "raw-img"), "--output_dir", str(tmp_path / "it"),
         "--size", "32", "--workers", "0", "--class_map", "none"]))
    assert sorted(kept.classes) == sorted(ANIMALS10)


def test_prepare_merges_a_nested_layout(tmp_path):
    for split, seed in (("train", 1), ("test", 2)):
        write_dataset(tmp_path / "kaggle" / split, classes=("Gato", "León"), per_class=2,
                      size=(40, 40), seed=seed)
    out = tmp_path / "prepared"
    report = prepare(build_prepare_parser().parse_args(
        ["--input_dir", str(tmp_path / "kaggle"), "--output_dir", str(out), "--size", "32",
         "--workers", "0"]))
    assert report.classes == {"Gato": {"images": 4}, "León": {"images": 4}}
    assert len(list((out / "León").glob("*.jpg"))) == 4


def test_a_wrapper_beside_real_classes_is_named_in_the_warning(tmp_path, caplog):
    from pokedex_trainer.data.scan import scan_dataset

    write_dataset(tmp_path / "training", classes=("Gato", "León"), per_class=2, size=(16, 16))
    write_dataset(tmp_path / "training" / "raw-img", classes=("cane",), per_class=1,
                  size=(16, 16))
    assert scan_dataset(tmp_path / "training").class_names == ["Gato", "León"]
    assert "its sub-folders hold images: an extracted archive?" in caplog.text


def test_command_quotes_paths_with_spaces(tmp_path):
    archive = animals10_archive(tmp_path / "my photos", per_class=1, size=(16, 16))
    command = prepare_command(find_image_roots(archive))
    assert shlex.split(command)[3] == str(archive / "raw-img")


@pytest.mark.slow
def test_animals10_archive_goes_through_prepare_and_training_as_the_readme_says(tmp_path):
    """The documented path (docs/preparing-data.md): extract into data/training/, train
    (refused, with the command), run that command, train on its output."""
    animals10_archive(tmp_path / "data" / "training", per_class=6, size=(48, 48))

    def run(script, *args):
        return subprocess.run([sys.executable, str(ROOT / script), *args], cwd=tmp_path,
                              capture_output=True, text=True, timeout=600)

    tiny = ["--model_type", "tiny_torch", "--weights", "none", "--image_size", "32", "32",
            "--epochs", "1", "--fine_tune_epochs", "0", "--workers", "0",
            "--histogram_freq", "0", "--run_name", "a10"]
    refused = run("train_professional_models.py", "--data_path", "data/training", *tiny)
    assert refused.returncode == 2, refused.stderr
    line = refused.stderr.strip().splitlines()[-1]
    command = line.split("Prepare it first: ")[1].split(" ; ")[0]
    argv = shlex.split(command)
    assert argv[:2] == ["python", "prepare_dataset.py"]
    prepared = run(*argv[1:], "--size", "48")
    assert prepared.returncode == 0, prepared.stderr
    data_path = line.rsplit("--data_path ", 1)[1]
    assert data_path == "data/animals10"
    trained = run("train_professional_models.py", "--data_path", data_path, *tiny)
    assert trained.returncode == 0, trained.stderr
    import json

    names = json.loads((tmp_path / "model/ultra/a10/class_names.json").read_text("utf-8"))
    assert names == sorted(ANIMALS10.values())


def test_mixed_layouts_are_said_and_reports_are_not_photos(tmp_path):
    """A wrapper with a loose photo, or an archive beside class folders, is reported; the
    chart prepare --check writes into a wrapper never turns it into a class; suggested
    commands keep '$' literal."""
    from PIL import Image

    from pokedex_trainer.data.archives import mixed_layout_warnings

    loose = animals10_archive(tmp_path / "a", per_class=1, size=(16, 16))
    Image.new("RGB", (8, 8)).save(loose / "raw-img" / "loose.jpg")
    assert "also holds folders of images" in mixed_layout_warnings(loose)[0]
    beside = animals10_archive(tmp_path / "b", per_class=1, size=(16, 16))
    write_dataset(beside, classes=("Leon",), per_class=1, size=(16, 16), seed=2)
    assert "beside your class folders" in mixed_layout_warnings(beside)[0]
    checked = animals10_archive(tmp_path / "c", per_class=1, size=(16, 16))
    Image.new("RGB", (8, 8)).save(checked / "raw-img" / "dataset_report.png")
    assert find_image_roots(checked).roots == (checked / "raw-img",)
    dollar = animals10_archive(tmp_path / "pr$ice", per_class=1, size=(16, 16))
    assert shlex.split(prepare_command(find_image_roots(dollar)))[3] == \
        str(dollar / "raw-img")


@pytest.mark.parametrize("names, expected", [
    (["cane", "gatto"], True), (["Cane", "gatto", "ragno"], True), (["cane"], False),
    (["cane", "gatto", "Perro"], False), (["Gato", "Perro"], False)])
def test_a_part_of_animals10_is_recognised_too(names, expected):
    """Issue 32, item 12: a user who kept 3 of the 10 Italian folders gets them renamed too."""
    from pokedex_trainer.data.archives import looks_like_animals10

    assert looks_like_animals10(names) is expected
