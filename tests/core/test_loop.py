"""What ``core.loop`` does with a backend, epoch by epoch, shown with a scripted fake.

Each test scripts the metrics of every epoch, runs the real loop (RunState, CheckpointSaver,
run_phases through ``training.train_with_backend``) over ``FakeBackend`` and reads back what
the backend was told and what the run directory holds. Epochs are 0-based in the backend's
calls (``fit_epoch(3)``) and 1-based in history.csv and in the weights' ``path``.
"""

from __future__ import annotations

import json

import pytest

from .fake_backend import (NAN, TEST_METRICS, FakeBackend, history, make_context, resume_point,
                           scripted, train)

BEST = "tiny_torch_best.pth"
FINAL = "tiny_torch_final_20250101_120000.pth"


def _model_file(context, name):
    return json.loads((context.run_dir / name).read_text(encoding="utf-8"))


# --- early stopping and the best weights ------------------------------------------------------

def test_early_stopping_after_patience_epochs_without_a_better_val_accuracy(tmp_path):
    """patience 2: the 2nd epoch in a row that does not beat the best val_accuracy (an equal
    one does not) ends the phase, and the run goes on from the best weights, not the last."""
    context = make_context(tmp_path, epochs=10, fine_tune_epochs=0, patience=2)
    backend = FakeBackend(scripted([0.3, 0.5, 0.7, 0.7, 0.6, 0.9, 0.9, 0.9, 0.9, 0.9]))

    state, test_metrics = train(context, backend)

    assert backend.trained_epochs() == [0, 1, 2, 3, 4]  # epochs 4 and 5 were not better
    assert backend.weights == {"path": [1, 2, 3]}  # the best epoch's weights, restored
    assert (state.tracker.best, state.tracker.best_epoch) == (0.7, 3)
    assert state.stop_reason is None  # early stopping is a normal end ("completed")
    assert [row["epoch"] for row in history(context)] == ["1", "2", "3", "4", "5"]
    assert backend.saved(FINAL) == [[1, 2, 3]]  # the final model is the best one
    assert backend.called("evaluate")[-1] == ("evaluate", "test", {"path": [1, 2, 3]})
    assert test_metrics == TEST_METRICS


def test_each_phase_ends_on_the_best_weights_even_without_early_stopping(tmp_path):
    context = make_context(tmp_path, epochs=3, fine_tune_epochs=0, patience=10)
    backend = FakeBackend(scripted([0.5, 0.8, 0.6]))

    train(context, backend)

    assert backend.trained_epochs() == [0, 1, 2]
    assert backend.called("set_weights") == [("set_weights", {"path": [1, 2]})]
    assert _model_file(context, FINAL) == {"path": [1, 2]}


def test_the_best_checkpoint_is_written_only_when_val_accuracy_improves_never_for_nan(tmp_path):
    context = make_context(tmp_path, epochs=7, fine_tune_epochs=0, patience=10)
    backend = FakeBackend(scripted([NAN, 0.5, 0.4, 0.5, 0.6, NAN, 0.6]))

    state, _ = train(context, backend)

    # a NaN is no score, not even the first; epoch 4 only equals the best, epoch 7 too
    assert backend.saved(BEST) == [[1, 2], [1, 2, 3, 4, 5]]
    assert _model_file(context, BEST) == {"path": [1, 2, 3, 4, 5]}
    assert (state.tracker.best, state.tracker.best_epoch) == (0.6, 5)
    assert state.best_logs["val_accuracy"] == 0.6 and state.best_logs["learning_rate"] == 1e-3


