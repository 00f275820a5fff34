"""Hostile and broken input: no file runs code, no user file is lost, every mistake is one line."""

from __future__ import annotations

import csv
import io
import json
import pickle
import shutil
import zipfile
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from conftest import (ROOT, nth_commit, run_with_signal_at, tiny_run_argv,  # noqa: E402
                      train_tiny_run)
from pokedex_trainer.cli.commands import (  # noqa: E402
    evaluate_main,
    export_main,
    run_main,
    train_main,
)


class Payload:
    """Unpickling it creates ``marker``: a stand-in for any code an attacker would run."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    last = err.splitlines()[-1]
    assert last.startswith("error: ")
    return last


@pytest.fixture(scope="module")
def torch_exports(torch_run, tmp_path_factory) -> Path:
    """TorchScript and torch.export files of the tiny PyTorch run, written by export.py."""
    out = tmp_path_factory.mktemp("torch_exports")
    assert run_main(export_main, ["--run_dir", str(torch_run), "--formats",
                                  "torchscript,torch_export", "--output_dir", str(out),
                                  "--check_images", "6"]) == 0
    return out


def _copy_with_sidecar(source: Path, target: Path) -> Path:
    shutil.copy(source, target)
    shutil.copy(source.with_name(source.name + ".json"), target.with_name(target.name + ".json"))
    return target


def _rewrite_pt2(source: Path, target: Path, change) -> None:
    """Copy a .pt2 archive, letting ``change(name, data, entries)`` replace entries."""
    with zipfile.ZipFile(source) as archive:
        entries = {name: archive.read(name) for name in archive.namelist()}
    change(entries)
    with zipfile.ZipFile(target, "w") as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    shutil.copy(source.with_name(source.name + ".json"), target.with_name(target.name + ".json"))


def _pickled_weight(marker):
    def change(entries):
        config_name = next(n for n in entries if n.endswith("model_weights_config.json"))
        config = json.loads(entries[config_name])
        first = next(iter(config["config"].values()))
        first["use_pickle"] = True
        entries[config_name] = json.dumps(config).encode()
        folder = config_name.rsplit("/", 1)[0]
        entries[f"{folder}/{first['path_name']}"] = pickle.dumps(Payload(marker))
    return change


def _pickled_sample_inputs(marker):
    def change(entries):
        name = next(n for n in entries if "/data/sample_inputs/" in n)
        buffer = io.BytesIO()
        torch.save(Payload(marker), buffer)
        entries[name] = buffer.getvalue()
    return change


@pytest.mark.parametrize("variant", [_pickled_weight, _pickled_sample_inputs])
def test_a_pt2_with_a_pickled_payload_runs_no_code(torch_exports, tmp_path, tiny_dataset,
                                                   capsys, variant):
    marker = tmp_path / "pwned"
    bad = tmp_path / "model.pt2"
    _rewrite_pt2(torch_exports / "tiny_torch_best.pt2", bad, variant(marker))
    try:  # the payload is live: PyTorch's own loader runs it
        torch.export.load(str(bad))
    except Exception:
        pass
    assert marker.exists()
    marker.unlink()
    capsys.readouterr()  # what PyTorch printed while doing so

    assert run_main(evaluate_main, ["--model", str(bad), "--data_path", str(tiny_dataset)]) == 2
    assert "refused to open" in _one_line_error(capsys)
    photo = next(tiny_dataset.rglob("*.jpg"))
    assert run_main(evaluate_main, ["--model", str(bad), "--predict", str(photo)]) == 2
    assert not marker.exists()


def test_torchscript_opens_only_when_this_tool_wrote_it(torch_exports, tmp_path, tiny_dataset,
                                                        capsys):
    ours = torch_exports / "tiny_torch_best.pt"
    assert run_main(evaluate_main, ["--model", str(ours), "--data_path", str(tiny_dataset),
                                    "--output_dir", str(tmp_path / "ours"),
                                    "--latency_runs", "2"]) == 0
    # a stranger's TorchScript file with the same sidecar
    stranger = _copy_with_sidecar(ours, tmp_path / "stranger.pt")
    traced = torch.jit.trace(_Three(), torch.zeros(1, 3, 32, 32))
    torch.jit.save(traced, str(stranger))
    assert run_main(evaluate_main, ["--model", str(stranger), "--data_path",
                                    str(tiny_dataset)]) == 2
    assert "--trust_model_file" in _one_line_error(capsys)
    assert run_main(evaluate_main, ["--model", str(stranger), "--data_path", str(tiny_dataset),
                                    "--trust_model_file", "--output_dir", str(tmp_path / "t"),
                                    "--latency_runs", "2"]) == 0


class _Three(torch.nn.Module):
    def forward(self, x):
        return torch.softmax(x.mean(dim=(2, 3)), dim=1)  # 3 probabilities per image


def test_a_savedmodel_that_writes_files_is_refused(tmp_path, tiny_dataset, capsys):
    tf = pytest.importorskip("tensorflow")
    marker = tmp_path / "written_by_the_graph"

    class Writer(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 32, 32, 3], tf.float32)])
        def serve(self, x):
            tf.io.write_file(str(marker), "x")
            return tf.nn.softmax(tf.zeros([tf.shape(x)[0], 3]))

    folder = tmp_path / "model_saved_model"
    tf.saved_model.save(Writer(), str(folder))
    (tmp_path / "model_saved_model.json").write_text(json.dumps({
        "class_names": ["Gato", "León", "Perro"], "image_size": [32, 32],
        "input": {"layout": "NHWC", "mean": [0, 0, 0], "std": [1, 1, 1]}}), encoding="utf-8")
    assert run_main(evaluate_main, ["--model", str(folder), "--data_path",
                                    str(tiny_dataset)]) == 2
    assert "refused to open" in _one_line_error(capsys)
    assert not marker.exists()


SIDECAR_CASES = {
    "negative temperature": (lambda s: s.update(temperature=-1.0), "temperature"),
    "string temperature": (lambda s: s.update(temperature="1.5"), "temperature"),
    "zero std": (lambda s: s["input"].update(std=[0.0, 1.0, 1.0]), "std"),
    "negative size": (lambda s: s.update(image_size=[-32, 32]), "image_size"),
    "size of another file": (lambda s: s.update(image_size=[48, 48]), "does not take"),
    "other layout": (lambda s: s["input"].update(layout="NCHW"), "does not take"),
    "numbers as class names": (lambda s: s.update(class_names=[1, 2, 3]), "class_names"),
    "another class count": (lambda s: s.update(class_names=["a", "b"]), "sidecar names 2"),
}


@pytest.mark.parametrize("case", sorted(SIDECAR_CASES))
def test_a_sidecar_that_does_not_describe_its_file_is_one_line(keras_exports, tmp_path,
                                                               tiny_dataset, capsys, case):
    change, expected = SIDECAR_CASES[case]
    model = _copy_with_sidecar(keras_exports / "export" / "tiny_keras_best.onnx",
                               tmp_path / "model.onnx")
    sidecar_file = model.with_name("model.onnx.json")
    sidecar = json.loads(sidecar_file.read_text(encoding="utf-8"))
    change(sidecar)
    sidecar_file.write_text(json.dumps(sidecar), encoding="utf-8")
    photo = next(tiny_dataset.rglob("*.jpg"))
    assert run_main(evaluate_main, ["--model", str(model), "--predict", str(photo)]) == 2
    assert expected in _one_line_error(capsys)


def test_prepare_never_deletes_or_overwrites_a_file_it_did_not_write(tmp_path):
    from pokedex_trainer.cli.commands import prepare_main as main
    from pokedex_trainer.data.synthetic import write_dataset

    raw = write_dataset(tmp_path / "raw", classes=("Gato", "Perro"), per_class=4,
                        size=(64, 64), seed=3)
    out = tmp_path / "training"
    argv = ["--input_dir", str(raw), "--output_dir", str(out), "--size", "32", "--workers", "0"]
    assert run_main(main, argv) == 0
    assert sorted(p.name for p in (out / "Perro").iterdir()) == [
        f"Perro_{i:04d}.jpg" for i in range(4)]
    user = {out / "Perro" / "Perro_verano.jpg": b"summer", out / "Perro" / "Perro_0004.jpg":
            b"mine, with the next number", out / "Zorro" / "Zorro_0000.jpg": b"a class of mine"}
    for path, data in user.items():
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(data)
    (raw / "Perro" / "Perro_0000.jpg").unlink()  # its output becomes stale
    write_dataset(tmp_path / "more", classes=("Perro",), per_class=1, size=(64, 64), seed=9)
    shutil.copy(tmp_path / "more" / "Perro" / "Perro_0000.jpg", raw / "Perro" / "nuevo.jpg")
    assert run_main(main, argv) == 0
    for path, data in user.items():
        assert path.read_bytes() == data
    perro = sorted(p.name for p in (out / "Perro").iterdir())
    assert "Perro_0000.jpg" not in perro  # the stale output this tool wrote is gone
    assert perro == ["Perro_0001.jpg", "Perro_0002.jpg", "Perro_0003.jpg", "Perro_0004.jpg",
                     "Perro_0005.jpg", "Perro_verano.jpg"]  # 3 kept, the user's, the new one


@pytest.mark.parametrize("target", ["", "../../escaped", "x/y", "CON"])
def test_class_map_targets_are_single_folder_names(tmp_path, capsys, target):
    from pokedex_trainer.cli.commands import prepare_main as main
    from pokedex_trainer.data.synthetic import write_dataset

    raw = write_dataset(tmp_path / "raw", classes=("cane", "gatto"), per_class=2, size=(40, 40))
    mapping = tmp_path / "map.json"
    mapping.write_text(json.dumps({"cane": target}), encoding="utf-8")
    out = tmp_path / "deep" / "er" / "training"
    assert run_main(main, ["--input_dir", str(raw), "--output_dir", str(out), "--class_map",
                           str(mapping), "--workers", "0"]) == 2
    assert "--class_map target class" in _one_line_error(capsys)
    assert not (tmp_path / "escaped").exists() and not out.exists()


def _train_argv(tmp_path, data, *extra):
    return tiny_run_argv(data, tmp_path, "tiny_torch", *extra, epochs=1)


@pytest.mark.parametrize("extra, message", [
    (["--run_name", "../outside"], "--run_name '../outside' is not usable"),
    (["--run_name", "/tmp/abs"], "is not usable"),
    (["--seed", "-1"], "--seed must be"),
    (["--seed", str(2**32)], "--seed must be"),
    (["--image_size", "100000", "100000"], "at most 4096 px"),
])
def test_bad_values_are_one_line_and_create_nothing(tmp_path, tiny_dataset, capsys, extra,
                                                    message):
    assert run_main(train_main, _train_argv(tmp_path, tiny_dataset, *extra)) == 2
    assert message in _one_line_error(capsys)
    assert not (tmp_path / "runs").exists() and not (tmp_path / "outside").exists()


def test_weights_of_another_network_leave_no_run_behind(tmp_path, tiny_dataset, capsys):
    other = tmp_path / "other.pth"
    torch.save({"conv1.weight": torch.zeros(4, 3, 5, 5)}, other)
    assert run_main(train_main, _train_argv(tmp_path, tiny_dataset, "--weights",
                                            str(other))) == 2
    assert "tensors have another shape" in _one_line_error(capsys)
    runs = tmp_path / "runs"  # made by this run: removed with it when nothing else is there
    assert not runs.exists() or (not [p for p in runs.iterdir() if p.is_dir()] and
                                 not (runs / "experiments.csv").exists())
    assert not (tmp_path / "tb").exists() or not any((tmp_path / "tb").iterdir())


def test_an_unwritable_log_dir_leaves_no_run_behind(tmp_path, tiny_dataset, capsys):
    (tmp_path / "a_file").write_text("not a folder")
    assert run_main(train_main, _train_argv(tmp_path, tiny_dataset, "--log_dir",
                                            str(tmp_path / "a_file" / "tb"))) == 2
    assert "TensorBoard log directory" in _one_line_error(capsys)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_resume_of_a_finished_run_changes_nothing(torch_run, tmp_path, capsys):
    run = tmp_path / "runs" / "done"
    shutil.copytree(torch_run, run)
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()}
    assert run_main(train_main, ["--resume", str(run)]) == 0
    assert "already finished (completed): nothing to resume" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()} == before
    assert not (tmp_path / "runs" / "experiments.csv").exists()


def test_a_run_being_trained_cannot_be_resumed_twice(tmp_path, capsys):
    from pokedex_trainer.runs.lock import RunLock

    fixture = Path(__file__).parent / "fixtures" / "legacy_v1"
    shutil.copytree(fixture, tmp_path / "legacy")
    run = tmp_path / "legacy" / "runs" / "tiny_torch_killed"
    history = (run / "history.csv").read_text(encoding="utf-8")
    lock = RunLock(run).acquire()  # as a live training process holds it
    try:
        assert run_main(train_main, ["--resume", str(run)]) == 2
        assert "being trained by another process" in _one_line_error(capsys)
        assert (run / "history.csv").read_text(encoding="utf-8") == history
    finally:
        lock.release()


def test_a_full_disk_ends_in_one_line_and_keeps_the_record(tmp_path, tiny_dataset):
    # the disk fills at the second epoch's resume state and stays full: summary.json fails too
    run = tmp_path / "runs" / "run"
    argv = [ROOT / "train_professional_models.py",
            *_train_argv(tmp_path, tiny_dataset, "--epochs", "3", "--run_name", "run")]
    full = run_with_signal_at(
        tmp_path, argv, "name[1] == 'summary.json' or (" + nth_commit("state.json", 2) + ")",
        action="raise OSError(28, 'No space left on device', str(dst))")
    assert full.returncode == 1, full.stderr[-2000:]
    assert "Traceback" not in full.stderr
    assert "error: training failed: no space left on the disk" in full.stderr.splitlines()[-1]
    log = (run / "training.log").read_text("utf-8")
    assert "could not write summary.json" in log
    with open(tmp_path / "runs" / "experiments.csv", encoding="utf-8") as handle:
        row = list(csv.DictReader(handle))[-1]
    assert row["status"] == "failed" and "no space left" in row["reason"]


def test_a_class_with_no_readable_image_is_dropped_and_counted(dataset_copy, tmp_path, capsys):
    for image in (dataset_copy / "León").iterdir():
        image.write_bytes(b"not an image")
    run = train_tiny_run(dataset_copy, tmp_path, "tiny_torch", "--epochs", "1")
    assert json.loads((run / "class_names.json").read_text("utf-8")) == ["Gato", "Perro"]
    assert "left out: León" in (run / "training.log").read_text("utf-8")
    for image in (dataset_copy / "Gato").iterdir():
        image.write_bytes(b"not an image either")
    assert run_main(train_main, _train_argv(tmp_path / "second", dataset_copy)) == 2
    assert "only 1 class with readable images" in _one_line_error(capsys)


def test_an_experiments_table_in_another_encoding_is_one_line(tmp_path, capsys):
    (tmp_path / "experiments.csv").write_bytes("run_name,status\nLe\xf3n,completed\n"
                                               .encode("cp1252"))
    assert run_main(evaluate_main, ["--experiments", str(tmp_path)]) == 2
    assert "UTF-8 CSV" in _one_line_error(capsys)


def test_prepare_killed_leaves_no_worker_and_no_leftover_after_a_rerun(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    import psutil

    from pokedex_trainer.cli.commands import prepare_main as main
    from pokedex_trainer.data.synthetic import write_dataset

    raw = write_dataset(tmp_path / "raw", classes=("Gato", "Perro"), per_class=40,
                        size=(400, 300), seed=4)
    out = tmp_path / "training"
    argv = ["--input_dir", str(raw), "--output_dir", str(out), "--size", "64"]
    process = subprocess.Popen([sys.executable, str(ROOT / "prepare_dataset.py"), *argv,
                                "--workers", "2"], cwd=tmp_path, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    parent = psutil.Process(process.pid)
    deadline = time.monotonic() + 120
    while len(parent.children()) < 2 and time.monotonic() < deadline:  # the pool is up
        time.sleep(0.05)
    workers = parent.children(recursive=True)
    assert workers, "the pool never started"
    process.send_signal(signal.SIGKILL)
    process.wait()
    _, alive = psutil.wait_procs(workers, timeout=15)
    assert not alive, f"orphaned workers: {[p.pid for p in alive]}"

    assert run_main(main, [*argv, "--workers", "0"]) == 0
    # a write of this tool killed half-way, and a file of the user's that looks alike
    # (mkstemp's name: 8 characters between the dots, mode 0600 until the write finished)
    (out / "Gato" / ".Gato_0001.jpg.k3x9_a2q.tmp").write_bytes(b"half")
    (out / "Gato" / ".Gato_0001.jpg.k3x9_a2q.tmp").chmod(0o600)
    (out / "Gato" / ".notes.x.tmp").write_bytes(b"the user's")
    assert run_main(main, [*argv, "--workers", "0"]) == 0
    assert not (out / "Gato" / ".Gato_0001.jpg.k3x9_a2q.tmp").exists()
    assert (out / "Gato" / ".notes.x.tmp").read_bytes() == b"the user's"


IDLE_POOL = """
import multiprocessing, os, sys, time
sys.path.insert(0, {root!r})
from concurrent.futures import ProcessPoolExecutor
from pokedex_trainer.machine.processes import exit_with_parent
if __name__ == "__main__":
    pool = ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn"),
                               initializer=exit_with_parent, initargs=(os.getpid(),))
    list(pool.map(abs, [1, 2, 3, 4]))  # workers up, then idle, waiting for work
    print("ready", flush=True)
    time.sleep(600)
