"""--cache ram|disk: the stored pixels are a fresh decode and resize; a changed file is decoded
again; a disk cache is reused by later runs and rebuilt when deleted; ram refuses what does not
fit."""

from __future__ import annotations

import os
import shutil

import cv2
import numpy as np
import pytest

from conftest import tiny_run_argv

from pokedex_trainer.data import images as image_module
from pokedex_trainer.data.scan import scan_dataset
from pokedex_trainer.errors import UserError
from pokedex_trainer.data.feeding import BatchLoader, BatchSource
from pokedex_trainer.data.cache import ImageCache, working_size
from pokedex_trainer.data.images import read_image


def _files(root):
    return [relative for relative, _ in scan_dataset(root).samples]


def _fresh(path, image_size):
    height, width = working_size(image_size)
    image = read_image(path, min_size=(height, width))
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)


@pytest.mark.parametrize("kind", ["ram", "disk"])
def test_cache_holds_a_fresh_decode_and_decodes_a_changed_file_again(dataset_copy, tmp_path,
                                                                     kind):
    files = _files(dataset_copy)
    cache = ImageCache(dataset_copy, files, (32, 32), kind, tmp_path / "cache")
    try:
        assert working_size((32, 32)) == (40, 40)
        for relative in files:
            stored = cache.image(relative)
            assert stored.shape == (40, 40, 3) and not stored.flags.writeable
            assert np.array_equal(stored, _fresh(dataset_copy / relative, (32, 32)))
        assert cache.filled() == len(files)
        # A file replaced by another photo (new size and modification time) is decoded again.
        changed = dataset_copy / files[0]
        shutil.copyfile(dataset_copy / files[-1], changed)
        os.utime(changed, ns=(10**18, 10**18))
        assert np.array_equal(cache.image(files[0]), _fresh(dataset_copy / files[-1], (32, 32)))
    finally:
        cache.close()


def test_disk_cache_is_reused_by_a_later_run_without_decoding(dataset_copy, tmp_path,
                                                              monkeypatch):
    files = _files(dataset_copy)
    first = ImageCache(dataset_copy, files, (32, 32), "disk", tmp_path / "cache")
    expected = [first.image(relative).copy() for relative in files]
    first.close()

    def no_decode(*args, **kwargs):
        raise AssertionError("decoded although the cache holds the image")

    monkeypatch.setattr(image_module, "read_image", no_decode)
    second = ImageCache(dataset_copy, files, (32, 32), "disk", tmp_path / "cache")
    assert second.path == first.path and second.filled() == len(files)
    assert all(np.array_equal(second.image(r), e) for r, e in zip(files, expected))
    # Another size is another cache; the first one is left as it is.
    other = ImageCache(dataset_copy, files, (48, 48), "disk", tmp_path / "cache")
    assert other.path != first.path and other.filled() == 0
    assert len(list((tmp_path / "cache").iterdir())) == 2


def test_deleted_disk_cache_is_rebuilt(dataset_copy, tmp_path):
    files = _files(dataset_copy)
    cache = ImageCache(dataset_copy, files, (32, 32), "disk", tmp_path / "cache")
    cache.image(files[0])
    cache.close()
    shutil.rmtree(tmp_path / "cache")
    again = ImageCache(dataset_copy, files, (32, 32), "disk", tmp_path / "cache")
    assert again.filled() == 0
    assert np.array_equal(again.image(files[0]), _fresh(dataset_copy / files[0], (32, 32)))


def test_damaged_disk_cache_files_are_rebuilt(dataset_copy, tmp_path):
    files = _files(dataset_copy)
    cache = ImageCache(dataset_copy, files, (32, 32), "disk", tmp_path / "cache")
    cache.image(files[0])
    cache.close()
    (cache.path / "pixels.u8").write_bytes(b"truncated")
    again = ImageCache(dataset_copy, files, (32, 32), "disk", tmp_path / "cache")
    assert again.filled() == 0
    assert np.array_equal(again.image(files[0]), _fresh(dataset_copy / files[0], (32, 32)))


def test_ram_cache_refuses_what_memory_cannot_hold(dataset_copy, monkeypatch):
    import psutil

    class Little:
        available = 1000

    monkeypatch.setattr(psutil, "virtual_memory", lambda: Little())
    with pytest.raises(UserError) as error:
        ImageCache(dataset_copy, _files(dataset_copy), (512, 512), "ram")
    message = str(error.value)
    assert "--cache ram needs about" in message and "--cache disk" in message
    assert "\n" not in message


