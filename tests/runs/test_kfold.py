"""--kfold: folds trained one after the other, through the lifecycle of any run."""

from __future__ import annotations

from conftest import tiny_run_argv


def test_kfold_under_torchrun_is_refused_before_any_run(tiny_dataset, tmp_path, monkeypatch,
                                                        capsys):
    """Each rank would train every fold on its own: refused in one line, nothing written."""
    from pokedex_trainer.cli.commands import run_main, train_main

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")  # as torchrun sets them
    monkeypatch.setenv("MASTER_PORT", "29500")
    argv = tiny_run_argv(tiny_dataset, tmp_path, "tiny_torch", "--kfold", "2")
    assert run_main(train_main, argv) == 2
    assert "--kfold trains its folds one after the other in one process" in \
        capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