"""


def test_idle_pool_workers_end_when_their_parent_is_killed(tmp_path):
    """The initializer prepare's pool uses: idle workers never notice a dead parent alone."""
    import signal
    import subprocess
    import sys

    import psutil

    script = tmp_path / "idle_pool.py"
    script.write_text(IDLE_POOL.format(root=str(ROOT)), encoding="utf-8")
    process = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "ready"
    workers = [p for p in psutil.Process(process.pid).children(recursive=True)
               if "resource_tracker" not in " ".join(p.cmdline())]
    assert len(workers) >= 2
    process.send_signal(signal.SIGKILL)
    process.wait()
    _, alive = psutil.wait_procs(workers, timeout=15)
    for orphan in alive:
        orphan.kill()
    assert not alive, "pool workers outlived their parent"


def test_prepare_keeps_a_report_file_of_the_users(tmp_path, caplog):
    from pokedex_trainer.cli.commands import prepare_main as main
    from pokedex_trainer.data.synthetic import write_dataset

    raw = write_dataset(tmp_path / "raw", classes=("Gato", "Perro"), per_class=3, size=(48, 48))
    out = tmp_path / "training"
    out.mkdir()
    (out / "dataset_report.json").write_text('{"mine": true}', encoding="utf-8")
    argv = ["--input_dir", str(raw), "--output_dir", str(out), "--size", "32", "--workers", "0"]
    assert run_main(main, argv) == 0
    assert (out / "dataset_report.json").read_text(encoding="utf-8") == '{"mine": true}'
    assert "left as it is" in caplog.text
    chart = (out / "dataset_report.png").read_bytes()
    (raw / "Gato" / "Gato_0000.jpg").unlink()
    assert run_main(main, argv) == 0  # its own chart it keeps up to date
    assert (out / "dataset_report.png").read_bytes() != chart


