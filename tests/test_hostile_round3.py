"""Hostile input, third round (issue 32): environment variables, leftovers, small lies."""

from __future__ import annotations

import pytest

from conftest import tiny_run_argv
from pokedex_trainer.cli.commands import evaluate_main, run_main, train_main


def _last_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    last = err.splitlines()[-1]
    assert last.startswith("error: "), err
    return last


@pytest.mark.parametrize("environment, message", [
    ({"WORLD_SIZE": "abc"}, "WORLD_SIZE='abc' is not a whole number"),
    ({"WORLD_SIZE": "2", "RANK": "1"}, "MASTER_ADDR and MASTER_PORT are not"),
    ({"WORLD_SIZE": "2", "RANK": "5", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"},
     "RANK=5 is not below WORLD_SIZE=2"),
    ({"RANK": "-1"}, "RANK='-1' is not a whole number"),
])
def test_a_group_torchrun_did_not_start_is_one_line(environment, message, tiny_dataset,
                                                    tmp_path, monkeypatch, capsys):
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    assert run_main(train_main, tiny_run_argv(tiny_dataset, tmp_path, "tiny_torch")) == 2
    assert message in _last_error(capsys)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_omp_num_threads_that_is_no_number_does_not_crash_evaluate(torch_run, tmp_path,
                                                                   monkeypatch, capsys):
    monkeypatch.setenv("OMP_NUM_THREADS", "abc")
    assert run_main(evaluate_main, ["--run_dir", str(torch_run), "--output_dir",
                                    str(tmp_path / "out"), "--latency_runs", "1",
                                    "--latency_batch", "2"]) == 0


# --- item 12: small lies and leftovers --------------------------------------------------------

def test_a_refused_resume_leaves_no_lock_in_the_folder(dataset_copy, tmp_path, capsys):
    before = sorted(p.name for p in dataset_copy.iterdir())
    assert run_main(train_main, ["--resume", str(dataset_copy)]) == 2
    assert "not a run directory" in _last_error(capsys)
    assert sorted(p.name for p in dataset_copy.iterdir()) == before
    almost = tmp_path / "almost"  # a config.json, but nothing to resume
    almost.mkdir()
    (almost / "config.json").write_text("{}", encoding="utf-8")
    assert run_main(train_main, ["--resume", str(almost)]) == 2
    assert "no resumable state" in _last_error(capsys)
    assert sorted(p.name for p in almost.iterdir()) == ["config.json"]


def test_paths_from_the_environment_with_an_unexpanded_variable_are_refused(
        torch_run, tmp_path, monkeypatch, capsys):
    from pokedex_trainer.cli.commands import export_main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("POKEDEX_TRUST_STORE", "${HOME}/t.jsonl")
    assert run_main(export_main, ["--run_dir", str(torch_run), "--formats", "torchscript",
                                  "--output_dir", str(tmp_path / "out")]) == 2
    assert "POKEDEX_TRUST_STORE='${HOME}/t.jsonl' holds a variable" in _last_error(capsys)
    assert not (tmp_path / "${HOME}").exists()


def test_a_thread_count_that_is_no_number_is_one_warning_and_ignored(monkeypatch, capsys):
    import os

    from pokedex_trainer.cli.commands import run_main

    monkeypatch.setenv("OMP_NUM_THREADS", "abc")
    assert run_main(lambda argv: 0, []) == 0
    assert "OMP_NUM_THREADS='abc' is not a whole number above 0: ignored" in \
        capsys.readouterr().err
    assert "OMP_NUM_THREADS" not in os.environ


def test_export_of_a_model_file_given_as_run_dir_says_to_use_model(torch_run, capsys):
    from pokedex_trainer.cli.commands import export_main

    model = torch_run / "tiny_torch_best.pth"
    assert run_main(export_main, ["--run_dir", str(model)]) == 2
    assert f"--model '{model}'" in _last_error(capsys)


def test_predict_on_a_file_that_is_no_image_fails_and_names_why(torch_run, tmp_path, capsys):
    text = tmp_path / "README.md"
    text.write_text("# not a photo\n", encoding="utf-8")
    assert run_main(evaluate_main, ["--run_dir", str(torch_run), "--predict", str(text)]) == 2
    err = _last_error(capsys)
    assert "not an image" in err and "BytesIO" not in err


def test_without_the_requirements_each_script_gives_the_install_line(tmp_path):
    """python -S: no site-packages, as on a machine where pip install was skipped."""
    import subprocess
    import sys

    from conftest import ROOT

    for script in ("train_professional_models.py", "prepare_dataset.py", "evaluate.py"):
        result = subprocess.run([sys.executable, "-S", str(ROOT / script), "--data_path",
                                 str(tmp_path)], capture_output=True, text=True, cwd=tmp_path,
                                timeout=120)
        assert result.returncode == 2, result.stderr
        assert "Traceback" not in result.stderr
        assert "pip install -r requirements.txt" in result.stderr.strip().splitlines()[-1]


def test_tensorflow_start_up_lines_are_dropped_and_others_kept(capfd, monkeypatch):
    import os

    from pokedex_trainer.machine.native_noise import without_native_noise

    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    noise = (b"WARNING: All log messages before absl::InitializeLog() is called are written "
             b"to STDERR\nE0000 00:00:1796648651.279826    8528 cuda_platform.cc:52] failed "
             b"call to cuInit: INTERNAL: CUDA error\n")
    with without_native_noise():
        os.write(2, noise + b"a real problem\n")
    assert capfd.readouterr().err == "a real problem\n"
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "0")  # asked for: shown as TensorFlow would
    with without_native_noise():
        os.write(2, noise)
    assert "cuInit" in capfd.readouterr().err


