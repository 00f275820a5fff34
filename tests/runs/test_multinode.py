"""Training across machines: two torchrun "nodes" on this machine (two launchers, one process
each, gloo, a rendezvous on localhost), and what a node that cannot see the shared files gets.

A node that does not see the chief's files is made with a private mount namespace
(``unshare --user --map-root-user --mount``, which needs no root): an empty tmpfs over the
output folder, or another copy over the data folder, in that node alone, as a second machine
without the shared storage would see it.
"""

from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, tiny_run_argv
from pokedex_trainer.runs.distributed import group_problem


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _train_args(data: Path, out: Path, epochs: int = 2) -> list[str]:
    return tiny_run_argv(data, out, "tiny_torch", "--val_split", "0.25", "--test_split", "0.25",
                         epochs=epochs, batch_size=4)


def _launcher(node_rank: int, rendezvous: list[str]) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2",
            "--nproc_per_node", "1", "--node_rank", str(node_rank), *rendezvous,
            str(ROOT / "train_professional_models.py")]


def _c10d(port: int) -> list[str]:
    return ["--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{port}",
            "--rdzv_id", "pokedex_test"]


def _static(port: int) -> list[str]:
    return ["--master_addr", "127.0.0.1", "--master_port", str(port)]


def _start_nodes(cwd: Path, args: list[str], rendezvous, hide: str | None = None):
    """Two launchers (node 0 and node 1) in their own process groups. ``hide``: a shell
    command run in node 1's private mount namespace before its launcher starts."""
    port = _free_port()
    nodes = []
    for node_rank in (0, 1):
        command = _launcher(node_rank, rendezvous(port)) + args
        if hide and node_rank == 1:
            script = f"{hide} && exec \"$@\""
            command = ["unshare", "--user", "--map-root-user", "--mount", "--propagation",
                       "private", "sh", "-c", script, "node1", *command]
        nodes.append(subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True,
                                      start_new_session=True))
    return nodes


def _finish(nodes, timeout: float = 600) -> list[tuple[int, str]]:
    results = []
    for node in nodes:
        try:
            output, _ = node.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(node.pid, signal.SIGKILL)
            output, _ = node.communicate()
        results.append((node.returncode, output))
    return results


def _rows(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("error: ")]


def test_group_problem_names_the_node_and_what_it_cannot_see():
    """The line every rank stops with: the first rank that lacks what the chief has."""
    chief = {"host": "gpu1", "rank": 0, "root": "/data", "missing": (0, None),
             "fingerprint": "abc", "missing_resume": None}
    same = dict(chief, host="gpu2", rank=1)
    assert group_problem([chief, same]) is None
    no_data = dict(same, missing=(36, "Gato/Gato_0000.jpg"))
    message = group_problem([chief, no_data])
    assert message.startswith("rank 1 on gpu2 cannot read 36 images of the split under '/data'")
    assert "same path" in message
    no_checkpoint = dict(same, missing_resume="/runs/r/resume/epoch_002")
    message = group_problem([chief, no_checkpoint])
    assert message.startswith("rank 1 on gpu2 cannot see the checkpoint "
                              "'/runs/r/resume/epoch_002'")
    assert "every machine mounts at the same path" in message
    other_copy = dict(same, fingerprint="def")
    assert "other files under '/data' than rank 0 on gpu1" in group_problem([chief, other_copy])


@pytest.mark.slow
def test_two_nodes_train_one_run_and_resume_it_together(tmp_path, tiny_dataset):
    """c10d rendezvous: one run directory, one experiments row, one TensorBoard run; killed
    after an epoch, both nodes started again with --resume finish that same run."""
    out = tmp_path / "out"
    args = _train_args(tiny_dataset, out, epochs=100) + ["--patience", "1000"]
    nodes = _start_nodes(tmp_path, args, _c10d)
    deadline = time.time() + 300
    state = None
    while time.time() < deadline and state is None:
        found = list((out / "runs").glob("*/resume/state.json"))
        state = found[0] if found else None
        time.sleep(0.2)
    assert state is not None, _finish(nodes, 5)
    for node in nodes:  # the scheduler ends the job: both machines at once (torchrun passes
        os.killpg(node.pid, signal.SIGTERM)  # SIGTERM on to its workers)
    _finish(nodes)
    run_dir = state.parent.parent
    # SIGTERM stops like Ctrl-C: the chief records the run as interrupted.
    assert [r["status"] for r in _rows(out / "runs" / "experiments.csv")] == ["interrupted"]

    resumed = _start_nodes(tmp_path, ["--resume", str(run_dir)], _c10d)
    results = _finish(resumed)
    assert [code for code, _ in results] == [0, 0], results[0][1][-3000:] + results[1][1][-3000:]
    outputs = "".join(output for _, output in results)
    assert outputs.count("done: best") == 1 and "(resumed)" in outputs
    assert [p.name for p in (out / "runs").iterdir() if p.is_dir()] == [run_dir.name]
    rows = _rows(out / "runs" / "experiments.csv")
    assert [r["status"] for r in rows] == ["interrupted", "completed"]
    history = _rows(run_dir / "history.csv")
    assert [int(r["epoch"]) for r in history] == list(range(1, len(history) + 1))
    assert len(history) > 1
    assert [p.name for p in (out / "tb").iterdir()] == [run_dir.name]
    assert "torchrun: 2 processes on 2 machines" in (run_dir / "training.log").read_text(
        encoding="utf-8")


