"""The benchmark scripts run for a user: --help, and a tiny input-pipeline measurement."""

import json
import subprocess
import sys

import pytest

from conftest import ROOT


@pytest.mark.parametrize("script", ["input_pipeline.py", "train_throughput.py", "inference.py",
                                    "trainer_overhead.py", "gpu_smoke_table.py", "recipe.py",
                                    "registry_photos.py", "bare_loops.py", "trainer_pace.py",
                                    "unknown.py", "call_depth.py"])
def test_help(script):
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--help"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "usage:" in result.stdout


def test_input_pipeline_writes_a_table_and_json(tmp_path):
    output = tmp_path / "result.json"
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "input_pipeline.py"),
                             "--sizes", "64", "--images", "8", "--batch_size", "4",
                             "--max_workers", "0", "--formats", "png", "--cache", "none", "ram",
                             "--data_dir", str(tmp_path / "data"),
                             "--output", str(output)], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = json.loads(output.read_text())["rows"]
    assert [(r["runner"], r["workers"], r["cache"]) for r in rows] == [
        ("bare", 0, "-"), ("loader", 0, "none"), ("loader", 0, "ram")]
    assert all(r["images_per_second"] > 0 and r["format"] == "png" for r in rows)
    assert "bare" in result.stdout and "loader" in result.stdout


def test_gpu_smoke_table_puts_bare_loop_step_and_trainer_side_by_side():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from gpu_smoke_table import table

    base = {"model_type": "mobilenet", "batch_size": 64, "image_size": [224, 224],
            "device": "NVIDIA H200", "workers": 8}
    torch_route = {"framework": "pytorch", "backend": "torch"}
    jax_route = {"framework": "keras", "backend": "jax"}
    rows = [{**base, **torch_route, "kind": "bare", "images_per_second": 8000.0},
            {**base, **torch_route, "kind": "step", "loader": "off", "images_per_second": 7800.0},
            {**base, **torch_route, "kind": "step", "loader": "on", "cache": "ram",
             "images_per_second": 7000.0},
            {**base, **torch_route, "kind": "trainer", "images_per_second": 6000.0},
            {**base, **jax_route, "kind": "bare", "images_per_second": 2000.0},
            {**base, **jax_route, "kind": "step", "loader": "off", "images_per_second": 1000.0},
            {**base, **torch_route, "kind": "step", "loader": "off", "compile": True,
             "images_per_second": 8400.0},  # --compile: its own row, the same bare loop
            # a step row of an earlier version: the route read from its device text
            {**base, "model_type": "resnet", "device": "NVIDIA H200", "loader": "off",
             "images_per_second": 400.0}]
    lines = table(rows)
    torch_line = next(line for line in lines if "| mobilenet | PyTorch |" in line)
    assert "| 8000.0 | 7800.0 | 0.97 ok | 7000.0 (ram) | 6000.0 | 0.77 LOW | 0.75 |" in torch_line
    jax_line = next(line for line in lines if "| mobilenet | Keras on jax |" in line)
    assert "| 2000.0 | 1000.0 | 0.50 LOW | - | - | - | - |" in jax_line
    assert any("| resnet | PyTorch |" in line and "| 400.0 |" in line for line in lines)
    compiled = next(line for line in lines if "| mobilenet | PyTorch, --compile |" in line)
    assert "| 8000.0 | 8400.0 | 1.05 ok |" in compiled


