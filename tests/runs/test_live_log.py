"""training.log in the folder a run starts from: what `tail -f training.log` follows."""

import logging
import subprocess
import sys
import time

import pytest

from conftest import ROOT
from pokedex_trainer.runs import live_log
from pokedex_trainer.runs.live_log import HEADER, open_live_log
from pokedex_trainer.runs.run_log import capture_to_log


@pytest.fixture
def here(tmp_path, monkeypatch):
    """The live log at the default place, training.log in the current folder."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(live_log.ENVIRONMENT, raising=False)
    live_log.configure(None)
    return tmp_path / "training.log"


def test_runs_append_prefixed_lines_after_the_tools_header(here):
    first, note = open_live_log("run_a")
    assert note is None and here.read_text(encoding="utf-8") == HEADER
    first.write("epoch 1 (head): loss 1.0\n\nLeón: done")
    first.close()
    second, _ = open_live_log("run_b")
    second.write("epoch 1 (head): loss 2.0")
    second.close()
    lines = here.read_text(encoding="utf-8").splitlines()
    assert lines[1:] == ["[run_a] epoch 1 (head): loss 1.0", "[run_a] León: done",
                         "[run_b] epoch 1 (head): loss 2.0"]


def test_a_training_log_the_tool_did_not_write_is_left_alone(here):
    here.write_text("my own notes\n", encoding="utf-8")
    live, note = open_live_log("run_a")
    assert live is None and "was not written by this tool: left as it is" in note
    assert here.read_text(encoding="utf-8") == "my own notes\n"


def test_special_files_and_an_emptied_log(here):
    """A FIFO or a folder named training.log is left alone at once (opening a FIFO would
    block); an emptied log (Clear-Content) is taken again; the file is readable by others."""
    import os
    import stat

    os.mkfifo(here)
    live, note = open_live_log("run_a")
    assert live is None and "not a regular file" in note
    here.unlink()
    here.mkdir()
    assert "not a regular file" in open_live_log("run_a")[1]
    here.rmdir()
    live, _ = open_live_log("run_a")
    live.close()
    assert stat.S_IMODE(here.stat().st_mode) == 0o666 & ~_umask()
    here.write_bytes(b"")
    live, note = open_live_log("run_b")
    assert note is None and here.read_text(encoding="utf-8") == HEADER
    live.close()


def _umask() -> int:
    import os

    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_none_turns_it_off(here):
    live_log.configure("none")
    assert open_live_log("run_a") == (None, None) and not here.exists()
    live_log.configure(None)


def test_printed_lines_and_log_records_reach_both_logs(here, tmp_path):
    live, _ = open_live_log("run_a")
    run_log = tmp_path / "run.log"
    with capture_to_log(run_log, live):
        print("epoch 1/2\rdone 3/3")  # a redrawn progress line: its last state
        logging.getLogger("pokedex_trainer.test").warning("a warning")
    live.close()
    shared = here.read_text(encoding="utf-8").splitlines()[1:]
    assert shared[0] == "[run_a] done 3/3" and all(s.startswith("[run_a] ") for s in shared)
    assert any(line.endswith("WARNING pokedex_trainer.test: a warning") for line in shared)
    own = run_log.read_text(encoding="utf-8").splitlines()
    assert own[0] == "done 3/3"  # no prefix in the run's own log
    assert any(line.endswith("WARNING pokedex_trainer.test: a warning") for line in own)


WRITER = """
import sys
sys.path.insert(0, {root!r})
from pokedex_trainer.runs.live_log import open_live_log
live, _ = open_live_log(sys.argv[1])
for i in range(300):
    live.write(f"line {{i}} " + "x" * 200)
"""


def test_runs_side_by_side_interleave_whole_lines(here, tmp_path):
    code = WRITER.format(root=str(ROOT))
    writers = [subprocess.Popen([sys.executable, "-c", code, name], cwd=tmp_path,
                                env={**__import__("os").environ})
               for name in ("one", "two", "three")]
    assert all(w.wait(timeout=60) == 0 for w in writers)
    lines = here.read_text(encoding="utf-8").splitlines()
    assert lines[0] == HEADER.strip() and len(lines) == 1 + 900
    for name in ("one", "two", "three"):
        mine = [line for line in lines[1:] if line.startswith(f"[{name}] ")]
        assert mine == [f"[{name}] line {i} " + "x" * 200 for i in range(300)]


@pytest.mark.slow
def test_the_live_log_follows_a_run_in_progress(tmp_path, tiny_dataset):
    """What `tail -f training.log` sees: the epochs of a run while it is still running."""
    import os

    env = {k: v for k, v in os.environ.items() if k != live_log.ENVIRONMENT}
    argv = [sys.executable, str(ROOT / "train_professional_models.py"), "--data_path",
            str(tiny_dataset), "--model_type", "tiny_torch", "--weights", "none",
            "--image_size", "32", "32", "--epochs", "40", "--patience", "100",
            "--fine_tune_epochs", "0", "--workers", "0", "--histogram_freq", "0",
            "--run_name", "followed"]
    process = subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    log = tmp_path / "training.log"
    seen_while_running = []
    try:
        deadline = time.time() + 300
        while process.poll() is None and time.time() < deadline:
            text = log.read_text(encoding="utf-8") if log.exists() else ""
            if "[followed] " in text and "epoch 2 (head)" in text:
                seen_while_running = text.splitlines()
                break
            time.sleep(0.05)
    finally:
        assert process.wait(timeout=300) == 0
    assert seen_while_running, "no epoch line appeared while the run was in progress"
    assert seen_while_running[0] == HEADER.strip()
    assert all(line.startswith("[followed] ") for line in seen_while_running[1:])
    final = log.read_text(encoding="utf-8").splitlines()
    assert final[:len(seen_while_running)] == seen_while_running  # appended, never rewritten
    assert final[-1] == "[followed] run ended: completed"
