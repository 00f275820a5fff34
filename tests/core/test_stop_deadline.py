"""A stuck run can always be stopped: Ctrl-C/SIGTERM end it in time, recorded as interrupted.

The trainer runs in a child process whose backend blocks inside an epoch the way a framework
stuck in C++ does (an XLA compile, a loader that delivers nothing): the Python signal handler
runs, but the wait goes on, so only the deadline can end the run.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT, tiny_run_argv

# The child: the real trainer, with fit_epoch (or the validation pass) of one epoch blocking.
BLOCKING_TRAINER = """
import dataclasses, os, signal, sys, threading
from pathlib import Path
sys.path.insert(0, {root!r})
import pokedex_trainer.runs.lifecycle as training
from pokedex_trainer.core.interrupt import GracefulInterrupt
from pokedex_trainer.cli.commands import run_main, train_main

STARTED, SIGNALLED, BLOCK_EPOCH, WHERE = {started!r}, {signalled!r}, {epoch!r}, {where!r}
graceful_handle = GracefulInterrupt._handle
def handle(self, signum, frame):  # the Keras route's Python handler: note that it ran
    Path(SIGNALLED).touch()
    graceful_handle(self, signum, frame)
GracefulInterrupt._handle = handle

def stuck():
    Path(STARTED).touch()
    while True:  # like C++ code that does not return to Python: a signal does not end it
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            Path(SIGNALLED).touch()

real_load_backend = training.load_training_backend
def load_training_backend(framework):
    entry = real_load_backend(framework)
    class Backend(entry.make):
        epoch = -1
        def fit_epoch(self, epoch, phase):
            self.epoch = epoch
            if WHERE == "fit" and epoch == BLOCK_EPOCH:
                stuck()
            return super().fit_epoch(epoch, phase)
        def evaluate(self, split):
            if WHERE == "val" and split == "val" and self.epoch == BLOCK_EPOCH:
                os.kill(os.getpid(), signal.SIGTERM)  # arrives as the validation pass starts
            return super().evaluate(split)
    return dataclasses.replace(entry, make=Backend)