@pytest.mark.slow
def test_a_node_without_the_shared_run_directory_stops_the_resume_in_one_line(
        tmp_path, tiny_dataset):
    """Node 1 sees an empty output folder (no shared storage): every rank stops with the same
    one-line error before training, and the run is left as it was."""
    out = tmp_path / "out"
    # --keep_resume: the run must look killed after its last epoch, resume state and all
    nodes = _start_nodes(tmp_path, _train_args(tiny_dataset, out) + ["--keep_resume"], _static)
    assert [code for code, _ in _finish(nodes)] == [0, 0]
    run_dir = next(p for p in (out / "runs").iterdir() if p.is_dir())
    (run_dir / "summary.json").unlink()  # as if killed after its last epoch
    before = sorted(p.name for p in run_dir.rglob("*"))

    (out / "runs").mkdir(exist_ok=True)
    hide = f"mount -t tmpfs none {out / 'runs'}"
    results = _finish(_start_nodes(tmp_path, ["--resume", str(run_dir)], _static, hide))
    for code, output in results:
        assert code != 0
        errors = _error_lines(output)
        assert len(errors) == 1, output[-3000:]
        assert errors[0].startswith("error: rank 1 on ") and "cannot see the checkpoint" in \
            errors[0] and "every machine mounts at the same path" in errors[0]
        assert "Traceback" not in output.split("error: ")[0]  # ours; torchrun's own comes after
    assert sorted(p.name for p in run_dir.rglob("*")) == before
    assert _rows(out / "runs" / "experiments.csv")[0]["status"] == "completed"
    assert len(_rows(out / "runs" / "experiments.csv")) == 1


@pytest.mark.slow
def test_a_node_with_another_copy_of_the_data_stops_before_training(tmp_path, dataset_copy):
    """Node 1 sees a copy of the dataset where one image differs: the group refuses to train
    on it, and the new run directory is removed again."""
    other = tmp_path / "other"
    shutil.copytree(dataset_copy, other)
    victim = sorted(other.rglob("*.jpg"))[0]
    victim.write_bytes(victim.read_bytes() + b"\0" * 10)
    out = tmp_path / "out"
    hide = f"mount --bind {other} {dataset_copy}"
    results = _finish(_start_nodes(tmp_path, _train_args(dataset_copy, out), _static, hide))
    for code, output in results:
        assert code != 0
        errors = _error_lines(output)
        assert len(errors) == 1, output[-3000:]
        assert "rank 1 on" in errors[0] and "sees other files under" in errors[0]
    runs = out / "runs"  # made by the run, so removed with it when empty
    assert not runs.exists() or not [p for p in runs.iterdir() if p.is_dir()]
    assert not (out / "runs" / "experiments.csv").exists()


def test_a_keras_network_refuses_a_multi_worker_cluster_in_one_line(tmp_path, tiny_dataset,
                                                                    monkeypatch, capsys):
    """TF_CONFIG names a cluster: Keras 3 cannot fit under MultiWorkerMirroredStrategy, so the
    run stops with one line and exit 2 before it writes anything (not N separate runs)."""
    from pokedex_trainer.cli.commands import run_main, train_main

    monkeypatch.setenv("TF_CONFIG", '{"cluster": {"worker": ["a:1", "b:1"]}, '
                                    '"task": {"type": "worker", "index": 0}}')
    code = run_main(train_main, _train_args(tiny_dataset, tmp_path)[:2] + [
        "--model_type", "tiny_keras", "--weights", "none", "--image_size", "32", "32",
        "--output_dir", str(tmp_path / "runs"), "--log_dir", str(tmp_path / "tb")])
    err = capsys.readouterr().err
    assert code == 2
    errors = [line for line in err.splitlines() if not line.startswith("INFO: ")]
    assert len(errors) == 1 and errors[0].startswith("error: TF_CONFIG is set")
    assert "keras-team/keras#20585" in err and "torchrun" in err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_a_one_task_tf_config_is_a_single_machine_job():
    from pokedex_trainer.runs.distributed import _cluster_tasks

    assert _cluster_tasks('{"cluster": {"chief": ["localhost:2222"]}, '
                          '"task": {"type": "chief", "index": 0}}') == 1
    assert _cluster_tasks('{"cluster": {"worker": ["a:1", "b:1"]}}') == 2
    assert _cluster_tasks("not json") is None and _cluster_tasks("[1]") is None
