"""Issue 26, items 7 and 10: worker processes the machine refuses, that die, or that never answer.

Every case ends by an event (a process exits, a call returns or raises); subprocess timeouts
are only a safety net against the hang these tests exist to catch.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import ROOT, train_tiny_run
from pokedex_trainer.machine import worker_limits
from pokedex_trainer.machine.worker_limits import ProcessBudget, allowed_workers, usable_workers

SAFETY_NET = 120  # seconds; the fixed code ends each case in a few


@pytest.fixture
def fresh_limits(monkeypatch):
    """Each test starts with no warning given and no refusal remembered (both are per process)."""
    monkeypatch.setattr(worker_limits, "_warned", set())
    monkeypatch.setattr(worker_limits, "_refused", None)


PIPED_SCRIPT = """\
import sys
sys.path.insert(0, {root!r})
from pokedex_trainer.api import Trainer
run = Trainer(model_type="tiny_torch", data_path={data!r}, weights="none", image_size=(32, 32),
              batch_size=8, epochs=1, fine_tune_epochs=0, workers=1, histogram_freq=0,
              output_dir="runs", log_dir="tb").train()
print("TRAINED", run)
"""


def test_a_script_piped_to_python_trains_with_a_warning_instead_of_waiting(tiny_dataset,
                                                                           tmp_path):
    """`python - < script.py`: workers cannot re-import <stdin>; this used to wait forever."""
    script = PIPED_SCRIPT.format(root=str(ROOT), data=str(tiny_dataset))
    result = subprocess.run([sys.executable, "-"], input=script, capture_output=True,
                            text=True, cwd=tmp_path, timeout=SAFETY_NET)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "TRAINED" in result.stdout
    warnings = [line for line in result.stderr.splitlines() if "standard input" in line]
    assert len(warnings) == 1 and "python file.py" in warnings[0]
    assert "FileNotFoundError" not in result.stderr  # no worker was even started
    assert list((tmp_path / "runs").glob("*/tiny_torch_best.pth"))


@pytest.mark.slow
def test_workers_that_die_at_start_for_any_reason_leave_the_run_in_the_main_process(
        tiny_dataset, tmp_path):
    """The same piped script with the stdin check switched off: the workers really start and
    die importing <stdin>; their exits are seen at once and the run goes on without them."""
    script = ("import pokedex_trainer.machine.worker_limits as limits\n"
              "limits.unimportable_main = lambda: None\n")
    script = PIPED_SCRIPT.replace("from pokedex_trainer.api", script + "from pokedex_trainer.api")
    result = subprocess.run([sys.executable, "-"], capture_output=True, text=True, cwd=tmp_path,
                            input=script.format(root=str(ROOT), data=str(tiny_dataset)),
                            timeout=SAFETY_NET)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "TRAINED" in result.stdout
    assert result.stderr.count("FileNotFoundError") == 1  # one try, not one per loader
    assert ("data-loading worker processes could not start: one exited with code 1 (its error "
            "is printed above); loading images in the main process instead") in result.stderr


KILLED_WORKER = """\
import os, signal, sys
sys.path.insert(0, {root!r})
import psutil
from pokedex_trainer.data.scan import scan_dataset
from pokedex_trainer.data.feeding import BatchLoader, BatchSource

if __name__ == "__main__":
    index = scan_dataset({data!r})
    source = BatchSource(index.root, index.samples, (32, 32), training=True, seed=3)
    loader = BatchLoader(source, 2, shuffle=True, workers=2, seed=3)
    batches = loader.iter_epoch(0)
    next(batches)  # the workers are up and busy
    workers = [p for p in psutil.Process().children()
               if "resource_tracker" not in " ".join(p.cmdline())]
    print("WORKERS", len(workers), flush=True)
    os.kill(workers[0].pid, signal.{signal})
    try:
        for _ in batches:
            pass
    except Exception as exc:
        print("STOPPED", type(exc).__name__, exc, flush=True)
    else:
        print("FINISHED")
    loader.close()