training.load_training_backend = load_training_backend
sys.exit(run_main(train_main, {argv!r}))
"""


def _start(tmp_path, data, model_type, grace, where="fit", epoch=1):
    argv = tiny_run_argv(data, tmp_path, model_type, epochs=3, run_name="run")
    code = BLOCKING_TRAINER.format(root=str(ROOT), started=str(tmp_path / "started"),
                                   signalled=str(tmp_path / "signalled"), epoch=epoch,
                                   where=where, argv=argv)
    env = dict(os.environ, POKEDEX_STOP_GRACE=str(grace), POKEDEX_TEST_MODELS="1")
    return subprocess.Popen([sys.executable, "-c", code], cwd=tmp_path, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _wait_for(process, path, what):
    """Wait until ``path`` exists (the child reached a point); fail if the child ended."""
    for _ in range(3000):  # a safety net of 10 minutes: the wait is for an event
        if path.exists():
            return
        if process.poll() is not None:
            out, err = process.communicate()
            pytest.fail(f"the trainer ended before {what}: {process.returncode}\n{err[-3000:]}")
        time.sleep(0.2)
    process.kill()
    pytest.fail(f"the trainer never reached {what}")


def _outcome(process):
    try:
        out, err = process.communicate(timeout=120)  # a safety net, not a measure
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
        pytest.fail(f"the stopped run is still running after 120 s\n{err[-3000:]}")
    return process.returncode, err


def _assert_recorded_interrupted(tmp_path, returncode, stderr, epochs_saved=1):
    run_dir = tmp_path / "runs" / "run"
    assert returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    assert f"--resume {run_dir}" in stderr
    summary = json.loads((run_dir / "summary.json").read_text("utf-8"))
    assert summary["status"] == "interrupted"
    with open(tmp_path / "runs" / "experiments.csv", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["status"] for row in rows] == ["interrupted"]
    with open(run_dir / "history.csv", encoding="utf-8") as handle:  # what it saved
        assert [int(row["epoch"]) for row in csv.DictReader(handle)] == \
            list(range(1, epochs_saved + 1))
    state = json.loads((run_dir / "resume" / "state.json").read_text("utf-8"))
    assert state["next_epoch"] == epochs_saved


def test_sigterm_ends_a_run_stuck_inside_the_framework(tmp_path, tiny_dataset):
    process = _start(tmp_path, tiny_dataset, "tiny_keras", grace=2)
    _wait_for(process, tmp_path / "started", "the stuck epoch")
    process.send_signal(signal.SIGTERM)
    returncode, stderr = _outcome(process)
    _assert_recorded_interrupted(tmp_path, returncode, stderr)
    # where it was stuck, for a bug report: the blocking frame of the main thread
    log = (tmp_path / "runs" / "run" / "training.log").read_text("utf-8")
    assert "the main thread was here:" in log and "in stuck" in log, log[-3000:]
    assert "the main thread was here:" not in stderr  # the user sees one line pointing there
    assert "where it was stuck is in the run's training.log" in stderr


@pytest.mark.slow
def test_a_second_signal_ends_a_stuck_run_at_once(tmp_path, tiny_dataset):
    # a grace longer than the safety net: only the second signal can end the run in time
    process = _start(tmp_path, tiny_dataset, "tiny_keras", grace=600)
    _wait_for(process, tmp_path / "started", "the stuck epoch")
    process.send_signal(signal.SIGTERM)
    _wait_for(process, tmp_path / "signalled", "the first signal")
    process.send_signal(signal.SIGTERM)
    _assert_recorded_interrupted(tmp_path, *_outcome(process))


@pytest.mark.slow
def test_a_run_stopped_in_its_first_epoch_does_not_offer_a_resume(tmp_path, tiny_dataset):
    process = _start(tmp_path, tiny_dataset, "tiny_torch", grace=2, epoch=0)
    _wait_for(process, tmp_path / "started", "the stuck epoch")
    process.send_signal(signal.SIGTERM)
    returncode, stderr = _outcome(process)
    assert returncode == 130, stderr[-3000:]
    assert "interrupted before the first epoch ended: there is nothing to resume" in stderr
    assert "--resume" not in stderr, stderr[-3000:]
    summary = json.loads((tmp_path / "runs" / "run" / "summary.json").read_text("utf-8"))
    assert summary["status"] == "interrupted"


@pytest.mark.slow
def test_sigterm_ends_a_stuck_pytorch_run(tmp_path, tiny_dataset):
    process = _start(tmp_path, tiny_dataset, "tiny_torch", grace=2)
    _wait_for(process, tmp_path / "started", "the stuck epoch")
    process.send_signal(signal.SIGTERM)
    _assert_recorded_interrupted(tmp_path, *_outcome(process))


@pytest.mark.slow
def test_an_interrupted_validation_is_abandoned_not_recorded(tmp_path, tiny_dataset):
    process = _start(tmp_path, tiny_dataset, "tiny_keras", grace=600, where="val")
    returncode, stderr = _outcome(process)
    _assert_recorded_interrupted(tmp_path, returncode, stderr)  # no row for epoch 2
    assert "ending the process now" not in stderr  # the graceful stop, not the deadline


def test_a_bad_stop_grace_is_one_line(tmp_path, tiny_dataset):
    env = dict(os.environ, POKEDEX_STOP_GRACE="soon")
    result = subprocess.run(
        [sys.executable, str(ROOT / "train_professional_models.py"), "--data_path",
         str(tiny_dataset), "--model_type", "tiny_torch", "--weights", "none",
         "--output_dir", str(tmp_path / "runs"), "--run_name", "run"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1] == \
        "error: POKEDEX_STOP_GRACE must be a number of seconds (0 or more), not 'soon'"
    assert not (tmp_path / "runs" / "run").exists()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork: POSIX only")
def test_forked_loader_workers_do_not_report_their_signals():
    """A terminal's Ctrl-C reaches the loader workers too: theirs must not count as a second
    signal of the trainer (that would end the run at once instead of gracefully)."""
    from pokedex_trainer.core.interrupt import StopDeadline

    with StopDeadline(lambda: None):
        pid = os.fork()
        if pid == 0:  # the worker: its signals no longer reach the trainer's watcher
            os._exit(0 if signal.set_wakeup_fd(-1) == -1 else 1)
        assert os.waitpid(pid, 0)[1] == 0
    assert signal.set_wakeup_fd(-1) == -1  # restored after the run


def test_signals_read_together_are_one_stop(monkeypatch):
    """`timeout` sends SIGTERM to the trainer and to its group at once: the two arrive
    together, and that is one stop (the graceful one), not a second signal."""
    from pokedex_trainer.core import interrupt

    monkeypatch.setenv(interrupt.GRACE_ENV, "600")
    expired = []
    monkeypatch.setattr(interrupt.StopDeadline, "_expire",
                        lambda self, why, stack=False: expired.append(why))
    watcher = interrupt.StopDeadline(lambda: None)
    with watcher:
        term = bytes([signal.SIGTERM])
        watcher._writer.send(term + term)  # what the wakeup fd holds after both
        for _ in range(6000):  # the watcher thread has read them (polled, up to 60 s)
            if watcher.signalled:
                break
            time.sleep(0.01)
        assert watcher.signalled
        thread = watcher._thread
        watcher.signalled = False  # end the block as the API does: the watcher stops...
    thread.join(timeout=60)  # ...after the chunk it was reading
    assert not thread.is_alive() and expired == []


def _history_rows(run_dir) -> int:
    try:
        with open(run_dir / "history.csv", encoding="utf-8") as handle:
            return len(list(csv.DictReader(handle)))
    except (OSError, csv.Error):
        return 0


@pytest.mark.slow
@pytest.mark.parametrize("model_type", ["mobilenet", "tiny_torch"])
def test_a_stop_sent_to_the_whole_process_group_is_a_clean_stop(model_type, tmp_path,
                                                               tiny_dataset):
    """Issue 32, item 9: `timeout` and `kill -TERM -- -PGID` signal the loader workers too;
    the run still stops as after Ctrl-C (exit 130, recorded as interrupted, --resume)."""
    argv = tiny_run_argv(tiny_dataset, tmp_path, model_type, "--workers", "2", epochs=500,
                         run_name="run")
    env = dict(os.environ, POKEDEX_TEST_MODELS="1")
    process = subprocess.Popen([sys.executable, str(ROOT / "train_professional_models.py"),
                                *argv], cwd=tmp_path, env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               start_new_session=True)
    run_dir = tmp_path / "runs" / "run"
    for _ in range(3000):  # wait for the event (a finished epoch); 10 minutes at most
        if _history_rows(run_dir) >= 1 or process.poll() is not None:
            break
        time.sleep(0.2)
    assert process.poll() is None, process.communicate()[1][-3000:]
    os.killpg(process.pid, signal.SIGTERM)  # as `timeout` and `kill -TERM -- -PGID` do
    returncode, stderr = _outcome(process)
    assert returncode == 130, stderr[-3000:]
    assert "training failed" not in stderr and "Traceback" not in stderr, stderr[-3000:]
    assert f"--resume {run_dir}" in stderr
    summary = json.loads((run_dir / "summary.json").read_text("utf-8"))
    assert summary["status"] == "interrupted"