def test_phase_two_starts_from_the_best_at_its_own_rate_and_its_own_trainable_layers(tmp_path):
    """Pretrained: phase 1 trains the head at --learning_rate; phase 2 starts from phase 1's
    best weights with a fresh optimizer at --fine_tune_learning_rate (not phase 1's reduced
    rate) and the last --fine_tune_layers layers unfrozen; its epochs continue the numbering."""
    context = make_context(tmp_path, weights="imagenet", epochs=3, fine_tune_epochs=2,
                           fine_tune_layers=7, learning_rate=1e-3, fine_tune_learning_rate=1e-5,
                           lr_factor=0.5, lr_patience=1, patience=10)
    backend = FakeBackend(scripted([0.5, 0.7, 0.6, 0.8, 0.9],
                                   val_loss=[1.0, 1.0, 1.0, 0.9, 0.9]))

    train(context, backend)

    assert backend.called("start_phase", "set_weights") == [
        ("start_phase", "head", "head", 0, 1e-3),
        ("set_weights", {"path": [1, 2]}),  # phase 1's best (epoch 3 was worse)
        ("start_phase", "fine_tune", "last_n", 7, 1e-5),
        ("set_weights", {"path": [1, 2, 4, 5]}),  # phase 2's end: the run's best
    ]
    # phase 1's plateau halved its rate after epoch 2; phase 2 starts again at its own rate
    assert backend.rates() == pytest.approx([1e-3, 1e-3, 5e-4, 1e-5, 1e-5])
    assert [row["phase"] for row in history(context)] == ["head"] * 3 + ["fine_tune"] * 2
    assert [row["epoch"] for row in history(context)] == ["1", "2", "3", "4", "5"]
    assert backend.saved(BEST) == [[1], [1, 2], [1, 2, 4], [1, 2, 4, 5]]


def test_a_run_from_scratch_trains_every_layer_in_both_phases(tmp_path):
    context = make_context(tmp_path, weights="none", epochs=1, fine_tune_epochs=1,
                           fine_tune_layers=7, learning_rate=1e-3, fine_tune_learning_rate=1e-4)
    backend = FakeBackend(scripted([0.5, 0.6]))

    train(context, backend)

    assert backend.called("start_phase") == [("start_phase", "head", "all", 0, 1e-3),
                                             ("start_phase", "fine_tune", "all", 0, 1e-4)]


def test_phase_two_stops_early_against_the_best_of_the_whole_run_with_its_own_count(tmp_path):
    """Phase 1 stops early, phase 2 still runs; its patience count starts again at 0 but
    "better" means better than phase 1's best, so it stops after 2 epochs below 0.9 and the
    run ends on phase 1's best weights."""
    context = make_context(tmp_path, epochs=5, fine_tune_epochs=4, patience=2)
    backend = FakeBackend(scripted([0.5, 0.9, 0.8, 0.8, 0.85, 0.88, 0.99, 0.99, 0.99]))

    train(context, backend)

    assert backend.trained_epochs() == [0, 1, 2, 3, 4, 5]  # phase 1: 4 epochs, phase 2: 2
    assert [row["phase"] for row in history(context)] == ["head"] * 4 + ["fine_tune"] * 2
    assert backend.called("fit_epoch")[4][:3] == ("fit_epoch", 4, "fine_tune")
    assert backend.weights == {"path": [1, 2]}
    assert backend.saved(BEST) == [[1], [1, 2]]
    assert _model_file(context, FINAL) == {"path": [1, 2]}


# --- the learning rate ------------------------------------------------------------------------

def test_reduce_lr_on_plateau_watches_val_loss_and_stops_at_min_lr(tmp_path):
    """lr_patience 2, factor 0.1: after 2 epochs in a row without a lower val_loss the rate is
    multiplied by 0.1 and the count starts again; it never goes below --min_lr. A rising
    val_accuracy does not matter to it."""
    context = make_context(tmp_path, epochs=10, fine_tune_epochs=0, learning_rate=1e-3,
                           lr_factor=0.1, lr_patience=2, min_lr=5e-6, patience=20)
    backend = FakeBackend(scripted([0.1 * (i + 1) for i in range(10)],
                                   val_loss=[1.0] + [0.9] * 9))

    train(context, backend)

    expected = [1e-3] * 4 + [1e-4] * 2 + [1e-5] * 2 + [5e-6] * 2
    assert backend.rates() == pytest.approx(expected)  # each epoch trained at these
    assert [call[1] for call in backend.called("set_learning_rate")] == \
        pytest.approx([1e-4, 1e-5, 5e-6])  # 1e-6 would be below min_lr; at min_lr it stays
    assert [float(row["learning_rate"]) for row in history(context)] == pytest.approx(expected)
    assert resume_point(context)["learning_rate"] == pytest.approx(5e-6)


