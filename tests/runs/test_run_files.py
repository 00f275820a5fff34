"""Run directories, atomic writes, experiments.csv under concurrent appends, training.log."""

import multiprocessing
import sys
from pathlib import Path

from pokedex_trainer.runs.store import create_run_dir
from pokedex_trainer.runs.run_log import capture_to_log
from pokedex_trainer.runs.history import HistoryWriter
from pokedex_trainer.runs.experiments_table import (
    EXPERIMENT_COLUMNS,
    append_experiment,
    read_experiments,
)
from pokedex_trainer.user_io.atomic import atomic_write_bytes


def _append_many(path, worker):
    for i in range(25):
        append_experiment(path, {"run_name": f"w{worker}_{i}", "status": "completed"})


def test_concurrent_appends_keep_every_row_intact(tmp_path):
    path = tmp_path / "experiments.csv"
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=_append_many, args=(path, w)) for w in range(3)]
    for p in processes:
        p.start()
    for p in processes:
        p.join()
    rows = read_experiments(path)
    assert len(rows) == 75
    assert list(rows[0]) == EXPERIMENT_COLUMNS
    assert {r["run_name"] for r in rows} == {f"w{w}_{i}" for w in range(3) for i in range(25)}
    assert path.read_text().count("run_name") == 1


def _create_after(barrier, root, queue):
    barrier.wait()  # every process asks for the same name as the others are asking
    queue.put(str(create_run_dir(root, "mobilenet_20250101_000000")))


def test_run_dirs_never_collide(tmp_path):
    """Two runs started in the same second by two processes get two folders: the name is
    taken by creating the folder (mkdir), never by checking first."""
    first = create_run_dir(tmp_path, "mobilenet_20250101_000000")
    second = create_run_dir(tmp_path, "mobilenet_20250101_000000")
    assert first != second and first.is_dir() and second.is_dir()
    context = multiprocessing.get_context("spawn")
    barrier, queue = context.Barrier(4), context.Queue()
    processes = [context.Process(target=_create_after, args=(barrier, tmp_path / "many", queue))
                 for _ in range(4)]
    for p in processes:
        p.start()
    made = [queue.get(timeout=120) for _ in processes]
    for p in processes:
        p.join()
    assert len(set(made)) == 4 and all(Path(m).is_dir() for m in made)


def test_atomic_write_leaves_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    import pokedex_trainer.user_io.atomic as runs

    target = tmp_path / "model.bin"
    target.write_bytes(b"good")

    def crash(fd):
        raise OSError("disk full")

    monkeypatch.setattr(runs.os, "fsync", crash)
    try:
        atomic_write_bytes(target, b"half-written new model")
    except OSError:
        pass
    assert target.read_bytes() == b"good"
    assert [p.name for p in tmp_path.iterdir()] == ["model.bin"]


def test_history_keeps_one_row_per_epoch_with_phase(tmp_path):
    history = HistoryWriter(tmp_path / "history.csv")
    history.write(1, "head", {"loss": 1.0, "val_accuracy": 0.5})
    history.write(2, "fine_tune", {"loss": 0.5, "val_accuracy": 0.7, "learning_rate": 1e-4})
    rows = read_experiments(tmp_path / "history.csv")
    assert [r["phase"] for r in rows] == ["head", "fine_tune"]
    assert rows[1]["learning_rate"] == "0.0001" and rows[0]["learning_rate"] == ""


def test_everything_printed_also_goes_to_the_log(tmp_path):
    import logging

    log = tmp_path / "training.log"
    with capture_to_log(log):
        print("epoch 1/2 \r3/10 [==>...]\r10/10 [=====] done")
        sys.stderr.write("a warning line\n")
        logging.getLogger("pokedex_trainer.test").warning("logged record")
    text = log.read_text(encoding="utf-8")
    assert "10/10 [=====] done" in text and "3/10" not in text
    assert "a warning line" in text and "logged record" in text


def test_training_log_holds_each_log_line_once(tiny_dataset, tmp_path):
    """The console handler writes behind the tee of stderr: the log file gets each record from
    the run's own handler, not a second copy through the console."""
    from conftest import train_tiny_run

    run = train_tiny_run(tiny_dataset, tmp_path, "tiny_torch", "--epochs", "1",
                         "--fine_tune_epochs", "0")
    log = (run / "training.log").read_text("utf-8")
    assert log.count("test split: accuracy") == 1, log[-3000:]
