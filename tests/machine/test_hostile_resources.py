"""Issue #26, items 5, 6 and part of 9: a run that stops early removes only what it made,
memory refusals (the cgroup limit included) come before any work, and a path option that
names a file where a folder is needed, or a name too long for the system, is one line and
exit code 2 in every script."""

from __future__ import annotations

import os

import pytest

from conftest import tiny_run_argv
from pokedex_trainer.cli.commands import evaluate_main, export_main, run_main, train_main
from pokedex_trainer.errors import UserError
from pokedex_trainer.cli.commands import prepare_main

TOO_LONG = "x" * 300  # longer than any file system's longest name (255 bytes)


def tiny_train_argv(data, out, *extra):
    return tiny_run_argv(data, out, "tiny_torch", *extra, epochs=1, batch_size=4)


@pytest.fixture(autouse=True)
def console_log_on_this_tests_stderr():
    """run_main logs to the stderr of the first test that called it (a closed capture by
    now), which prints logging tracebacks: each test here gets its own console handler."""
    import logging

    root = logging.getLogger()

    def drop():
        for handler in [h for h in root.handlers if getattr(h, "_pokedex", False)]:
            root.removeHandler(handler)

    drop()
    yield
    drop()


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# -- item 5: a run stopped before its first epoch removes only what it made ---------------

@pytest.mark.parametrize("weights", ["imagenet", "junk_file"])
def test_unstarted_run_keeps_a_folder_it_did_not_make(weights, tiny_dataset, tmp_path,
                                                      capsys):
    """``--log_dir home --run_name Documents``: the run's TensorBoard folder is the user's
    Documents; bad weights stop the run before its first epoch and Documents stays whole."""
    documents = tmp_path / "home" / "Documents"
    (documents / "train").mkdir(parents=True)
    (documents / "letter.txt").write_text("dear user")
    (documents / "train" / "notes.txt").write_text("mine")
    if weights == "junk_file":
        weights = tmp_path / "weights.pth"
        weights.write_bytes(b"not a state dict")
    argv = tiny_train_argv(tiny_dataset, tmp_path, "--log_dir", str(tmp_path / "home"),
                           "--run_name", "Documents")
    # tiny_torch has no ImageNet weights: the same UserError as ImageNet offline
    argv[argv.index("--weights") + 1] = str(weights)
    assert run_main(train_main, argv) == 2
    assert "weights" in one_error_line(capsys).lower()
    assert (documents / "letter.txt").read_text() == "dear user"
    assert (documents / "train" / "notes.txt").read_text() == "mine"
    assert not (tmp_path / "runs" / "Documents").exists()  # the run's own folder is gone


def test_unstarted_run_removes_its_own_event_files_only(tiny_dataset, tmp_path, capsys,
                                                          monkeypatch):
    """An earlier run's TensorBoard folder of the same name keeps its event files; the new
    run's event files (written before it stopped) and the folders it made are removed."""
    import pokedex_trainer.runs.lifecycle as training

    def stop(*args, **kwargs):
        raise UserError("stopped by the test before the first epoch")

    monkeypatch.setattr(training, "run_phases", stop)
    earlier = tmp_path / "tb" / "again" / "train"
    earlier.mkdir(parents=True)
    old_events = earlier / "events.out.tfevents.1.host.1.0"
    old_events.write_bytes(b"an earlier run")
    assert run_main(train_main, tiny_train_argv(tiny_dataset, tmp_path, "--run_name",
                                                "again")) == 2
    one_error_line(capsys)
    assert sorted(os.listdir(earlier)) == [old_events.name]
    assert not (tmp_path / "tb" / "again" / "validation").exists()  # made by this run
    # A fresh name: every folder the run made is gone, the TensorBoard root included.
    fresh = tmp_path / "fresh"
    assert run_main(train_main, tiny_train_argv(tiny_dataset, fresh, "--run_name", "new")) == 2
    one_error_line(capsys)
    assert not fresh.exists() or os.listdir(fresh) == []


# -- item 6: memory --------------------------------------------------------------------------