def test_cosine_schedule_sets_each_epochs_rate_per_phase_and_no_plateau(tmp_path):
    """--lr_schedule cosine, 1 warm-up epoch: each phase warms up to its own rate, then
    decays toward --min_lr; a flat val_loss reduces nothing."""
    context = make_context(tmp_path, epochs=4, fine_tune_epochs=3, lr_schedule="cosine",
                           warmup_epochs=1, learning_rate=1e-3, fine_tune_learning_rate=1e-4,
                           min_lr=1e-6, lr_patience=1, patience=20)
    backend = FakeBackend(scripted([0.1 * (i + 1) for i in range(7)], val_loss=[1.0] * 7))

    train(context, backend)

    phase_1 = [5e-4, 1e-3, 1e-6 + 999e-6 * 0.75, 1e-6 + 999e-6 * 0.25]
    phase_2 = [5e-5, 1e-4, 1e-6 + 99e-6 * 0.5]
    assert backend.rates() == pytest.approx(phase_1 + phase_2)
    # the rate is set before every epoch (after start_phase's base rate)
    assert [call[1] for call in backend.called("set_learning_rate")] == \
        pytest.approx(phase_1 + phase_2)


# --- NaN ----------------------------------------------------------------------------------------

def test_a_nan_loss_stops_the_run_and_keeps_the_best(tmp_path):
    """The NaN epoch is not validated, is recorded, ends the run (phase 2 is not started) as
    nan_loss; the best weights are restored and saved as the final model."""
    context = make_context(tmp_path, epochs=5, fine_tune_epochs=3, patience=10)
    backend = FakeBackend(scripted([0.5, 0.6, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9],
                                   loss=[1.0, 0.8, NAN, 0.5, 0.5, 0.5, 0.5, 0.5]))

    state, test_metrics = train(context, backend)

    assert state.stop_reason == "nan_loss"
    assert backend.trained_epochs() == [0, 1, 2]
    assert [call[1] for call in backend.called("evaluate")] == ["val", "val", "test"]
    assert [call[1] for call in backend.called("start_phase")] == ["head"]
    assert backend.weights == {"path": [1, 2]}
    assert backend.saved(BEST) == [[1], [1, 2]]
    assert backend.saved(FINAL) == [[1, 2]]
    rows = history(context)
    assert rows[2]["loss"] == "nan" and rows[2]["val_accuracy"] == ""
    assert resume_point(context)["phase_done"] is True
    assert test_metrics == TEST_METRICS


def test_a_nan_loss_in_the_first_epoch_saves_no_model_at_all(tmp_path):
    context = make_context(tmp_path, epochs=3, fine_tune_epochs=0)
    backend = FakeBackend(scripted([0.5, 0.6, 0.7], loss=[NAN, 1.0, 1.0]))

    state, test_metrics = train(context, backend)

    assert state.stop_reason == "nan_loss" and test_metrics == {}
    assert backend.called("save_model", "evaluate") == []
    assert not (context.run_dir / BEST).exists() and not (context.run_dir / FINAL).exists()


# --- the resume position, and a resumed run -----------------------------------------------------

