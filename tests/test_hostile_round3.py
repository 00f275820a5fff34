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