def test_trainer_pace_reads_a_finished_run(tmp_path, tiny_dataset):
    """The trainer's images/s from its run files: the epochs after the first, drop_last."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from trainer_pace import pace

    from pokedex_trainer.runs.layout import HISTORY, MANIFEST

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"model_type": "mobilenet", "batch_size": 8,
                                                 "image_size": [32, 32],
                                                 "framework": "pytorch"}))
    train = [[f"A/a{i}.jpg", 0] for i in range(20)]
    (run / MANIFEST).write_text(json.dumps({"data_path": "d", "class_names": ["A"],
                                            "splits": {"train": train, "val": []}}))
    (run / HISTORY).write_text("epoch,epoch_time_s\n1,30.0\n2,2.0\n3,4.0\n4,2.0\n")
    (run / "training.log").write_text("INFO: phase 'head'\n")
    result = pace(run)
    assert result["images_per_epoch"] == 16  # 20 images, batch 8, the last 4 dropped
    assert result["images_per_second"] == 8.0  # 16 / median(2, 4, 2)
    assert (result["framework"], result["backend"]) == ("pytorch", "torch")


@pytest.mark.slow
def test_inference_benchmark_times_the_eager_call_and_every_export(tmp_path):
    output = tmp_path / "inference.json"
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "inference.py"),
                             "--model_types", "mobilenet", "--image_size", "32", "--batch", "2",
                             "--runs", "2", "--tflite_precisions", "float16",
                             "--output", str(output)], capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = json.loads(output.read_text())["rows"]
    assert [r["runtime"] for r in rows] == ["eager", "keras", "tf.saved_model", "onnxruntime",
                                            "litert"]
    assert all(r["batch1_median_ms"] > 0 and r["throughput_images_per_s"] > 0 for r in rows)
    assert all(r["peak_rss_mb"] > 50 for r in rows[1:])
    assert rows[0]["latency_vs_eager"] == 1.0


def _benchmark_module(name: str):
    import importlib

    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


def test_recipe_rows_budgets_and_table():
    """The recipe benchmark's pure parts: --recipe rows, the split of a budget into the two
    phases, the trainer's command line (a row's options last, so they win) and the table."""
    recipe = _benchmark_module("recipe")
    assert recipe.parse_recipes(["light=--augment light --lr_schedule cosine"]) == {
        "tool": [], "light": ["--augment", "light", "--lr_schedule", "cosine"]}
    for bad in (["light"], ["=--augment none"], ["bare=--augment none"], ["a=", "a=-x 1"]):
        with pytest.raises(ValueError, match="NAME=ARGS"):
            recipe.parse_recipes(bad)
    with pytest.raises(ValueError, match="no tool row"):
        recipe.parse_recipes([], with_default=False)
    assert [recipe.phase_epochs(b, 0.2) for b in (1, 2, 4, 20)] == [(1, 0), (2, 0), (3, 1),
                                                                     (16, 4)]
    assert recipe.phase_epochs(4, 0.0) == (4, 0)
    demo = str(ROOT / "data" / "demo")
    args = recipe.parse_args(["--train_path", demo, "--test_path", demo])
    command = recipe.tool_command("tr", 20, args, ["--epochs", "7"], ROOT, "light_20")
    assert command[command.index("--weights") + 1] == "none"
    assert command[command.index("--fine_tune_epochs") + 1] == "4"
    assert command[-2:] == ["--epochs", "7"]
    results = [{"name": "bare", "budget": 4, "test_accuracy": 0.25},
               {"name": "tool", "budget": 4, "test_accuracy": 0.3125},
               {"name": "bare", "budget": 20, "test_accuracy": 0.5}]
    assert recipe.format_table(results, ["bare", "tool"]).splitlines() == [
        "epochs        bare        tool",
        "4            0.250       0.312",
        "20           0.500           -"]


def test_recipe_checks_everything_before_it_trains(tmp_path, tiny_dataset, capsys):
    """A row's options, the folders' classes and the output file are refused up front, in one
    line with exit code 2, before any training starts."""
    recipe = _benchmark_module("recipe")
    demo = str(ROOT / "data" / "demo")
    mine = tmp_path / "mine.json"
    mine.write_text("precious", encoding="utf-8")
    cases = [(["--recipe", "x=--augment sideways"], "row 'x'"),
             (["--recipe", "x=--label_smoothing 2"], "--label_smoothing must be in [0, 1)"),
             (["--output", str(mine)], "is not a result of this script"),
             (["--budgets", "4", "4"], "each budget once"),
             (["--val_split", "1.5"], "--val_split")]
    for extra, message in cases:
        with pytest.raises(SystemExit) as stop:
            recipe.parse_args(["--train_path", demo, "--synthetic_test", "5", *extra])
        assert stop.value.code == 2 and message in capsys.readouterr().err
    with pytest.raises(SystemExit):
        recipe.parse_args(["--train_path", demo, "--test_path", str(tiny_dataset)])
    assert "are not the training classes" in capsys.readouterr().err
    assert mine.read_text(encoding="utf-8") == "precious"


@pytest.mark.parametrize("argv,message", [
    (["--train_path", "."], "one of --test_path and --synthetic_test"),
    (["--train_path", ".", "--test_path", ".", "--budgets", "0"], "--budgets"),
    (["--train_path", ".", "--test_path", ".", "--recipe", "x"], "NAME=ARGS"),
    (["--train_path", "no_such_folder", "--synthetic_test", "2"],
     "--train_path 'no_such_folder' is not a folder"),
])
def test_recipe_benchmark_refuses_bad_input_in_one_line(argv, message):
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "recipe.py"), *argv],
                            capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 2 and message in result.stderr


def _fake_archive(path, per_class=150, classes=10):
    """A tar.gz laid out like the registry package's, with tiny PNGs."""
    import io
    import tarfile

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    with tarfile.open(path, "w:gz") as tar:
        for c in range(classes):
            for i in range(per_class):
                buffer = io.BytesIO()
                Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(
                    buffer, "PNG")
                info = tarfile.TarInfo(f"pkg-1.0.0/datasets/cifar10_folder/c{c}/c{c}_{i:04d}.png")
                info.size = buffer.tell()
                buffer.seek(0)
                tar.addfile(info, buffer)
    return path


