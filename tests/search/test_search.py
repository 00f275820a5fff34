"""The hyperparameter search (--search_trials): its space, its trials as runs, pruning,
resuming after a kill, and two processes sharing one study."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, nth_commit, run_with_signal_at
from pokedex_trainer.cli.parsers import (explicit_train_options, parse_train_command,
                                         train_option_actions)
from pokedex_trainer.config import TrainConfig
from pokedex_trainer.errors import UserError
from pokedex_trainer.search.space import check_values, compose_space, default_space, read_space_file
from pokedex_trainer.search.trials import command_parts, format_command


def tiny_search_argv(data: Path, out: Path, trials: int, *extra: str) -> list[str]:
    return ["--data_path", str(data), "--model_type", "tiny_torch", "--weights", "none",
            "--image_size", "32", "32", "--epochs", "2", "--fine_tune_epochs", "1",
            "--workers", "0", "--histogram_freq", "0", "--output_dir", str(out / "runs"),
            "--log_dir", str(out / "tb"), "--search_trials", str(trials),
            "--search_name", "s", *extra]


def study_trials(out: Path, name: str = "s") -> list:
    import optuna

    return optuna.load_study(study_name=name,
                             storage=f"sqlite:///{out / 'runs' / 'search' / (name + '.db')}"
                             ).get_trials()


def experiment_rows(out: Path) -> list[dict]:
    with open(out / "runs" / "experiments.csv", encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def test_space_file_narrows_extends_and_fixes(tmp_path):
    """A mapping searches an option, null drops it, a value fixes it; flags given on the
    command line stay fixed whatever the file says."""
    config = TrainConfig(model_type="mobilenet", weights="imagenet").resolved()
    recipe = {"label_smoothing", "optimizer", "lr_schedule"}
    assert set(default_space(config)) == {"learning_rate", "dropout", "augment", "batch_size",
                                          "fine_tune_learning_rate", "fine_tune_layers"} | recipe
    file = tmp_path / "space.yaml"
    file.write_text("learning_rate: {low: 0.001, high: 0.01, log: true}\n"
                    "lr_factor: {low: 0.1, high: 0.5}\n"
                    "patience: {low: 2, high: 6}\n"
                    "augment: null\n"
                    "epochs: 7\n"
                    "dropout: {choices: [0.1, 0.2]}\n", encoding="utf-8")
    space, fixed = compose_space(config, read_space_file(str(file)), {"dropout": 0.4}, "x")
    assert space["learning_rate"].low == 0.001 and space["learning_rate"].log
    assert space["lr_factor"].integer is False and space["patience"].integer is True
    assert "augment" not in space and "dropout" not in space  # dropped; given as a flag
    assert fixed == {"epochs": 7}
    scratch = TrainConfig(model_type="mobilenet", weights="none", fine_tune_epochs=0).resolved()
    assert set(default_space(scratch)) == {"learning_rate", "dropout", "augment",
                                           "batch_size"} | recipe


@pytest.mark.parametrize("content, message", [
    ("data_path: {choices: [a, b]}", "cannot be searched"),
    ("learning_rate: {low: 0.1, high: 0.01}", "low < high"),
    ("learning_rate: {low: 0, high: 0.1, log: true}", "low > 0"),
    ("learning_rate: {lo: 1, high: 2}", "unknown keys"),
    ("augment: {low: 0, high: 1}", "takes choices"),
    ("learning_rate: [1, 2", "not valid YAML"),
    ("- 1\n- 2", "expected a mapping"),
    ("!!python/object/apply:os.system ['echo hacked']", "not valid YAML"),
    ("epochs: {low: 1, high: 3, step: 0.5}", "takes a whole number"),
    ("fine_tune_layers: {low: 0.5, high: 10, log: true}", "takes a whole number"),
    ("fine_tune_layers: {low: 0, high: 10, log: true}", "low > 0 with log"),
    ("dropout: {choices: [x]}", "takes a number"),
    ("epochs: true", "takes a whole number"),
    ("augment: {choices: [no]}", "takes a word"),
    ("dropout: {low: 0.1, high: 0.4, log: 'false'}", "log takes true or false"),
    ("dropout: {low: 0.5, high: 3}", "does not make a valid run"),
])
def test_space_file_errors_are_one_line(tmp_path, content, message):
    file = tmp_path / "space.yaml"
    file.write_text(content, encoding="utf-8")
    config = TrainConfig(model_type="mobilenet").resolved()
    with pytest.raises(UserError, match=message) as error:
        space, _ = compose_space(config, read_space_file(str(file)), {}, "--search_space")
        check_values(config, space, "--search_space")
    assert "\n" not in str(error.value)


def test_space_file_reads_yaml_exponents(tmp_path):
    """YAML 1.1 reads 1e-4 as text: it is taken as the number it spells."""
    file = tmp_path / "space.yaml"
    file.write_text("learning_rate: {low: 1e-4, high: 1e-2, log: true}\npatience: 3\n",
                    encoding="utf-8")
    config = TrainConfig(model_type="mobilenet").resolved()
    space, fixed = compose_space(config, read_space_file(str(file)), {}, "x")
    assert (space["learning_rate"].low, space["learning_rate"].high) == (1e-4, 1e-2)
    assert fixed == {"patience": 3}


def test_command_line_repeats_the_trial():
    """The printed command parses back into the same options (fixed flags + trial values)."""
    argv = ["--data_path", "data/mis fotos/León", "--model_type", "mobilenet", "--weights",
            "none", "--image_size", "64", "64", "--search_trials", "5"]
    explicit = explicit_train_options(argv)
    assert "epochs" not in explicit and explicit["image_size"] == [64, 64]
    params = {"learning_rate": 0.000123457, "augment": "none", "batch_size": 32,
              "optimizer": "adamw"}
    command = format_command(command_parts({**explicit, **params}, train_option_actions()))
    assert "'data/mis fotos/León'" in command and "--search_trials" not in command
    import shlex

    for token in ("pr$ice", "a`b", "x;y"):  # literal in bash (and in PowerShell)
        assert shlex.split(format_command([token]))[2] == token
    config, _ = parse_train_command(shlex.split(command)[2:])
    assert (config.data_path, config.learning_rate, config.augment, config.batch_size,
            config.image_size, config.optimizer) == ("data/mis fotos/León", 0.000123457, "none",
                                                     32, (64, 64), "adamw")


def test_three_trial_search_prunes_and_reports(tiny_dataset, tmp_path, monkeypatch, capsys):
    """3 trials: 3 run directories, 3 experiments rows with their trial number; the trial
    whose validation accuracy is forced low is pruned; evaluate.py --search reports it."""
    from pokedex_trainer.search import trials as search
    from pokedex_trainer.cli.commands import evaluate_main, run_main, train_main

    monkeypatch.setattr(search, "epoch_score",
                        lambda trial, logs: 0.0 if trial.number == 2 else 1.0)
    monkeypatch.chdir(tmp_path)
    assert run_main(train_main, tiny_search_argv(tiny_dataset, tmp_path, 3)) == 0
    trials = study_trials(tmp_path)
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE", "PRUNED"]
    assert sorted(trials[2].intermediate_values) == [1, 2]  # stopped at epoch 2 of 3
    rows = experiment_rows(tmp_path)
    assert [(r["run_name"], r["search_name"], r["search_trial"], r["status"]) for r in rows] == [
        ("s_trial000", "s", "0", "completed"), ("s_trial001", "s", "1", "completed"),
        ("s_trial002", "s", "2", "pruned")]
    for row in rows:
        config = json.loads((Path(row["run_dir"]) / "config.json").read_text("utf-8"))
        assert config["search_trial"] == int(row["search_trial"])
    assert float(rows[0]["learning_rate"]) == trials[0].params["learning_rate"] or \
        f"{trials[0].params['learning_rate']:.6g}" == rows[0]["learning_rate"]
    printed = capsys.readouterr().out
    assert "repeat it with:\n  python train_professional_models.py" in printed
    report = tmp_path / "runs" / "search" / "s"
    assert {"trials.csv", "best_command.txt", "history.png"} <= {p.name for p in
                                                                 report.iterdir()}
    # evaluate.py --search: the same report from the database file
    assert run_main(evaluate_main, ["--search", str(tmp_path / "runs" / "search" / "s.db"),
                                    "--output_dir", str(tmp_path / "again")]) == 0
    again = capsys.readouterr().out
    assert "2 complete, 1 pruned" in again
    assert (tmp_path / "again" / "best_command.txt").read_text("utf-8") == \
        (report / "best_command.txt").read_text("utf-8")
    # the search is done: running it again trains nothing
    assert run_main(train_main, tiny_search_argv(tiny_dataset, tmp_path, 3)) == 0
    assert len(study_trials(tmp_path)) == 3


def test_search_refusals_are_one_line(tiny_dataset, tmp_path, capsys):
    from pokedex_trainer.cli.commands import evaluate_main, run_main, train_main

    base = tiny_search_argv(tiny_dataset, tmp_path, 2)
    cases = [(base + ["--run_name", "x"], "does not combine with --run_name"),
             (base[:-4] + ["--search_name", "s"], "go with --search_trials"),
             (base + ["--search_storage", "postgres.txt"], "give a database URL"),
             (base + ["--search_name", "../up"], "--search_name '../up' is not usable")]
    for argv, message in cases:
        assert run_main(train_main, argv) == 2
        assert message in capsys.readouterr().err
    assert run_main(evaluate_main, ["--search", "nothing_here"]) == 2
    assert "no search 'nothing_here'" in capsys.readouterr().err
    foreign = tmp_path / "people.db"  # a database of something else is only read
    import sqlite3

    with sqlite3.connect(foreign) as connection:
        connection.execute("CREATE TABLE people (name TEXT)")
    before = foreign.read_bytes()
    assert run_main(evaluate_main, ["--search", str(foreign)]) == 2
    assert "not a search database" in capsys.readouterr().err
    assert foreign.read_bytes() == before
    for argv, message in ((base + ["--search_storage", "sqlite://"], "in-memory"),
                          (base + ["--search_name", "a%41b"], "letters, digits"),
                          (base + ["--search_name", ""], "is not usable"),
                          (base + ["--find_batch_size"], "--find_batch_size")):
        assert run_main(train_main, argv) == 2
        assert message in capsys.readouterr().err
    for storage in ("gone.log", f"sqlite:///{tmp_path / 'gone.db'}"):  # never created
        assert run_main(evaluate_main, ["--search", "s", "--search_storage", storage]) == 2
        assert "no search database" in capsys.readouterr().err
    assert not (tmp_path / "gone.db").exists() and not Path("gone.log").exists()
    assert not (tmp_path / "runs" / "s_trial000").exists()


def test_a_study_refuses_another_space_or_split(tiny_dataset, tmp_path, capsys):
    """Continuing a study with another range of an option, or another split, is refused
    before any trial starts."""
    import optuna

    from pokedex_trainer.cli.commands import run_main, train_main

    folder = tmp_path / "runs" / "search"
    folder.mkdir(parents=True)
    study = optuna.create_study(study_name="s", storage=f"sqlite:///{folder / 's.db'}",
                                direction="maximize")
    study.add_trial(optuna.trial.create_trial(
        params={"learning_rate": 0.001}, value=0.5,
        distributions={"learning_rate": optuna.distributions.FloatDistribution(
            1e-4, 1e-2, log=True)}))
    space = tmp_path / "space.yaml"
    space.write_text("learning_rate: {low: 0.001, high: 0.01}\n", encoding="utf-8")
    argv = tiny_search_argv(tiny_dataset, tmp_path, 2)
    assert run_main(train_main, argv + ["--search_space", str(space)]) == 2
    assert "drew learning_rate" in capsys.readouterr().err
    study.set_user_attr("signature", {"model_type": "tiny_torch"})
    assert run_main(train_main, argv) == 2
    assert "give another --search_name" in capsys.readouterr().err
    assert len(study.get_trials()) == 1 and not list(tmp_path.glob("runs/s_trial*"))


@pytest.mark.filterwarnings("ignore:Heartbeat")
def test_a_trial_another_machine_left_running_is_failed_by_its_old_heartbeat(tmp_path):
    """A trial of another host is never judged by pid: a database storage fails it once its
    heartbeat is older than the grace period (before the trials are counted)."""
    import sqlite3

    import optuna

    from pokedex_trainer.search.storage import rdb_storage
    from pokedex_trainer.search.trials import fail_dead_trials

    db = tmp_path / "s.db"
    study = optuna.create_study(study_name="s", storage=rdb_storage(f"sqlite:///{db}"))
    trial = study.ask()
    trial.set_user_attr("host", "another-machine")
    trial.set_user_attr("pid", 1)
    with sqlite3.connect(db) as connection:
        connection.execute("INSERT INTO trial_heartbeats (trial_id, heartbeat) "
                           "VALUES (?, '2020-01-01 00:00:00')", (trial._trial_id,))
    fail_dead_trials(study)
    assert study.get_trials()[0].state.name == "FAIL"


@pytest.mark.slow
def test_search_continues_after_kill(tiny_dataset, tmp_path):
    """kill -9 at the end of trial 1 (its run recorded, the study not told): the next start
    marks that trial failed and runs trials until 3 have finished."""
    script = ROOT / "train_professional_models.py"
    argv = [str(script), *tiny_search_argv(tiny_dataset, tmp_path, 3)]
    killed = run_with_signal_at(tmp_path, argv, nth_commit("summary.json", 2), after=True)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert [t.state.name for t in study_trials(tmp_path)] == ["COMPLETE", "RUNNING"]
    again = subprocess.run([sys.executable, *argv], cwd=tmp_path, capture_output=True,
                           text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "trial 1 was left running by a process that ended: marked failed" in again.stderr
    states = [t.state.name for t in study_trials(tmp_path)]
    assert states[:2] == ["COMPLETE", "FAIL"] and len(states) == 4
    assert sum(s in ("COMPLETE", "PRUNED") for s in states) == 3
    # trial 1 was killed between its summary.json and its experiments row
    assert {r["run_name"] for r in experiment_rows(tmp_path)} == {
        "s_trial000", "s_trial002", "s_trial003"}
    assert (tmp_path / "runs" / "s_trial001" / "summary.json").is_file()


@pytest.mark.slow
def test_two_processes_share_one_study(tiny_dataset, tmp_path):
    """Two processes on one SQLite study complete distinct trials, 4 in total."""
    script = ROOT / "train_professional_models.py"
    argv = [sys.executable, str(script), *tiny_search_argv(tiny_dataset, tmp_path, 4)]
    first = subprocess.Popen(argv, cwd=tmp_path, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    time.sleep(1)
    second = subprocess.Popen(argv, cwd=tmp_path, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    outputs = [process.communicate(timeout=600) for process in (first, second)]
    assert first.returncode == 0 and second.returncode == 0, [o[1][-1500:] for o in outputs]
    trials = study_trials(tmp_path)
    finished = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(finished) >= 4 and len({t.number for t in trials}) == len(trials)
    pids = {t.user_attrs["pid"] for t in finished}
    assert pids == {first.pid, second.pid}  # both processes ran trials
    rows = experiment_rows(tmp_path)
    assert sorted(r["search_trial"] for r in rows) == sorted(str(t.number) for t in trials)


def test_a_search_never_writes_into_a_file_that_is_not_its_own(tiny_dataset, tmp_path, capsys):
    """Issue 32, items 4 and 7: another application's SQLite database, a journal cut in the
    middle of a line, a path with an unexpanded variable: one line each, the file unchanged."""
    import sqlite3

    from pokedex_trainer.cli.commands import run_main, train_main

    foreign = tmp_path / "app.db"
    with sqlite3.connect(foreign) as connection:
        connection.execute("CREATE TABLE customers (name TEXT)")
    cut = tmp_path / "cut.log"
    cut.write_bytes(b'{"op_code": 0, "worker_id": "x", "study_name": "s", "directions": [1]}\n'
                    b'{"op_code": 5, "wor')
    notes = tmp_path / "notes.log"
    notes.write_bytes(b"my own notes\n")
    odd = tmp_path / "odd.log"  # JSON lines, but operations Optuna does not know
    odd.write_bytes(b'{"op_code": 0, "worker_id": "w", "study_name": "s", "directions": [1]}\n'
                    b'{"op_code": 99}\n')
    cases = [(f"sqlite:///{foreign}", "another application's database"),
             (str(cut), "ends in a cut line"), (str(notes), "not an Optuna journal"),
             (str(odd), "not an Optuna journal"),
             ("sqlite:///${HOME}/search.db", "not expanded")]
    for storage, message in cases:
        before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
        argv = tiny_search_argv(tiny_dataset, tmp_path, 1, "--search_storage", storage)
        assert run_main(train_main, argv) == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert err.startswith("error: ") and message in err, err
        assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before
    assert not (tmp_path / "runs" / "s_trial000").exists()
