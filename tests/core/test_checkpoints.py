"""What ``runs.checkpoints.CheckpointSaver`` writes and reads, shown with a fake backend: the
model files of a run (best, final, a copy every N epochs) and the resume state committed in
two steps (the epoch's folder, then resume/state.json naming it)."""

from __future__ import annotations

import json

import pytest

from pokedex_trainer.core.phases import ResumePoint
from pokedex_trainer.runs.checkpoints import STATE_FORMAT, CheckpointSaver
from pokedex_trainer.runs.store import store_of

from .fake_backend import (STAMP, STATE_FILE, FakeBackend, _layout, make_context, resume_point,
                           scripted, train)


@pytest.fixture
def context(tmp_path):
    return make_context(tmp_path)


def _saver(context, **options) -> CheckpointSaver:
    """The saver of a run, made as training.train_with_backend makes it."""
    return CheckpointSaver(store_of(context), context.timestamp, **options)


def _position(next_epoch: int) -> ResumePoint:
    return ResumePoint(phase_index=0, phase_start=0, next_epoch=next_epoch, phase_done=False,
                       learning_rate=None, plateau=None, run_state={})


def _names(folder) -> list[str]:
    return sorted(path.name for path in folder.iterdir())


def test_the_model_files_of_a_run_and_their_names(context):
    saver = _saver(context, save_h5=True)
    backend = FakeBackend(scripted([0.5]))
    backend.weights = {"path": [1]}

    saver.save_best(backend)
    saver.save_final(backend)

    assert saver.best_path == context.run_dir / "tiny_torch_best.pth"
    assert saver.final_path == context.run_dir / f"tiny_torch_final_{STAMP}.pth"
    # --save_h5: the final model once more, in the format the suffix names
    assert [call[1] for call in backend.called("save_model")] == [
        "tiny_torch_best.pth", f"tiny_torch_final_{STAMP}.pth", f"tiny_torch_final_{STAMP}.h5"]


def test_the_best_weights_come_from_the_best_model_file(context):
    """What a resumed run, which has no best weights in memory, goes on from."""
    saver, backend = _saver(context), FakeBackend(scripted([0.5]))
    assert saver.best_weights(backend) is None  # no best model yet

    backend.weights = {"path": [1, 2]}
    saver.save_best(backend)
    backend.weights = {"path": [1, 2, 3]}

    assert saver.best_weights(backend) == {"path": [1, 2]}


def test_each_epoch_commits_its_own_state_folder_then_state_json_naming_it(context):
    saver, backend = _saver(context), FakeBackend(scripted([0.5]))
    layout = _layout(context)
    assert not layout.resume_state.exists()  # nothing to resume yet

    backend.weights = {"path": [1]}
    saver.save_epoch(backend, 0, _position(1))
    backend.weights = {"path": [1, 2]}
    saver.save_epoch(backend, 1, _position(2))

    # built under .partial/resume_epoch_NNN, then renamed into resume/
    assert backend.called("save_state") == [("save_state", "resume_epoch_001"),
                                            ("save_state", "resume_epoch_002")]
    assert _names(layout.resume_dir) == ["epoch_002", "state.json"]  # older folder removed
    assert not layout.partial_dir.exists()
    assert resume_point(context) == {"format": STATE_FORMAT, **_position(2).saved(),
                                     "state_dir": "epoch_002"}
    saved = json.loads((layout.resume_dir / "epoch_002" / STATE_FILE).read_text("utf-8"))
    assert saved["weights"] == {"path": [1, 2]}

    resumed = FakeBackend(scripted([0.5]))
    saver.restore(resumed, ResumePoint.from_saved(resume_point(context)))
    assert resumed.called("load_state") == [("load_state", "epoch_002")]
    assert resumed.weights == {"path": [1, 2]}


def test_a_failed_state_save_leaves_the_previous_position_and_its_folder(context):
    """A kill or a full disk while the backend writes epoch 2's state: state.json still names
    epoch 1's folder, which is still there; the next process clears the half-built folder."""
    saver, backend = _saver(context), FakeBackend(scripted([0.5]))
    backend.weights = {"path": [1]}
    saver.save_epoch(backend, 0, _position(1))

    def full_disk(folder):
        (folder / STATE_FILE).write_text("half", encoding="utf-8")
        raise OSError(28, "No space left on device")

    backend.save_state = full_disk
    with pytest.raises(OSError):
        saver.save_epoch(backend, 1, _position(2))

    layout = _layout(context)
    assert resume_point(context)["state_dir"] == "epoch_001"
    assert _names(layout.resume_dir) == ["epoch_001", "state.json"]
    assert layout.partial_dir.exists()  # the half-built folder, never a resume state
    _saver(context)  # the next process (--resume) starts by removing it
    assert not layout.partial_dir.exists()

    resumed = FakeBackend(scripted([0.5]))
    saver.restore(resumed, ResumePoint.from_saved(resume_point(context)))
    assert resumed.weights == {"path": [1]}