def fake_cgroup(tmp_path, limit: int, used: int = 0, inactive_file: int = 0, v1=False):
    """A cgroup folder (v2 unless ``v1``) holding this process with ``limit`` bytes."""
    root = tmp_path / "cgroup"
    self_file = tmp_path / "self_cgroup"
    if v1:
        folder = root / "memory" / "job"
        folder.mkdir(parents=True)
        (folder / "memory.limit_in_bytes").write_text(f"{limit}\n")
        (folder / "memory.usage_in_bytes").write_text(f"{used}\n")
        (folder / "memory.stat").write_text(f"cache 0\ntotal_inactive_file {inactive_file}\n")
        self_file.write_text("12:cpu,cpuacct:/job\n7:memory:/job\n")
    else:
        folder = root / "job" / "step"
        folder.mkdir(parents=True)
        (root / "job" / "memory.max").write_text(f"{limit}\n")
        (root / "job" / "memory.current").write_text(f"{used}\n")
        (root / "job" / "memory.stat").write_text(f"anon 1\ninactive_file {inactive_file}\n")
        (folder / "memory.max").write_text("max\n")  # the tighter limit is the parent's
        (folder / "memory.current").write_text("1\n")
        self_file.write_text("0::/job/step\n")
    return root, self_file


@pytest.mark.parametrize("v1", [False, True], ids=["cgroup_v2", "cgroup_v1"])
def test_memory_available_reads_the_cgroup_limit(tmp_path, v1):
    from pokedex_trainer.machine import memory

    mib = 2**20
    root, self_file = fake_cgroup(tmp_path, 100 * mib, used=70 * mib, inactive_file=10 * mib,
                                  v1=v1)
    # 100 MiB limit, 70 used of which 10 the kernel can drop: 40 MiB left
    assert memory.memory_available(root, self_file) == 40 * mib


def test_memory_available_without_a_limit_is_the_machines(tmp_path, monkeypatch):
    import collections

    import psutil

    from pokedex_trainer.machine import memory

    root, self_file = fake_cgroup(tmp_path, 2**62)
    (root / "job" / "memory.max").write_text("max\n")
    machine = collections.namedtuple("vmem", "available")(3 * 2**30)
    monkeypatch.setattr(psutil, "virtual_memory", lambda: machine)
    assert memory.memory_available(root, self_file) == 3 * 2**30  # no limit: the machine's
    (root / "job" / "memory.max").write_text(f"{2**30}\n")
    assert memory.memory_available(root, self_file) == 2**30  # a limit below it wins


@pytest.fixture
def small_cgroup(tmp_path, monkeypatch):
    """Every memory check of this process sees a cgroup with 20 MiB left."""
    from pokedex_trainer.machine import memory

    root, self_file = fake_cgroup(tmp_path, 20 * 2**20)
    monkeypatch.setattr(memory, "CGROUP_ROOT", root)
    monkeypatch.setattr(memory, "SELF_CGROUP", self_file)


def test_ram_cache_over_the_cgroup_limit_is_refused_before_any_work(tiny_dataset, tmp_path,
                                                                     capsys, small_cgroup):
    # 36 images at 640x640x3 = 44 MiB of cache; one batch of input, 3 MiB, would fit
    argv = tiny_train_argv(tiny_dataset, tmp_path, "--image_size", "512", "512", "--cache",
                           "ram", "--batch_size", "1", "--run_name", "big")
    assert run_main(train_main, argv) == 2
    line = one_error_line(capsys)
    assert "--cache ram" in line and "memory" in line
    assert not (tmp_path / "runs").exists() and not (tmp_path / "tb").exists()


def test_batch_over_the_cgroup_limit_is_refused(tiny_dataset, tmp_path, capsys, small_cgroup):
    # 16 x 512 x 512 x 3 float32 = 48 MiB of input pixels
    argv = tiny_train_argv(tiny_dataset, tmp_path, "--image_size", "512", "512",
                           "--batch_size", "16")
    assert run_main(train_main, argv) == 2
    assert "--batch_size 16" in one_error_line(capsys)
    assert not (tmp_path / "runs").exists()


def test_latency_batch_over_the_memory_is_refused_before_any_work(torch_run, tmp_path, capsys,
                                                                  small_cgroup):
    out = tmp_path / "evaluation"
    calibration = torch_run / "calibration.json"
    before = calibration.read_bytes() if calibration.exists() else None
    # 20000 x 32 x 32 x 3 pixels, as uint8 and as float32: 293 MiB
    assert run_main(evaluate_main, ["--run_dir", str(torch_run), "--output_dir", str(out),
                                    "--latency_batch", "20000"]) == 2
    assert "--latency_batch 20000" in one_error_line(capsys)
    # no report: at most the empty folder evaluate.py claims first, with its own record
    assert not out.exists() or not [p for p in out.iterdir() if not p.name.startswith(".")]
    assert (calibration.read_bytes() if calibration.exists() else None) == before