def test_the_resume_position_after_each_epoch(tmp_path):
    """resume/state.json after each epoch: where the next epoch starts, whether the phase is
    done, the learning rate, and the counters of the plateau and of early stopping."""
    context = make_context(tmp_path, epochs=3, fine_tune_epochs=2, patience=5, lr_patience=2,
                           lr_factor=0.5, learning_rate=1e-3, fine_tune_learning_rate=1e-4)
    backend = FakeBackend(scripted([0.5, 0.6, 0.6, 0.7, 0.65],
                                   val_loss=[1.0, 0.9, 0.9, 0.8, 0.85]))
    positions = []  # resume/state.json as each epoch starts: what a kill would resume from

    def before_epoch(epoch):
        if epoch > 0:
            positions.append(resume_point(context))

    backend.on_fit = before_epoch

    train(context, backend)
    positions.append(resume_point(context))

    def summary(point):
        run_state = point["run_state"]
        return (point["state_dir"], point["phase_index"], point["phase_start"],
                point["next_epoch"], point["phase_done"], point["learning_rate"],
                point["plateau"]["best"], point["plateau"]["wait"],
                run_state["tracker"]["best_epoch"], run_state["early_stopping"]["wait"],
                run_state["epochs_run"])

    assert [summary(p) for p in positions] == [
        # folder      phase start next done  lr    plateau    best  es   epochs run
        ("epoch_001", 0, 0, 1, False, 1e-3, 1.0, 0, 1, 0, 1),
        ("epoch_002", 0, 0, 2, False, 1e-3, 0.9, 0, 2, 0, 2),
        ("epoch_003", 0, 0, 3, True, 1e-3, 0.9, 1, 2, 1, 3),
        ("epoch_004", 1, 3, 4, False, 1e-4, 0.8, 0, 4, 0, 4),
        ("epoch_005", 1, 3, 5, True, 1e-4, 0.8, 1, 4, 1, 5),
    ]
    assert all(p["format"] == 2 for p in positions)
    assert positions[-1]["run_state"]["best_logs"]["val_accuracy"] == 0.7


RESUME_OPTIONS = dict(epochs=6, fine_tune_epochs=4, patience=3, lr_patience=2, lr_factor=0.5,
                      learning_rate=1e-3, fine_tune_learning_rate=1e-4)
# Phase 1 halves its rate after epoch 4 and ends at 6; phase 2 never beats epoch 4's 0.7 and
# stops early after epoch 9. Resuming without the plateau or early-stopping counters would
# change both.
RESUME_SCRIPT = scripted([0.5, 0.6, 0.6, 0.7, 0.7, 0.7, 0.65, 0.7, 0.7, 0.9],
                         val_loss=[1.0, 0.9, 0.9, 0.9, 0.85, 0.85, 0.8, 0.8, 0.8, 0.7])


def _rows(context):
    return [{k: v for k, v in row.items() if k != "epoch_time_s"} for row in history(context)]


def _without_time(logs):
    return {k: v for k, v in logs.items() if k != "epoch_time_s"}