"""


@pytest.mark.slow
@pytest.mark.parametrize("sent, fix", [("SIGKILL", "--workers"),  # the out-of-memory killer
                                       ("SIGHUP", "something outside the trainer stopped it")])
def test_a_worker_killed_mid_epoch_stops_the_loader_with_one_line(tiny_dataset, tmp_path, sent,
                                                                  fix):
    script = tmp_path / "killed_worker.py"
    script.write_text(KILLED_WORKER.format(root=str(ROOT), data=str(tiny_dataset),
                                           signal=sent), encoding="utf-8")
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                            cwd=tmp_path, timeout=SAFETY_NET)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "WORKERS 2" in result.stdout
    stopped = [line for line in result.stdout.splitlines() if line.startswith("STOPPED")]
    assert len(stopped) == 1, result.stdout
    assert "WorkersFailed" in stopped[0] and sent in stopped[0]
    assert fix in stopped[0]  # the fix is in the line
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_a_worker_ignores_sigterm_which_the_main_process_answers(tiny_dataset, tmp_path):
    """timeout, kill -- -PGID and scancel signal every process of the group: a worker leaves
    the stop to the main process (issue 32, item 9), so SIGTERM to it alone changes nothing."""
    script = tmp_path / "terminated_worker.py"
    script.write_text(KILLED_WORKER.format(root=str(ROOT), data=str(tiny_dataset),
                                           signal="SIGTERM"), encoding="utf-8")
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                            cwd=tmp_path, timeout=SAFETY_NET)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "WORKERS 2" in result.stdout and "FINISHED" in result.stdout, result.stdout


@pytest.mark.slow
def test_a_worker_that_never_answers_ends_the_wait(monkeypatch):
    """Alive but silent (a stalled network drive): the wait ends after the configured time."""
    import time

    from pokedex_trainer.machine.worker_pool import (
        TIMEOUT_VARIABLE,
        WorkerPool,
        WorkersFailed,
        worker_timeout,
    )

    monkeypatch.setenv(TIMEOUT_VARIABLE, "0.5")
    pool = WorkerPool(1, time.sleep, what="test", fix="use --workers 0", timeout=SAFETY_NET)
    assert pool.size == 1  # started and ready; from now on the configured wait applies
    pool.timeout = worker_timeout()  # 0.5 s, read from the variable
    try:
        stuck = pool.submit(3600)  # a worker busy "forever"
        with pytest.raises(WorkersFailed, match=f"no answer .* for 0.5 s.*{TIMEOUT_VARIABLE}"):
            pool.result(stuck)
    finally:
        pool.close()
    assert pool.size == 0


def test_a_worker_timeout_that_is_not_a_number_is_one_line(monkeypatch):
    from pokedex_trainer.errors import UserError
    from pokedex_trainer.machine.worker_pool import TIMEOUT_VARIABLE, worker_timeout

    for bad in ("soon", "0", "-3", "nan", "inf"):
        monkeypatch.setenv(TIMEOUT_VARIABLE, bad)
        with pytest.raises(UserError, match=TIMEOUT_VARIABLE):
            worker_timeout()


@pytest.mark.parametrize("budget,expected,named", [
    (ProcessBudget(cpus=2), 2, "2 CPU cores"),
    (ProcessBudget(cpus=64, nproc_limit=100, nproc_used=40), 7, "ulimit -u 100, 40 in use"),
    (ProcessBudget(cpus=64, pids_limit=200, pids_used=40), 32, "pids.max (200, 40 in use)"),
    (ProcessBudget(cpus=64, nproc_limit=60, nproc_used=50), 0, "ulimit -u 60"),
])
def test_workers_are_clamped_to_the_tightest_limit(budget, expected, named, fresh_limits,
                                                   caplog):
    count, limit = allowed_workers(300, budget)
    assert count == expected and named in limit
    assert usable_workers(300, budget=budget) == expected
    warning = [r.getMessage() for r in caplog.records if "--workers 300" in r.getMessage()]
    assert len(warning) == 1 and f"allows {expected}" in warning[0]
    assert ("main process" in warning[0]) == (expected == 0)
    caplog.clear()
    assert usable_workers(2, budget=ProcessBudget(cpus=4)) == 2  # within every limit: silent
    assert not caplog.records


@pytest.mark.slow
def test_the_real_limits_are_read_and_applied(tmp_path):
    """A child process lowers its own RLIMIT_NPROC. The kernel does not enforce it for root,
    so as root the child first becomes an ordinary user (after its imports)."""
    code = f"""
import os, resource, sys
sys.path.insert(0, {str(ROOT)!r})
from pokedex_trainer.machine import worker_limits as w
import psutil
if os.getuid() == 0:
    os.setgid(65534); os.setuid(65534)
soft, hard = resource.getrlimit(resource.RLIMIT_NPROC)
used = w._user_tasks()
limit = used + w.RESERVED_TASKS + w.TASKS_PER_WORKER  # room for exactly one worker
resource.setrlimit(resource.RLIMIT_NPROC, (limit, hard))
budget = w.read_budget()
print("LIMIT", budget.nproc_limit == limit, budget.nproc_used >= 1)
print("USABLE", w.usable_workers(300))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=tmp_path, timeout=SAFETY_NET)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "LIMIT True True" in result.stdout
    assert "USABLE 1" in result.stdout
    assert "--workers 300: this machine allows 1 (the process limit (ulimit -u" in result.stderr


@pytest.fixture
def refused_processes(monkeypatch, fresh_limits):
    """Every process start fails as it does at the process limit (fork: EAGAIN)."""
    import multiprocessing.process

    def refuse(self):
        raise BlockingIOError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(multiprocessing.process.BaseProcess, "start", refuse)


def test_training_goes_on_in_the_main_process_when_no_worker_may_start(
        tiny_dataset, tmp_path, refused_processes, caplog):
    run = train_tiny_run(tiny_dataset, tmp_path, "tiny_torch", "--workers", "2",
                         "--epochs", "1")
    assert (run / "tiny_torch_best.pth").is_file()
    warnings = [r.getMessage() for r in caplog.records
                if "could not start" in r.getMessage()]
    assert len(warnings) == 1  # once, not per loader
    assert "Resource temporarily unavailable" in warnings[0] and "main process" in warnings[0]


def test_prepare_goes_on_in_the_main_process_when_no_worker_may_start(tmp_path,
                                                                      refused_processes,
                                                                      caplog):
    from pokedex_trainer.cli.commands import run_main
    from pokedex_trainer.cli.commands import prepare_main as main
    from pokedex_trainer.data.synthetic import write_dataset

    raw = write_dataset(tmp_path / "raw", classes=("Gato", "Perro"), per_class=6, size=(48, 48))
    argv = ["--input_dir", str(raw), "--output_dir", str(tmp_path / "out"), "--size", "32",
            "--workers", "2"]
    assert run_main(main, argv) == 0
    assert len(list((tmp_path / "out").rglob("*.jpg"))) == 12
    assert any("could not start" in r.getMessage() and "main process" in r.getMessage()
               for r in caplog.records)