def test_absurd_latency_batch_is_one_line(torch_run, tmp_path, capsys):
    """Whatever the machine: 10**9 images is refused, and '1e9' is a usage error."""
    assert run_main(evaluate_main, ["--run_dir", str(torch_run), "--output_dir",
                                    str(tmp_path / "e"), "--latency_batch", str(10**9)]) == 2
    assert "--latency_batch" in one_error_line(capsys)
    assert run_main(evaluate_main, ["--run_dir", str(torch_run), "--latency_batch",
                                    "1e9"]) == 2
    assert "--latency_batch: invalid int value" in one_error_line(capsys)


# -- item 9: path options that name a file, or a name too long ------------------------------

TRAIN_CASES = {
    "train --output_dir FILE": ("--output_dir", "{file}"),
    "train --log_dir FILE": ("--log_dir", "{file}"),
    "train --cache_dir FILE": ("--cache", "disk", "--cache_dir", "{file}"),
    "train --cache_dir FILE/sub": ("--cache", "disk", "--cache_dir", "{file}/sub"),
    "train --run_name LONG": ("--run_name", TOO_LONG),
    "train --output_dir LONG": ("--output_dir", "{tmp}/" + TOO_LONG + "/runs"),
    "train --log_dir LONG": ("--log_dir", "{tmp}/" + TOO_LONG),
    "train --cache_dir LONG": ("--cache", "disk", "--cache_dir", "{tmp}/" + TOO_LONG),
}


@pytest.mark.parametrize("case", sorted(TRAIN_CASES))
def test_train_path_option_that_cannot_be_a_folder(case, tiny_dataset, tmp_path, capsys):
    (tmp_path / "afile").write_text("a user's file")
    extra = [a.format(file=tmp_path / "afile", tmp=tmp_path) for a in TRAIN_CASES[case]]
    assert run_main(train_main, tiny_train_argv(tiny_dataset, tmp_path, *extra)) == 2
    one_error_line(capsys)
    assert (tmp_path / "afile").read_text() == "a user's file"
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("where", ["file", "long"])
def test_evaluate_and_export_output_dir_that_cannot_be_a_folder(where, torch_run, tmp_path,
                                                                capsys):
    afile = tmp_path / "afile"
    afile.write_text("a user's file")
    out = str(afile) if where == "file" else str(tmp_path / TOO_LONG)
    for main, argv in (
            (evaluate_main, ["--run_dir", str(torch_run), "--output_dir", out]),
            (evaluate_main, ["--run_dir", str(torch_run), "--output_dir", out, "--predict",
                             str(torch_run.parent)]),
            (export_main, ["--run_dir", str(torch_run), "--output_dir", out]),
            (export_main, ["--run_dir", str(torch_run), "--output_dir", out + "/sub"])):
        assert run_main(main, argv) == 2, argv
        one_error_line(capsys)
    assert afile.read_text() == "a user's file"


@pytest.mark.parametrize("where", ["file", "long"])
def test_prepare_output_dir_that_cannot_be_a_folder(where, tiny_dataset, tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("a user's file")
    out = str(afile) if where == "file" else str(tmp_path / TOO_LONG / "x")
    assert run_main(prepare_main, ["--input_dir", str(tiny_dataset), "--output_dir", out,
                                   "--size", "32", "--workers", "0"]) == 2
    one_error_line(capsys)
    assert afile.read_text() == "a user's file"


@pytest.mark.parametrize("where", ["folder", "under_a_file", "long"])
def test_evaluate_calibration_file_that_cannot_be_written_is_refused_first(where, torch_run,
                                                                           tmp_path, capsys):
    """--calibration is written after the calibration work: its path is checked before."""
    (tmp_path / "afile").write_text("a user's file")
    (tmp_path / "adir").mkdir()
    calibration = {"folder": tmp_path / "adir", "under_a_file": tmp_path / "afile" / "c.json",
                   "long": tmp_path / TOO_LONG}[where]
    out = tmp_path / "evaluation"
    assert run_main(evaluate_main, ["--run_dir", str(torch_run), "--output_dir", str(out),
                                    "--calibration", str(calibration)]) == 2
    assert "--calibration" in one_error_line(capsys)
    assert not out.exists()  # nothing done
    assert (tmp_path / "afile").read_text() == "a user's file"