@pytest.mark.parametrize("where", ["fit_epoch", "log_epoch"])
@pytest.mark.parametrize("stopped_at", range(1, 9))
def test_a_resumed_run_continues_at_the_right_epoch_with_the_same_counters(tmp_path, where,
                                                                          stopped_at):
    """Stopped during 0-based epoch ``stopped_at`` (in fit_epoch: before its history row; in
    log_epoch: after its row, before its resume point), then resumed by a new process: it
    trains the epochs the uninterrupted run trained after that point, at the same rates, and
    ends with the same history, best and final model."""
    reference = make_context(tmp_path, "reference", **RESUME_OPTIONS)
    uninterrupted = FakeBackend(RESUME_SCRIPT)
    reference_state, _ = train(reference, uninterrupted)
    assert uninterrupted.trained_epochs() == list(range(9))

    context = make_context(tmp_path, "run", **RESUME_OPTIONS)
    with pytest.raises(KeyboardInterrupt):
        train(context, FakeBackend(RESUME_SCRIPT, stop_in=(where, stopped_at)))
    assert resume_point(context)["next_epoch"] == stopped_at

    resumed = FakeBackend(RESUME_SCRIPT)
    state, _ = train(context, resumed, resume=True)

    assert resumed.trained_epochs() == list(range(stopped_at, 9))
    assert resumed.rates() == uninterrupted.rates()[stopped_at:]
    if stopped_at != 6:  # mid-phase: a fresh optimizer, then the saved weights, optimizer
        phase = "head" if stopped_at < 6 else "fine_tune"  # and rate of the position
        assert resumed.calls[0][:2] == ("start_phase", phase)
        assert resumed.calls[1:3] == [("load_state", f"epoch_{stopped_at:03d}"),
                                      ("set_learning_rate", uninterrupted.rates()[stopped_at])]
    else:  # phase 1 was done: phase 2 starts afresh, from the best model file
        assert resumed.called("load_state") == []
        assert resumed.calls[:2] == [("read_model_weights", BEST),
                                     ("set_weights", {"path": [1, 2, 3, 4]})]
    assert _rows(context) == _rows(reference)  # no epoch missing, none twice
    assert resumed.weights == uninterrupted.weights == {"path": [1, 2, 3, 4]}
    assert _model_file(context, FINAL) == _model_file(reference, FINAL)
    assert state.tracker.state_dict() == reference_state.tracker.state_dict()
    assert _without_time(state.best_logs) == _without_time(reference_state.best_logs)
    assert resume_point(context)["plateau"] == resume_point(reference)["plateau"]


def test_a_run_stopped_after_its_last_epoch_resumes_to_its_final_model_only(tmp_path):
    """Killed while saving the final model: --resume trains nothing, takes the best model file
    and writes the final model from it."""
    context = make_context(tmp_path, epochs=2, fine_tune_epochs=1)
    script = scripted([0.5, 0.7, 0.6])
    with pytest.raises(KeyboardInterrupt):
        train(context, FakeBackend(script, stop_in=("save_final", None)))
    assert not (context.run_dir / FINAL).exists()

    resumed = FakeBackend(script)
    _, test_metrics = train(context, resumed, resume=True)

    assert resumed.called("start_phase", "fit_epoch") == []
    assert resumed.called("read_model_weights", "set_weights", "save_model") == [
        ("read_model_weights", BEST), ("set_weights", {"path": [1, 2]}),
        ("save_model", FINAL, {"path": [1, 2]})]
    assert test_metrics == TEST_METRICS


# --- the other promises -------------------------------------------------------------------------

def test_a_search_pruner_stops_the_whole_run_as_pruned(tmp_path):
    """``on_epoch`` hears (epochs run so far, logs) after each epoch; True ends the run (not
    only its phase) as ``pruned``, on the best weights."""
    context = make_context(tmp_path, epochs=5, fine_tune_epochs=2, patience=10)
    backend = FakeBackend(scripted([0.5, 0.4, 0.6, 0.6, 0.6, 0.6, 0.6]))
    heard = []

    def pruner(epochs_run, logs):
        heard.append((epochs_run, logs["val_accuracy"]))
        return epochs_run == 2

    state, _ = train(context, backend, on_epoch=pruner)

    assert heard == [(1, 0.5), (2, 0.4)]
    assert state.stop_reason == "pruned"
    assert backend.trained_epochs() == [0, 1]
    assert [call[1] for call in backend.called("start_phase")] == ["head"]
    assert backend.weights == {"path": [1]}