def test_the_test_loss_training_prints_says_it_is_the_objective(torch_run):
    """The shared run trains from scratch: label smoothing 0.1, so its loss is not evaluate's."""
    log = (torch_run / "training.log").read_text(encoding="utf-8")
    line = next(line for line in log.splitlines() if "test split: accuracy" in line)
    assert "the training objective, with label smoothing 0.1" in line
    assert "evaluate.py reports the plain cross-entropy" in line


# --- item 13: disk ----------------------------------------------------------------------------

def test_a_finished_run_drops_its_resume_state_unless_asked(tiny_dataset, tmp_path, capsys):
    from pokedex_trainer.runs.store import RunStore

    argv = tiny_run_argv(tiny_dataset, tmp_path, "tiny_torch", run_name="lean", epochs=2)
    assert run_main(train_main, argv) == 0
    run = tmp_path / "runs" / "lean"
    assert not (run / "resume").exists()
    assert (run / "tiny_torch_best.pth").is_file() and list(run.glob("tiny_torch_final_*"))
    log = (run / "training.log").read_text(encoding="utf-8")
    assert "its resume state (resume/" in log and "--keep_resume keeps it" in log
    assert RunStore(run).finished_status() == "completed"
    assert run_main(train_main, ["--resume", str(run)]) == 0  # "already finished", as before
    assert "already finished" in capsys.readouterr().out

    kept = tiny_run_argv(tiny_dataset, tmp_path, "tiny_torch", "--keep_resume",
                         run_name="kept", epochs=2)
    assert run_main(train_main, kept) == 0
    assert (tmp_path / "runs" / "kept" / "resume" / "state.json").is_file()


# --- item 8: resume on changed photos ---------------------------------------------------------