def test_registry_photos_split_is_deterministic_and_checks_the_archive(tmp_path):
    """Train and test folders from the package's layout, the same for the same seed; an
    archive that is not the package's one is refused in one line (exit 2)."""
    photos = _benchmark_module("registry_photos")
    archive = _fake_archive(tmp_path / "fake.tar.gz")
    classes = photos.read_photos(archive)
    assert len(classes) == 10 and all(len(files) == 150 for files in classes.values())
    first = photos.write_split(classes, tmp_path / "a", 50, 64, seed=0)
    again = photos.write_split(classes, tmp_path / "b", 50, 64, seed=0)
    assert first == again == {"train": 1000, "test": 500}
    names = lambda root: sorted(p.relative_to(root).as_posix() for p in root.rglob("*.png"))
    assert names(tmp_path / "a") == names(tmp_path / "b")
    assert len(list((tmp_path / "a" / "test" / "c3").iterdir())) == 50
    from PIL import Image

    assert Image.open(next((tmp_path / "a" / "train" / "c0").iterdir())).size == (64, 64)
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "registry_photos.py"),
                             "--archive", str(archive), "--output", str(tmp_path / "out")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "not that of savannah-shannon-cv-benchmarking" in \
        result.stderr
    small = _fake_archive(tmp_path / "small.tar.gz", per_class=3)
    with pytest.raises(photos.DataError, match="10 classes of 150 photos"):
        photos.read_photos(small)


def test_unknown_benchmark_sets_apart_known_near_and_far(tmp_path):
    """benchmarks/unknown.py: the 8 known classes train, the 2 held out are the near unknowns
    (their training photos the unknown folder), the far set is 200 generated images none of
    which is a built-in image; bad --held_out is one line."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import numpy as np
    from PIL import Image

    import unknown as bench

    photos = tmp_path / "photos"
    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
               "truck"]
    for split in ("train", "test"):
        for name in classes:
            (photos / split / name).mkdir(parents=True)
            Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(photos / split / name / "a.png")
    sets = bench.split_folders(photos, ["dog", "truck"], tmp_path / "work")
    assert sorted(p.name for p in sets["near_train"].iterdir()) == ["dog", "truck"]
    assert len(list(sets["known_train"].iterdir())) == 8
    far = sorted(sets["far_test"].glob("*.png"))
    assert len(far) == 200
    from pokedex_trainer.data.unknown_photos import builtin_folder, content_hash

    builtin = {content_hash(p) for p in builtin_folder(tmp_path / "out").glob("*.png")}
    assert not builtin & {content_hash(p) for p in far}
    with pytest.raises(bench.TransferError, match="--held_out"):
        bench.split_folders(photos, ["dog", "unicorn"], tmp_path / "work2")


def test_unknown_benchmark_splits_the_classes_and_writes_a_far_set_none_trained_on(tmp_path):
    """benchmarks/unknown.py's sets: eight known classes, two held out (their train photos the
    unknown folder, their test photos the near set), and 200 far images."""
    import numpy as np
    from PIL import Image

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from imagenet_transfer import TransferError
    from unknown import split_folders

    photos = tmp_path / "photos"
    names = [f"c{i}" for i in range(10)]
    for split in ("train", "test"):
        for name in names:
            (photos / split / name).mkdir(parents=True)
            Image.fromarray(np.full((8, 8, 3), 7, np.uint8)).save(
                photos / split / name / f"{split}_{name}.png")
    sets = split_folders(photos, ["c3", "c7"], tmp_path / "work")
    assert sorted(p.name for p in sets["known_train"].iterdir()) == \
        [n for n in names if n not in ("c3", "c7")]
    assert sorted(p.name for p in sets["near_test"].iterdir()) == ["c3", "c7"]
    far = sorted(sets["far_test"].iterdir())
    assert len(far) == 200 and sum(p.name.startswith("digit_") for p in far) == 100
    with pytest.raises(TransferError, match="must name two of"):
        split_folders(photos, ["c3"], tmp_path / "again")


@pytest.mark.slow
def test_call_depth_follows_a_tiny_run_from_the_script_to_the_batch_loop(tmp_path):
    output = tmp_path / "depth.json"
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "call_depth.py"),
                             "--work_dir", str(tmp_path / "work"), "--output", str(output)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    depth = json.loads(output.read_text())
    assert depth["frames"][0] == "train_professional_models.py:<module>"
    assert depth["frames"][-1] == "pokedex_trainer/backends/torch/runner.py:train_one_epoch"
    assert "pokedex_trainer/core/loop.py:run_epoch" in depth["frames"]
    assert depth["levels"] == len(depth["frames"]) and 2 <= depth["files"] <= depth["levels"]