def test_an_epoch_run_again_after_a_resume_replaces_its_folder(context):
    """Killed after epoch 3's folder was renamed into place, before state.json named it: the
    resumed run trains epoch 3 again and its folder replaces the old one."""
    saver, backend = _saver(context), FakeBackend(scripted([0.5]))
    backend.weights = {"path": [1, 2]}
    saver.save_epoch(backend, 1, _position(2))
    killed = _layout(context).resume_dir / "epoch_003"
    killed.mkdir()
    (killed / STATE_FILE).write_text(json.dumps({"weights": {"path": [1, 2, 3]}, "lr": 1e-3}),
                                     encoding="utf-8")
    backend.weights = {"path": [1, 2, 9]}
    saver.save_epoch(backend, 2, _position(3))

    assert _names(_layout(context).resume_dir) == ["epoch_003", "state.json"]
    saved = json.loads((_layout(context).resume_dir / "epoch_003" / STATE_FILE).read_text("utf-8"))
    assert saved["weights"] == {"path": [1, 2, 9]}


def test_a_killed_write_of_the_state_goes_once_a_new_position_is_committed(context):
    """A killed write of state.json leaves a temporary file; the next commit removes it and
    nothing else it did not write (a run of an earlier version is upgraded by its RunStore
    before a saver sees it: tests/runs/test_store.py)."""
    layout = _layout(context)
    layout.resume_dir.mkdir()
    for name in (".state.json.abc123.tmp", "notes.txt"):
        (layout.resume_dir / name).write_text("x", encoding="utf-8")
    saver = _saver(context)
    backend = FakeBackend(scripted([0.5]))
    saver.save_epoch(backend, 1, _position(2))
    assert _names(layout.resume_dir) == ["epoch_002", "notes.txt", "state.json"]


def test_a_new_saver_removes_only_a_killed_saves_leftovers(context):
    root = context.run_dir
    (root / ".partial" / "resume_epoch_004").mkdir(parents=True)
    leftovers = [".summary.json.k3j.tmp", ".config.json.x1.tmp", ".exports.json.y.tmp"]
    kept = ["summary.json", ".mine.json.x1.tmp", ".summary.json.tmp", "notes.txt"]
    for name in leftovers + kept:
        (root / name).write_text("x", encoding="utf-8")

    _saver(context, enabled=False)  # another rank: touches nothing
    assert _names(root) == sorted([".partial"] + leftovers + kept)

    _saver(context)
    assert _names(root) == sorted(kept)


def test_a_saver_that_must_not_write_writes_nothing(context):
    """enabled False: the ranks of a multi-process run other than 0."""
    saver, backend = _saver(context, enabled=False, save_every=1), FakeBackend(scripted([0.5]))

    saver.save_best(backend)
    saver.save_epoch(backend, 0, _position(1))
    saver.save_final(backend)

    assert backend.calls == []
    assert _names(context.run_dir) == []


# The weights after each epoch of the run below: phase 2 goes on from epoch 2, phase 1's best.
WEIGHTS_AFTER = {1: [1], 2: [1, 2], 3: [1, 2, 3], 4: [1, 2, 4], 5: [1, 2, 4, 5]}


@pytest.mark.parametrize("save_every, copies", [(0, []), (1, [1, 2, 3, 4, 5]), (2, [2, 4]),
                                                (3, [3])])
def test_save_every_keeps_a_model_copy_every_n_epochs_of_a_run(tmp_path, save_every, copies):
    """--save_every N through the training loop: <arch>_epoch_NNN every N epochs (counted
    over the run), beside the best and final models; resume/ keeps the last epoch only."""
    context = make_context(tmp_path, epochs=3, fine_tune_epochs=2, patience=10,
                           save_every=save_every)
    backend = FakeBackend(scripted([0.5, 0.7, 0.6, 0.65, 0.8]))

    train(context, backend)

    names = [f"tiny_torch_epoch_{n:03d}.pth" for n in copies]
    assert [path.name for path in sorted(context.run_dir.glob("tiny_torch_epoch_*"))] == names
    for n, name in zip(copies, names):  # each copy holds the weights of its epoch
        assert json.loads((context.run_dir / name).read_text("utf-8")) == \
            {"path": WEIGHTS_AFTER[n]}
    assert _names(_layout(context).resume_dir) == ["epoch_005", "state.json"]
    assert resume_point(context)["state_dir"] == "epoch_005"
    assert {"tiny_torch_best.pth", f"tiny_torch_final_{STAMP}.pth"} <= set(_names(
        context.run_dir))
