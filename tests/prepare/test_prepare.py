"""prepare_dataset.py on a messy generated collection."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT
from pokedex_trainer.cli.parsers import build_prepare_parser as build_parser
from pokedex_trainer.prepare.convert import square_image
from pokedex_trainer.prepare.run import prepare
from pokedex_trainer.data.synthetic import draw_pattern


def _photo(kind, size, seed):
    return draw_pattern(kind, size, np.random.default_rng(seed))


@pytest.fixture
def messy(tmp_path) -> Path:
    """Every odd kind of file a real collection holds, in three classes (one unicode)."""
    raw = tmp_path / "raw_images"
    for name in ("cane", "gatto", "León"):
        (raw / name).mkdir(parents=True)
    for i in range(6):
        _photo(0, (320, 240), i).save(raw / "cane" / f"dog{i}.jpg", quality=90)
        _photo(1, (300, 300), 10 + i).save(raw / "gatto" / f"cat{i}.JPG", quality=90)
        _photo(2, (260, 280), 20 + i).save(raw / "León" / f"león{i}.jpeg", quality=90)
    good = (raw / "cane" / "dog0.jpg").read_bytes()
    (raw / "cane" / "truncated.jpg").write_bytes(good[: len(good) // 3])
    (raw / "cane" / "empty.jpg").write_bytes(b"")
    (raw / "cane" / "notes.jpg").write_text("not an image")
    (raw / "cane" / "dog0_copy.jpg").write_bytes(good)                  # duplicate, same class
    (raw / "gatto" / "also_a_dog.jpg").write_bytes(good)                # duplicate, other class
    lion = (raw / "León" / "león1.jpeg").read_bytes()
    (raw / "León" / "león1_copy.jpeg").write_bytes(lion)                # duplicate, same class
    Image.new("RGBA", (300, 260), (10, 200, 10, 128)).save(raw / "gatto" / "alpha.png")
    Image.new("L", (300, 300), 90).save(raw / "gatto" / "gray.png")
    Image.fromarray(np.full((300, 250), 40000, np.uint16)).save(raw / "León" / "deep.png")
    Image.new("CMYK", (300, 300), (0, 200, 200, 0)).save(raw / "León" / "cmyk.jpg")
    rotated = _photo(3, (400, 240), 99)
    exif = rotated.getexif()
    exif[0x0112] = 6
    rotated.save(raw / "León" / "phone.jpg", exif=exif)
    _photo(4, (100, 100), 7).save(raw / "León" / "thumb.jpg")
    return raw


def _args(raw, out, *extra):
    return build_parser().parse_args(["--input_dir", str(raw), "--output_dir", str(out),
                                      "--size", "128", "--workers", "2", *extra])


def test_messy_collection_gives_clean_outputs_and_a_full_report(messy, tmp_path):
    out = tmp_path / "training"
    report = prepare(_args(messy, out))
    unreadable = {u["path"] for u in report.unreadable}
    assert unreadable == {"cane/truncated.jpg", "cane/empty.jpg", "cane/notes.jpg"}
    assert report.duplicates_within_class == [
        {"class": "León", "kept": "León/león1.jpeg", "duplicates": ["León/león1_copy.jpeg"]}]
    across = report.duplicates_across_classes
    assert len(across) == 1 and across[0]["classes"] == ["cane", "gatto"]
    assert {s["path"] for s in report.small_images} == {"León/thumb.jpg"}
    # dog0 and its copies are out (cross-class conflict): 5 dogs; 6 cats + alpha + gray;
    # 6 lions + deep + cmyk + phone + thumb
    assert report.classes == {"León": {"images": 10}, "cane": {"images": 5},
                              "gatto": {"images": 8}}
    assert report.too_few_classes and report.classes_below_minimum == ["León", "cane", "gatto"]
    assert report.imbalance_ratio == 2.0
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.jpg"))
    assert len(written) == 23 and "León/León_0000.jpg" in written
    assert all(Path(p).name.split("_")[0] == Path(p).parent.name for p in written)
    for path in out.rglob("*.jpg"):
        with Image.open(path) as image:
            assert image.mode == "RGB" and image.size[0] == image.size[1] <= 128
    sizes = {Image.open(p).size for p in (out / "León").glob("*.jpg")}
    assert (100, 100) in sizes  # the thumbnail is not enlarged past its own pixels
    saved = json.loads((out / "dataset_report.json").read_text(encoding="utf-8"))
    assert saved["duplicates_across_classes"][0]["classes"] == ["cane", "gatto"]
    with Image.open(out / "dataset_report.png") as chart:
        assert chart.size[0] >= 600 and chart.size[1] >= 400


def test_sources_are_never_modified(messy, tmp_path):
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in messy.rglob("*") if p.is_file()}
    prepare(_args(messy, tmp_path / "out"))
    after = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in messy.rglob("*") if p.is_file()}
    assert before == after


def test_second_run_rewrites_nothing_and_a_changed_source_is_redone(messy, tmp_path):
    out = tmp_path / "training"
    prepare(_args(messy, out))
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.jpg")}
    second = prepare(_args(messy, out))
    assert second.written == 0 and second.up_to_date == 23
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.jpg")} == stamps
    _photo(5, (320, 240), 1234).save(messy / "cane" / "dog3.jpg", quality=90)
    third = prepare(_args(messy, out))
    assert third.written == 1


def test_interrupted_run_completes_on_the_next_call(messy, tmp_path, monkeypatch):
    import pokedex_trainer.prepare.convert as prep

    out = tmp_path / "training"
    real = prep.in_workers
    calls = {"n": 0}

    def crash_on_second_chunk(function, tasks, workers, description):
        if function is prep.convert_file:
            calls["n"] += 1
            if calls["n"] == 2:
                raise KeyboardInterrupt
        return real(function, tasks, 1, description)

    monkeypatch.setattr(prep, "in_workers", crash_on_second_chunk)
    args = _args(messy, out)
    monkeypatch.setattr(prep, "CHUNK_SIZE", 8)
    with pytest.raises(KeyboardInterrupt):
        prepare(args)
    done_first = len(list(out.rglob("*.jpg")))
    assert 0 < done_first < 23
    monkeypatch.setattr(prep, "in_workers", real)
    report = prepare(args)
    assert report.up_to_date == done_first and report.written == 23 - done_first
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]


def test_check_writes_no_image(messy):
    before = sorted(p.name for p in messy.rglob("*"))
    report = prepare(build_parser().parse_args(["--input_dir", str(messy), "--check",
                                                "--workers", "1"]))
    after = sorted(p.name for p in messy.rglob("*"))
    assert sorted(set(after) - set(before)) == [".prepare_reports.json", "dataset_report.json",
                                                "dataset_report.png"]
    assert len(report.unreadable) == 3 and report.written == 0


def test_class_map_animals10(messy, tmp_path):
    out = tmp_path / "training"
    prepare(_args(messy, out, "--class_map", "animals10"))
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["Gato", "León", "Perro"]
    assert (out / "Perro" / "Perro_0000.jpg").exists()


@pytest.mark.parametrize("mode", ["crop", "pad"])
def test_crop_and_pad_keep_the_aspect_ratio(mode):
    image = np.zeros((100, 200, 3), np.uint8)
    image[:, 90:110] = 255  # a vertical bar, 20 px wide, in the middle
    out = square_image(image, 50, mode)
    assert out.shape == (50, 50, 3)
    columns = np.where(out[out.shape[0] // 2, :, 0] > 128)[0]
    width = columns.max() - columns.min() + 1
    expected = 20 * 50 / 100 if mode == "crop" else 20 * 50 / 200
    assert abs(width - expected) <= 2
    stretched = square_image(image, 50, "stretch")
    columns = np.where(stretched[25, :, 0] > 128)[0]
    assert abs((columns.max() - columns.min() + 1) - 5) <= 2  # squashed horizontally


@pytest.mark.parametrize("case,expected", [
    ("missing", "does not exist"),
    ("inside", "is inside the input directory"),
    ("no_images", "no images found"),
])
def test_bad_input_is_one_line_and_exit_code_2(tmp_path, messy, case, expected):
    raw, out = messy, tmp_path / "out"
    if case == "missing":
        raw = tmp_path / "nowhere"
    elif case == "inside":
        out = messy / "training"
    elif case == "no_images":
        raw = tmp_path / "empty"
        (raw / "Gato").mkdir(parents=True)
    result = subprocess.run([sys.executable, "prepare_dataset.py", "--input_dir", str(raw),
                             "--output_dir", str(out)], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error:")
    assert expected in result.stderr and "Traceback" not in result.stderr


def test_strict_fails_below_the_minimums(messy, tmp_path):
    result = subprocess.run([sys.executable, "prepare_dataset.py", "--input_dir", str(messy),
                             "--output_dir", str(tmp_path / "o"), "--size", "64", "--strict"],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 1 and "--strict" in result.stderr


def test_trainer_trains_on_the_output_without_an_unreadable_file(messy, tmp_path):
    from pokedex_trainer.data.scan import find_unreadable_headers, scan_dataset
    from pokedex_trainer.data.images import read_image

    out = tmp_path / "training"
    prepare(_args(messy, out, "--class_map", "animals10"))
    index = scan_dataset(out)
    assert not find_unreadable_headers(index)
    for relative, _ in index.samples:
        assert read_image(out / relative).dtype == np.uint8


def test_prepare_imports_no_framework(messy, tmp_path):
    code = ("import sys, runpy; sys.path.insert(0, {root!r}); sys.argv = ['prepare_dataset.py', "
            "'--input_dir', {raw!r}, '--check', '--workers', '1'];\n"
            "try:\n runpy.run_path({script!r}, run_name='__main__')\n"
            "except SystemExit: pass\n"
            "print('HEAVY', [m for m in ('tensorflow', 'torch', 'keras') if m in sys.modules])"
            ).format(root=str(ROOT), raw=str(messy), script=str(ROOT / "prepare_dataset.py"))
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                            text=True, timeout=120)
    assert "HEAVY []" in result.stdout, result.stderr[-2000:]


def test_a_class_named_like_none_of_the_species_points_to_unknown_dir():
    """Issue 33: 'Otros', 'Desconocido', 'no_animal' as a class would be learned as a
    species; the report says to train with --unknown_dir instead."""
    from pokedex_trainer.prepare.report import Report, summarize, unknown_like

    assert all(unknown_like(n) for n in ("Otros", "DESCONOCIDO", "no_animal", "Unknown",
                                         "No Animal", "Fondo"))
    assert not any(unknown_like(n) for n in ("León", "Perro", "Otter", "nadador"))
    report = Report("raw", None, {})
    summarize(report, {"Perro": 120, "Otros": 130, "Gato": 110}, [])
    line = next(p for p in report.problems if "Otros" in p)
    assert "--unknown_dir" in line