@pytest.mark.slow
def test_a_keras_run_killed_after_its_last_save_resumes_to_the_end(tmp_path, tiny_dataset):
    argv = [ROOT / "train_professional_models.py",
            *_train_argv(tmp_path, tiny_dataset, "--epochs", "2", "--run_name", "run")]
    argv[argv.index("tiny_torch")] = "tiny_keras"
    killed = run_with_signal_at(tmp_path, argv, "name[1].startswith('tiny_keras_final_')",
                                after=True)
    assert killed.returncode == -9, killed.stderr[-2000:]
    import subprocess
    import sys

    resumed = subprocess.run([sys.executable, str(ROOT / "train_professional_models.py"),
                              "--resume", str(tmp_path / "runs" / "run")], cwd=tmp_path,
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    summary = json.loads((tmp_path / "runs" / "run" / "summary.json").read_text("utf-8"))
    assert summary["status"] == "completed" and summary["test_accuracy"]


@pytest.mark.parametrize("content", ["foo,bar\n1,2\n", "run_name,status\nLe\xf3n,x\n"])
def test_an_experiments_table_that_is_not_ours_is_never_rewritten(tmp_path, tiny_dataset,
                                                                  capsys, content):
    (tmp_path / "runs").mkdir()
    table = tmp_path / "runs" / "experiments.csv"
    table.write_bytes(content.encode("cp1252"))
    before = table.read_bytes()
    assert run_main(train_main, _train_argv(tmp_path, tiny_dataset)) == 2
    assert "never rewrites a file it did not write" in _one_line_error(capsys)
    assert table.read_bytes() == before
    assert run_main(evaluate_main, ["--experiments", str(tmp_path / "runs")]) == 2


def test_loader_workers_end_when_the_trainer_is_killed(tmp_path, tiny_dataset):
    import signal
    import subprocess
    import sys
    import time

    import psutil

    argv = [sys.executable, str(ROOT / "train_professional_models.py"),
            *_train_argv(tmp_path, tiny_dataset, "--epochs", "50")]
    argv[argv.index("--workers") + 1] = "1"
    process = subprocess.Popen(argv, cwd=tmp_path, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    parent = psutil.Process(process.pid)
    deadline = time.monotonic() + 180
    workers = []
    while not workers and time.monotonic() < deadline and process.poll() is None:
        workers = [p for p in parent.children(recursive=True)
                   if "resource_tracker" not in " ".join(p.cmdline())]
        time.sleep(0.1)
    assert workers, "no loader worker started"
    process.send_signal(signal.SIGKILL)  # the trainer alone, not its process group
    process.wait()
    _, alive = psutil.wait_procs(workers, timeout=20)
    for orphan in alive:
        orphan.kill()
    assert not alive, "loader workers outlived the trainer"


def test_prepare_keeps_an_output_the_user_edited(tmp_path, caplog):
    from pokedex_trainer.cli.commands import prepare_main as main
    from pokedex_trainer.data.synthetic import write_dataset

    raw = write_dataset(tmp_path / "raw", classes=("Gato", "Perro"), per_class=3, size=(48, 48))
    out = tmp_path / "training"
    argv = ["--input_dir", str(raw), "--output_dir", str(out), "--size", "32", "--workers", "0"]
    assert run_main(main, argv) == 0
    (out / "Gato" / "Gato_0000.jpg").write_bytes(b"the user's own picture now")
    (raw / "Gato" / "Gato_0000.jpg").unlink()
    (raw / "Gato" / "Gato_0001.jpg").unlink()
    assert run_main(main, argv) == 0
    assert (out / "Gato" / "Gato_0000.jpg").read_bytes() == b"the user's own picture now"
    assert not (out / "Gato" / "Gato_0001.jpg").exists()  # unchanged since written: removed
    assert "kept Gato/Gato_0000.jpg" in caplog.text