def test_disk_cache_refuses_a_full_disk(dataset_copy, tmp_path, monkeypatch):
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10, 10, 0))
    with pytest.raises(UserError, match="--cache disk needs about"):
        ImageCache(dataset_copy, _files(dataset_copy), (32, 32), "disk", tmp_path / "cache")


def test_loader_with_cache_gives_random_augmentation_from_stored_pixels(dataset_copy, tmp_path):
    index = scan_dataset(dataset_copy)
    cache = ImageCache(dataset_copy, _files(dataset_copy), (32, 32), "ram")
    try:
        source = BatchSource(index.root, index.samples, (32, 32), training=True, seed=3,
                             cache=cache)
        loader = BatchLoader(source, 6, shuffle=True, seed=3)
        first = [batch.images for batch in loader.iter_epoch(0)]
        assert cache.filled() == len(index.samples)
        again = [batch.images for batch in loader.iter_epoch(0)]  # same epoch: same draws
        other = [batch.images for batch in loader.iter_epoch(1)]  # next epoch: new draws
        assert all(np.array_equal(a, b) for a, b in zip(first, again))
        assert not all(np.array_equal(a, b) for a, b in zip(first, other))
    finally:
        cache.close()


def _train_argv(tmp_path, data, model_type, workers):
    return tiny_run_argv(data, tmp_path, model_type, "--epochs", "1", "--fine_tune_epochs", "1",
                         "--val_split", "0.25", "--test_split", "0.25",
                         "--workers", str(workers), "--cache", "disk")


def _train_twice(tmp_path, data, model_type, workers):
    import json

    from pokedex_trainer.cli.commands import run_main, train_main

    for _ in range(2):
        assert run_main(train_main, _train_argv(tmp_path, data, model_type, workers)) == 0
    runs = sorted(p for p in (tmp_path / "runs").iterdir() if (p / "config.json").exists())
    logs = [(run / "training.log").read_text("utf-8") for run in runs]
    assert len(runs) == 2
    assert json.loads((runs[0] / "config.json").read_text("utf-8"))["cache"] == "disk"
    caches = list((tmp_path / "runs" / "cache").iterdir())
    assert len(caches) == 1 and "image cache:" in logs[0] and "filled during" in logs[0]
    assert f"image cache: reusing {caches[0]}" in logs[1]


def test_training_with_a_disk_cache_reuses_it_in_the_next_run(tiny_dataset, tmp_path):
    _train_twice(tmp_path, tiny_dataset, "tiny_torch", 0)


@pytest.mark.slow
def test_keras_training_with_workers_and_a_disk_cache(tiny_dataset, tmp_path):
    _train_twice(tmp_path, tiny_dataset, "tiny_keras", 2)


@pytest.mark.parametrize("extra, message", [
    (["--cache", "disk", "--cache_dir", "FILE"], "--cache disk cannot use"),
    (["--cache_dir", "DIR"], "--cache_dir is the folder of --cache disk"),
])
def test_a_cache_folder_that_cannot_be_used_is_refused_before_the_run(tiny_dataset, tmp_path,
                                                                      capsys, extra, message):
    from pokedex_trainer.cli.commands import run_main, train_main

    (tmp_path / "FILE").write_text("mine", encoding="utf-8")
    extra = [str(tmp_path / e) if e in ("FILE", "DIR") else e for e in extra]
    argv = [a for a in _train_argv(tmp_path, tiny_dataset, "tiny_torch", 0)
            if a not in ("--cache", "disk")] + extra
    assert run_main(train_main, argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists() or not any(
        p.is_dir() and p.name != "cache" for p in (tmp_path / "runs").iterdir())
    assert (tmp_path / "FILE").read_text(encoding="utf-8") == "mine"


@pytest.mark.slow
def test_resume_takes_the_cache_of_the_resuming_command(tiny_dataset, tmp_path):
    from conftest import ROOT, nth_commit, run_with_signal_at
    from pokedex_trainer.cli.commands import run_main, train_main

    argv = [ROOT / "train_professional_models.py",
            *_train_argv(tmp_path, tiny_dataset, "tiny_torch", 0), "--epochs", "3",
            "--run_name", "run"]
    killed = run_with_signal_at(tmp_path, argv, nth_commit("state.json", 1), after=True)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert (tmp_path / "runs" / "cache").is_dir()  # the first part used --cache disk
    run_dir = tmp_path / "runs" / "run"
    assert run_main(train_main, ["--resume", str(run_dir), "--workers", "0",
                                 "--cache", "ram"]) == 0
    caches = [line for line in (run_dir / "training.log").read_text("utf-8").splitlines()
              if "image cache:" in line]
    assert len(caches) == 2 and "cache" in caches[0] and "of shared memory for" in caches[1]