def test_resume_says_which_photos_changed_since_the_run_started(dataset_copy, tmp_path,
                                                                 caplog):
    import json
    import logging

    from pokedex_trainer.data.synthetic import write_dataset
    from pokedex_trainer.runs.opening import open_resumed_run

    argv = tiny_run_argv(dataset_copy, tmp_path, "tiny_torch", "--keep_resume",
                         run_name="run", epochs=1)
    assert run_main(train_main, argv) == 0
    run = tmp_path / "runs" / "run"
    manifest = json.loads((run / "split_manifest.json").read_text(encoding="utf-8"))
    photo = manifest["splits"]["train"][0][0]
    assert photo in manifest["fingerprints"]
    with caplog.at_level(logging.INFO):
        open_resumed_run(run, None)
    assert "changed since the run started" not in caplog.text
    # the same name, another picture (as an editor or a new export would leave it)
    other = write_dataset(tmp_path / "other", classes=("X",), per_class=1, size=(48, 48),
                          seed=99)
    (dataset_copy / photo).write_bytes(next((other / "X").iterdir()).read_bytes())
    caplog.clear()
    with caplog.at_level(logging.INFO):
        open_resumed_run(run, None)
    assert "1 photo(s) changed since the run started" in caplog.text and photo in caplog.text


# --- item 7: a full disk ----------------------------------------------------------------------

@pytest.fixture
def small_disk(tmp_path):
    """A 64 KB file system (tmpfs), as a full disk; needs root (CI and this machine run so)."""
    import subprocess

    mount = tmp_path / "small_disk"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({result.stderr.strip()})")
    yield mount
    subprocess.run(["umount", str(mount)], check=False)


@pytest.mark.slow
def test_a_full_tensorboard_disk_is_one_line_without_a_traceback(tiny_dataset, tmp_path,
                                                                 small_disk):
    import os
    import subprocess
    import sys

    from conftest import ROOT

    argv = tiny_run_argv(tiny_dataset, tmp_path, "tiny_torch", "--log_dir", str(small_disk),
                         "--histogram_freq", "1", epochs=3)
    result = subprocess.run([sys.executable, str(ROOT / "train_professional_models.py"),
                             *argv], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                            env=dict(os.environ, POKEDEX_TEST_MODELS="1"))
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: training failed: no space left on the disk"), last
    resumable = (next((tmp_path / "runs").iterdir()) / "resume" / "state.json").is_file()
    assert ("then --resume" in last) == resumable, last


# --- item 3: memory -------------------------------------------------------------------------

def test_the_memory_watch_acts_once_when_the_room_under_the_limit_runs_out():
    import threading

    from pokedex_trainer.machine.memory_watch import MemoryWatch

    rooms = iter([2**30, 2**29, 2**20] + [2**20] * 1000)
    said, fired = [], threading.Event()

    def on_low(message):
        said.append(message)
        fired.set()

    with MemoryWatch(on_low, room=lambda: next(rooms), limit=4 * 2**30):
        assert fired.wait(60)  # an event, not a moment
    assert len(said) == 1 and "out of memory" in said[0] and "--batch_size" in said[0]
    quiet = threading.Event()
    with MemoryWatch(lambda m: quiet.set(), room=lambda: 2**20, limit=None):
        pass  # no limit: no thread, nothing said
    assert not quiet.is_set()


def test_a_cgroup_limit_and_its_room_are_read_from_the_files(tmp_path):
    from pokedex_trainer.machine.memory import cgroup_limit, cgroup_room

    group = tmp_path / "sys" / "job"
    group.mkdir(parents=True)
    (group / "memory.max").write_text(str(6 * 2**30))
    (group / "memory.current").write_text(str(5 * 2**30))
    (group / "memory.stat").write_text(f"anon 1\nfile {2**30}\ninactive_file {2**29}\n")
    own = tmp_path / "self_cgroup"
    own.write_text("0::/job\n")
    root = tmp_path / "sys"
    assert cgroup_limit(root, own) == 6 * 2**30
    assert cgroup_room(root, own) == 6 * 2**30 - (5 * 2**30 - 2**29)
    assert cgroup_room(root, own, all_cache=True) == 2 * 2**30


