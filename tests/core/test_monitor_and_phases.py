"""Early stopping and the phase plan, driven by hand-written sequences."""

import pytest

from pokedex_trainer.config import TrainConfig
from pokedex_trainer.errors import UserError
from pokedex_trainer.core.monitor import BestTracker, EarlyStopping
from pokedex_trainer.core.phases import (BATCHNORM, OTHER, WEIGHTED, layers_to_unfreeze,
                                    plan_phases, trainable_mask)


def test_early_stopping_fires_after_patience_epochs_without_improvement():
    tracker = BestTracker("max")
    stopping = EarlyStopping(tracker, patience=3)
    stops = []
    for epoch, value in enumerate([0.5, 0.6, 0.6, 0.59, 0.61, 0.6, 0.6, 0.6], start=1):
        stops.append(stopping.update(tracker.update(value, epoch)))
    assert stops == [False, False, False, False, False, False, False, True]
    assert tracker.best == 0.61 and tracker.best_epoch == 5


def test_nan_never_counts_as_improvement():
    tracker = BestTracker("max")
    assert tracker.update(0.3, 1)
    assert not tracker.update(float("nan"), 2)
    assert tracker.best == 0.3


def test_patience_restarts_each_phase_but_the_best_is_kept():
    tracker = BestTracker("max")
    stopping = EarlyStopping(tracker, patience=2)
    stopping.update(tracker.update(0.9, 1))
    stopping.update(tracker.update(0.5, 2))
    stopping.start_phase()
    assert not stopping.update(tracker.update(0.8, 3))
    assert stopping.update(tracker.update(0.85, 4))
    assert tracker.best == 0.9


def test_pretrained_plan_freezes_then_fine_tunes():
    config = TrainConfig(model_type="mobilenet", epochs=3, fine_tune_epochs=2,
                         fine_tune_layers=7, weights="imagenet").resolved()
    head, fine = plan_phases(config)
    assert (head.trainable, head.epochs, head.learning_rate) == ("head", 3, 0.001)
    assert (fine.trainable, fine.epochs, fine.learning_rate, fine.n_layers) == (
        "last_n", 2, 0.0001, 7)


def test_scratch_plan_freezes_nothing():
    config = TrainConfig(model_type="mobilenet", weights="none").resolved()
    assert {p.trainable for p in plan_phases(config)} == {"all"}


def test_last_n_counts_only_weighted_layers_and_never_batchnorm():
    kinds = [WEIGHTED, BATCHNORM, OTHER, WEIGHTED, BATCHNORM, OTHER, WEIGHTED, BATCHNORM]
    assert layers_to_unfreeze(kinds, 2) == {3, 6}
    assert layers_to_unfreeze(kinds, 0) == set()
    assert layers_to_unfreeze(kinds, 99) == {0, 3, 6}
    config = TrainConfig(model_type="mobilenet", fine_tune_layers=2).resolved()
    fine = plan_phases(config)[1]
    assert trainable_mask(fine, kinds) == [False, False, False, True, False, False, True, False]


def test_fine_tune_layers_all_unfreezes_every_weighted_layer_and_keeps_batchnorm_frozen():
    """--fine_tune_layers all (issue 35's fine-tune depth): every weighted layer of the
    backbone, BatchNorm frozen as with last N, in both frameworks (one mask)."""
    from pokedex_trainer.cli.parsers import build_train_parser

    kinds = [WEIGHTED, BATCHNORM, OTHER, WEIGHTED, BATCHNORM, OTHER, WEIGHTED, BATCHNORM]
    args = build_train_parser().parse_args(["--fine_tune_layers", "ALL"])
    config = TrainConfig(model_type="mobilenet", fine_tune_layers=args.fine_tune_layers,
                         weights="imagenet").resolved()
    fine = plan_phases(config)[1]
    assert fine.trainable == "weighted"
    assert trainable_mask(fine, kinds) == [True, False, False, True, False, False, True, False]
    with pytest.raises(UserError, match="'most' is neither a number nor 'all'"):
        build_train_parser().parse_args(["--fine_tune_layers", "most"])
    with pytest.raises(UserError, match="--fine_tune_layers must be 0 or more, or all"):
        TrainConfig(model_type="mobilenet", fine_tune_layers=-1).resolved()


def test_a_saved_config_with_fine_tune_layers_all_reads_back(tmp_path):
    import json

    from pokedex_trainer.runs.checked_files import config_values

    path = tmp_path / "config.json"
    config = TrainConfig(model_type="mobilenet", fine_tune_layers="all").resolved()
    path.write_text(json.dumps(config.to_dict()), encoding="utf-8")
    assert TrainConfig(**config_values(path, TrainConfig.field_types())) == config
    path.write_text(json.dumps({**config.to_dict(), "fine_tune_layers": "most"}), "utf-8")
    with pytest.raises(UserError, match="fine_tune_layers must be a whole number"):
        config_values(path, TrainConfig.field_types())