def test_a_pruned_verdict_wins_over_early_stopping_in_the_same_epoch(tmp_path):
    """Early stopping ends only the phase; a pruner's True in that same epoch still ends the
    run as ``pruned`` (no phase 2: the trial is not recorded as completed)."""
    context = make_context(tmp_path, epochs=5, fine_tune_epochs=3, patience=1)
    backend = FakeBackend(scripted([0.5, 0.4, 0.4, 0.4, 0.4, 0.4, 0.4, 0.4]))

    state, _ = train(context, backend, on_epoch=lambda epochs_run, logs: epochs_run >= 2)

    assert state.stop_reason == "pruned"
    assert backend.trained_epochs() == [0, 1]
    assert [call[1] for call in backend.called("start_phase")] == ["head"]


def test_ema_the_average_is_validated_kept_as_best_and_saved(tmp_path):
    """--ema: each epoch validates the moving average (swapped in), saves it as best, then
    swaps the raw weights back to go on training; the run ends on the best average."""
    context = make_context(tmp_path, epochs=2, fine_tune_epochs=0, ema=0.99)
    backend = FakeBackend(scripted([0.5, 0.7]), ema=True)

    _, test_metrics = train(context, backend)

    order = [call[0] for call in backend.calls
             if call[0] in ("fit_epoch", "swap_ema_weights", "evaluate", "save_model",
                            "save_state")]
    epoch = ["fit_epoch", "swap_ema_weights", "evaluate", "save_model", "swap_ema_weights",
             "save_state"]
    assert order == epoch * 2 + ["save_model", "evaluate"]  # then the final model, the test
    assert all(call[2].get("average") == 1 for call in backend.called("evaluate"))
    assert _model_file(context, BEST) == {"path": [1, 2], "average": 1}
    assert _model_file(context, FINAL) == {"path": [1, 2], "average": 1}
    assert test_metrics == TEST_METRICS


def test_another_rank_trains_the_same_way_and_writes_nothing(tmp_path):
    """main_process False (ranks of a torchrun other than 0): no history, no model, no resume
    state, no TensorBoard, no test evaluation; early stopping and the best weights as rank 0."""
    context = make_context(tmp_path, epochs=6, fine_tune_epochs=0, patience=2)
    backend = FakeBackend(scripted([0.5, 0.7, 0.6, 0.6, 0.9, 0.9]), main_process=False)

    _, test_metrics = train(context, backend, main_process=False)

    assert backend.trained_epochs() == [0, 1, 2, 3]
    assert backend.weights == {"path": [1, 2]}
    assert backend.called("save_model", "save_state", "log_epoch") == []
    assert [call[1] for call in backend.called("evaluate")] == ["val"] * 4
    assert test_metrics == {}
    assert list(context.run_dir.iterdir()) == []


def test_every_epoch_is_logged_with_its_validation_metrics_and_rate(tmp_path):
    context = make_context(tmp_path, epochs=2, fine_tune_epochs=0, learning_rate=1e-3)
    backend = FakeBackend(scripted([0.5, 0.6], val_loss=[0.9, 0.8]))

    train(context, backend)

    assert [call[1] for call in backend.called("log_epoch")] == [0, 1]
    row = history(context)[1]
    assert {k: row[k] for k in ("epoch", "phase", "loss", "accuracy", "val_loss",
                                "val_accuracy", "val_top5_accuracy", "learning_rate")} == {
        "epoch": "2", "phase": "head", "loss": "1", "accuracy": "0.5", "val_loss": "0.8",
        "val_accuracy": "0.6", "val_top5_accuracy": "1", "learning_rate": "0.001"}
    assert float(row["epoch_time_s"]) >= 0


def test_the_backend_is_closed_once_also_when_training_stops_with_an_error(tmp_path):
    context = make_context(tmp_path, epochs=3, fine_tune_epochs=0)
    backend = FakeBackend(scripted([0.5, 0.6, 0.7]), stop_in=("fit_epoch", 1))

    with pytest.raises(KeyboardInterrupt):
        train(context, backend)

    assert backend.called("close") == [("close",)]
    assert [row["epoch"] for row in history(context)] == ["1"]  # the stopped epoch: no row
    assert resume_point(context)["next_epoch"] == 1