@pytest.mark.slow
def test_a_run_about_to_be_killed_for_memory_ends_in_one_line_and_is_recorded(tiny_dataset,
                                                                              tmp_path):
    """Where the estimate is wrong: the room under a (simulated) limit runs out mid-run."""
    import json
    import os
    import subprocess
    import sys

    from conftest import ROOT

    argv = tiny_run_argv(tiny_dataset, tmp_path, "tiny_torch", run_name="run", epochs=2)
    code = ("import sys; sys.path.insert(0, %r)\n"
            "import pokedex_trainer.machine.memory as m\n"
            "m.cgroup_limit = lambda *a, **k: 6 * 2**30\n"
            "m.cgroup_room = lambda *a, **k: 2**20\n"
            "m.memory_available = lambda *a, **k: 2**40\n"
            "from pokedex_trainer.cli.commands import run_main, train_main\n"
            "sys.exit(run_main(train_main, %r))\n") % (str(ROOT), argv)
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                            text=True, timeout=600, env=dict(os.environ,
                                                             POKEDEX_TEST_MODELS="1"))
    assert result.returncode == 1, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: training failed: out of memory") and "Traceback" not in \
        result.stderr, result.stderr[-3000:]
    summary = json.loads((tmp_path / "runs" / "run" / "summary.json").read_text("utf-8"))
    assert summary["status"] == "failed" and "out of memory" in summary["reason"]


def test_a_training_step_that_cannot_fit_is_refused_with_its_numbers(monkeypatch):
    """ResNet152 at 4000x4000, batch 1, with 6 GiB left: the input alone (192 MB) fits, the
    step (measured bytes per pixel x pixels) does not."""
    from pokedex_trainer.config import TrainConfig
    from pokedex_trainer.errors import UserError
    from pokedex_trainer.machine import memory
    from pokedex_trainer.machine.step_memory import check_training_step

    monkeypatch.setattr(memory, "memory_available", lambda *a, **k: 6 * 2**30)
    for model_type, framework in (("resnet", "pytorch"), ("mobilenet", "keras")):
        config = TrainConfig(model_type=model_type, framework=framework,
                             image_size=(4000, 4000), batch_size=1, weights="imagenet")
        with pytest.raises(UserError) as refused:
            check_training_step(config)
        message = str(refused.value)
        assert "--image_size 4000 4000 with --batch_size 1" in message
        assert "GiB" in message and "use a smaller --image_size or --batch_size" in message
        check_training_step(TrainConfig(model_type=model_type, framework=framework,
                                        image_size=(224, 224), batch_size=8,
                                        weights="imagenet"))  # an ordinary batch fits


def test_a_latency_batch_counts_the_forward_pass(monkeypatch):
    from pokedex_trainer.errors import UserError
    from pokedex_trainer.machine import memory

    monkeypatch.setattr(memory, "memory_available", lambda *a, **k: 6 * 2**30)
    # 100000 images of 224x224: 60 GB of input, far more with ResNet152's activations
    with pytest.raises(UserError, match="--latency_batch 100000"):
        memory.check_latency_batch(100000, (224, 224), "resnet", "torch")
    # 64 images fit; 4000 ResNet152 images of 224 px fit as pixels (2.4 GB) but not as a pass
    memory.check_latency_batch(64, (224, 224), "resnet", "torch")
    memory.check_latency_batch(4000, (224, 224))  # unknown network: pixels only
    with pytest.raises(UserError, match="forward pass"):
        memory.check_latency_batch(4000, (224, 224), "resnet", "torch")


@pytest.mark.slow
def test_training_at_4000_px_on_the_cpu_is_refused_before_the_first_step(tiny_dataset,
                                                                         tmp_path):
    import os
    import subprocess
    import sys

    from conftest import ROOT

    argv = tiny_run_argv(tiny_dataset, tmp_path, "mobilenet", "--image_size", "4000", "4000",
                         "--batch_size", "1", epochs=1)
    code = ("import sys; sys.path.insert(0, %r)\n"
            "import pokedex_trainer.machine.memory as m\n"
            "m.memory_available = lambda *a, **k: 6 * 2**30  # a 6 GB container\n"
            "from pokedex_trainer.cli.commands import run_main, train_main\n"
            "sys.exit(run_main(train_main, %r))\n") % (str(ROOT), argv)
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                            text=True, timeout=600, env=dict(os.environ))
    assert result.returncode == 2, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert "a training step of MobileNetV2 at --image_size 4000 4000" in last, last
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
