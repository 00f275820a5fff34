"""RunStore: the one reader and writer of a run directory, and the upgrade of a run written
by the first version when it is opened to resume."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import ROOT
from pokedex_trainer.runs.checkpoints import STATE_FORMAT
from pokedex_trainer.errors import UserError
from pokedex_trainer.runs.store import RunStore

LEGACY = ROOT / "tests" / "fixtures" / "legacy_v1" / "runs"
PLAN = [3, 1]  # the epochs of the two phases the legacy runs planned


@pytest.fixture
def keras_run(tmp_path) -> Path:
    return Path(shutil.copytree(LEGACY / "tiny_keras_killed", tmp_path / "tiny_keras_killed"))


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_a_first_version_resume_state_is_upgraded_when_the_run_is_opened(keras_run):
    """Flat resume files move into resume/epoch_NNN under today's names, state.json gets the
    format, the folder and the plateau counters the first version kept elsewhere."""
    old = json.loads((keras_run / "resume" / "state.json").read_text("utf-8"))
    assert "format" not in old and old["backend"]["reduce_lr"]

    point = RunStore(keras_run).resume_point(PLAN, STATE_FORMAT)

    assert point["format"] == STATE_FORMAT and point["state_dir"] == "epoch_002"
    assert point["plateau"] == old["backend"]["reduce_lr"] and "backend" not in point
    assert point["run_state"] == old["run_state"]
    assert _names(keras_run / "resume") == ["epoch_002", "state.json"]
    assert _names(keras_run / "resume" / "epoch_002") == ["optimizer.npz", "weights.weights.h5"]
    assert json.loads((keras_run / "resume" / "state.json").read_text("utf-8")) == point
    assert not (keras_run / ".partial").exists()
    # a second open reads today's format as it is
    assert RunStore(keras_run).resume_point(PLAN, STATE_FORMAT) == point


def test_a_torch_run_keeps_its_plateau_counters_from_the_old_scheduler(tmp_path):
    run = Path(shutil.copytree(LEGACY / "tiny_torch_killed", tmp_path / "run"))
    point = RunStore(run).resume_point(PLAN, STATE_FORMAT)
    assert _names(run / "resume" / "epoch_002") == ["state.pth"]
    assert set(point["plateau"]) == {"best", "wait", "cooldown_counter"}
    assert point["plateau"]["best"] == pytest.approx(1.063033938407898)


def test_an_upgrade_that_fails_leaves_the_old_files_usable(keras_run, monkeypatch):
    """The old files are copied, not moved: a failure before state.json is replaced leaves
    the first version's run exactly as it was."""
    import pokedex_trainer.runs.upgrade as upgrade

    before = {p.name: p.read_bytes() for p in (keras_run / "resume").iterdir()}

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(upgrade.shutil, "copy2", full_disk)
    with pytest.raises(OSError):
        RunStore(keras_run).resume_point(PLAN, STATE_FORMAT)
    assert {p.name: p.read_bytes() for p in (keras_run / "resume").iterdir()} == before


def test_a_bad_first_version_state_is_refused_before_anything_moves(keras_run):
    state = keras_run / "resume" / "state.json"
    data = json.loads(state.read_text("utf-8"))
    data["run_state"]["epochs_run"] = 99
    state.write_text(json.dumps(data), "utf-8")
    with pytest.raises(UserError, match="epochs_run must not exceed"):
        RunStore(keras_run).resume_point(PLAN, STATE_FORMAT)
    assert _names(keras_run / "resume") == ["last.weights.h5", "optimizer.npz", "state.json"]


def test_a_new_run_is_written_and_read_back_through_its_store(tmp_path, tiny_dataset):
    from pokedex_trainer.config import TrainConfig
    from pokedex_trainer.data.scan import scan_dataset, stratified_split

    config = TrainConfig(data_path=str(tiny_dataset), model_type="tiny_torch",
                         output_dir=str(tmp_path / "runs")).resolved()
    index = scan_dataset(tiny_dataset)
    splits = stratified_split(index, 0.2, 0.2, 1)
    store = RunStore.create(tmp_path / "runs", "run", config.spec)
    assert RunStore.create(tmp_path / "runs", "run", config.spec).root.name == "run_2"
    store.write_start(config, index, splits)
    assert store.config() == config
    assert store.class_names() == index.class_names
    assert store.manifest()["splits"]["test"] == [tuple(s) for s in splits["test"]]
    assert store.finished_status() is None
    store.write_summary({"status": "completed"})
    assert store.finished_status() == "completed"
    assert store.remove_new_run() is False  # summary.json is not a file of an unstarted run


def test_manifest_round_trip(tiny_dataset, tmp_path):
    from pokedex_trainer.data.scan import scan_dataset, stratified_split

    index = scan_dataset(tiny_dataset)
    splits = stratified_split(index, 0.2, 0.2, seed=3)
    store = RunStore(tmp_path)
    store.write_manifest(index, splits, 3, 0.2, 0.2)
    manifest = store.manifest()
    assert manifest["class_names"] == ["Gato", "León", "Perro"]
    assert manifest["splits"] == splits
    assert "León" in (tmp_path / "split_manifest.json").read_text(encoding="utf-8")


def test_a_new_run_whose_first_files_cannot_be_written_is_removed(tiny_dataset, tmp_path,
                                                                  monkeypatch, capsys):
    """A full disk while config.json, class_names.json and the split are written: one line,
    and no half-written run directory left for a later --resume or evaluate.py to trip on."""
    from conftest import tiny_run_argv
    from pokedex_trainer.cli.commands import run_main, train_main

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device", "split_manifest.json")

    monkeypatch.setattr(RunStore, "write_manifest", full_disk)
    code = run_main(train_main, tiny_run_argv(tiny_dataset, tmp_path, "tiny_torch",
                                              run_name="full"))
    assert code != 0
    assert "No space left on device" in capsys.readouterr().err
    assert not (tmp_path / "runs" / "full").exists()
