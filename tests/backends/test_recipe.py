"""The training recipe options: augmentation strength and warm-up, label smoothing, the cosine
schedule, AdamW and the moving average of the weights, each with one meaning in Keras and
PyTorch."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from conftest import train_tiny_run
from pokedex_trainer.data.augment import full_share
from pokedex_trainer.runs.store import RunStore
from pokedex_trainer.config import TrainConfig
from pokedex_trainer.core.monitor import cosine_learning_rate
from pokedex_trainer.data.feeding import BatchSource


def test_augment_warmup_ramps_the_share_of_full_images(tiny_dataset):
    """--augment full --augment_warmup 3: 1/4, 2/4, 3/4 of the images get the full pipeline in
    epochs 1 to 3, all of them afterwards; light and none never change."""
    assert [full_share(e, "full", 3) for e in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    assert full_share(0, "full", 0) == 1.0 and full_share(5, "light", 3) == 0.0
    source = BatchSource(tiny_dataset, [("Gato/x.jpg", 0)], (32, 32), training=True,
                         augment="full", augment_warmup=3)
    for epoch, share in enumerate([0.25, 0.5, 0.75, 1.0]):
        levels = [level for seed in range(200) for level in source.levels(epoch, 20, seed)]
        assert levels.count("full") / len(levels) == pytest.approx(share, abs=0.02)
        assert set(levels) <= {"full", "light"}
    light = BatchSource(tiny_dataset, [], (32, 32), training=True, augment="light",
                        augment_warmup=3)
    assert set(light.levels(0, 50, 1)) == {"light"}
    none = BatchSource(tiny_dataset, [], (32, 32), training=True, augment="none")
    assert not none.training  # resize only, like the validation images


def test_augmented_batches_repeat_and_follow_the_level(tiny_dataset):
    """A batch is the same for the same seed, epoch and batch number (whatever process builds
    it); light, full and none give different pixels."""
    from pokedex_trainer.data.scan import scan_dataset

    samples = scan_dataset(tiny_dataset).samples[:8]

    def batch(augment, epoch=0, warmup=0):
        source = BatchSource(tiny_dataset, samples, (32, 32), training=True, seed=3,
                             augment=augment, augment_warmup=warmup)
        return source.load_batch(list(range(8)), epoch, 0).images

    assert np.array_equal(batch("full", 0, 2), batch("full", 0, 2))
    assert not np.array_equal(batch("full"), batch("light"))
    assert not np.array_equal(batch("light"), batch("none"))
    assert np.array_equal(batch("full", 5, 2), batch("full", 5, 0))  # warm-up over: all full


def test_cosine_schedule_values():
    rates = [cosine_learning_rate(1.0, e, 5, warmup_epochs=1, min_lr=0.0) for e in range(5)]
    expected = [0.5] + [0.5 * (1 + math.cos(math.pi * k / 4)) for k in range(4)]
    assert rates == pytest.approx(expected)
    assert cosine_learning_rate(0.1, 0, 1) == pytest.approx(0.1)  # one epoch: the base rate


def test_label_smoothing_loss_is_the_same_in_both_frameworks():
    """On a fixed batch the smoothed loss equals the hand formula in Keras and PyTorch."""
    import keras
    import torch

    from pokedex_trainer.backends.keras.trainer import SmoothedSparseCrossentropy

    logits = np.array([[2.0, 0.5, -1.0], [0.1, 0.2, 3.0]], dtype=np.float32)
    labels = np.array([0, 1])
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    target = np.full((2, 3), 0.1 / 3)
    target[np.arange(2), labels] += 0.9
    expected = float(np.mean(-(target * np.log(probs)).sum(axis=1)))
    keras_loss = SmoothedSparseCrossentropy(3, 0.1)(labels, keras.ops.convert_to_tensor(probs))
    torch_loss = torch.nn.CrossEntropyLoss(label_smoothing=0.1)(torch.tensor(logits),
                                                                torch.tensor(labels))
    assert float(keras.ops.convert_to_numpy(keras_loss)) == pytest.approx(expected, rel=1e-5)
    assert float(torch_loss) == pytest.approx(expected, rel=1e-5)


def test_adamw_decays_the_same_in_both_frameworks():
    """With a zero gradient AdamW only decays: w <- w (1 - lr wd), in Keras and PyTorch."""
    import keras
    import torch

    from pokedex_trainer.backends.keras.trainer import make_optimizer as keras_optimizer
    from pokedex_trainer.backends.torch.runner import make_optimizer as torch_optimizer

    config = TrainConfig(optimizer="adamw", weight_decay=0.1)
    variable = keras.Variable(np.ones(3, dtype=np.float32))
    keras_optimizer(config, 0.5).apply_gradients([(keras.ops.zeros(3), variable)])
    param = torch.nn.Parameter(torch.ones(3))
    optimizer = torch_optimizer(config, [param], 0.5)
    param.grad = torch.zeros(3)
    optimizer.step()
    assert keras.ops.convert_to_numpy(variable) == pytest.approx([0.95] * 3)
    assert param.detach().numpy() == pytest.approx([0.95] * 3)


def test_weight_average_differs_from_the_weights_and_swaps_back():
    """--ema: the average follows avg = d avg + (1 - d) w after each step (the first step
    copies), in PyTorch's WeightAverage and Keras' optimizer; swapping twice restores."""
    import keras
    import torch

    from pokedex_trainer.backends.keras.trainer import make_optimizer
    from pokedex_trainer.backends.torch.runner import WeightAverage

    config = TrainConfig(ema=0.9)
    param = torch.nn.Parameter(torch.zeros(2))
    average = WeightAverage([param], 0.9)
    for value in (1.0, 2.0, 3.0):
        with torch.no_grad():
            param.fill_(value)
        average.update()
    expected = (0.9 * 1.0 + 0.1 * 2.0) * 0.9 + 0.1 * 3.0
    assert float(average.shadow[0][0]) == pytest.approx(expected)
    average.swap()
    assert float(param.detach()[0]) == pytest.approx(expected)
    assert float(average.shadow[0][0]) == 3.0
    average.swap()
    assert float(param.detach()[0]) == 3.0
    variable = keras.Variable(np.zeros(2, dtype=np.float32))
    optimizer = make_optimizer(config, 0.1)
    for _ in range(3):
        optimizer.apply_gradients([(keras.ops.ones(2), variable)])
    weights = keras.ops.convert_to_numpy(variable)
    averaged = keras.ops.convert_to_numpy(optimizer._model_variables_moving_average[0])
    assert not np.allclose(weights, averaged)


def _history_rates(run_dir: Path) -> list[float]:
    with open(run_dir / "history.csv", encoding="utf-8", newline="") as handle:
        return [float(row["learning_rate"]) for row in csv.DictReader(handle)]


RECIPE = ("--lr_schedule", "cosine", "--warmup_epochs", "1", "--label_smoothing", "0.1",
          "--optimizer", "adamw", "--weight_decay", "0.05", "--ema", "0.9", "--augment_warmup",
          "2", "--epochs", "3", "--fine_tune_epochs", "2", "--learning_rate", "0.01",
          "--fine_tune_learning_rate", "0.001", "--min_lr", "0")


@pytest.mark.parametrize("model_type", [
    "tiny_torch", pytest.param("tiny_keras", marks=pytest.mark.slow)])
def test_every_recipe_option_trains_and_is_recorded(tiny_dataset, tmp_path, model_type):
    """Every option through the real trainer: the cosine rates of both phases in history.csv,
    the options in config.json and experiments.csv; the run evaluates."""
    run = train_tiny_run(tiny_dataset, tmp_path, model_type, *RECIPE)
    expected = [cosine_learning_rate(0.01, e, 3, 1, 0.0) for e in range(3)] + \
        [cosine_learning_rate(0.001, e, 2, 1, 0.0) for e in range(2)]
    assert _history_rates(run) == pytest.approx(expected)
    config = json.loads((run / "config.json").read_text("utf-8"))
    assert (config["optimizer"], config["ema"], config["label_smoothing"],
            config["augment"], config["augment_warmup"]) == ("adamw", 0.9, 0.1, "full", 2)
    with open(tmp_path / "runs" / "experiments.csv", encoding="utf-8", newline="") as handle:
        row = next(csv.DictReader(handle))
    assert (row["lr_schedule"], row["optimizer"], row["ema"]) == ("cosine", "adamw", "0.9")
    summary = json.loads((run / "summary.json").read_text("utf-8"))
    assert summary["status"] == "completed" and summary["test_accuracy"] != ""


def test_old_runs_read_with_the_new_options(tmp_path):
    """config.json written before --augment had levels: true is full, false none."""
    for old, new in ((True, "full"), (False, "none")):
        path = tmp_path / "config.json"
        saved = TrainConfig(model_type="mobilenet").to_dict()
        path.write_text(json.dumps({**saved, "augment": old}), "utf-8")
        assert RunStore(tmp_path).saved_config().augment == new
    from pokedex_trainer.cli.parsers import parse_train_args

    assert parse_train_args(["--no_augment"]).augment == "none"
    assert parse_train_args(["--augment", "light"]).augment == "light"


GUIDE = TrainConfig()


@pytest.mark.parametrize("model_type", ["mobilenet", "resnet", "tiny_keras", "tiny_torch"])
def test_from_scratch_defaults_fill_only_the_options_left_out(model_type):
    """--weights none takes the measured recipe, in the Keras and the PyTorch networks alike;
    an ImageNet run takes the transfer recipe, a base model and --recipe guide the guide's
    values; a given option always wins, even when it is the guide's value."""
    from pokedex_trainer.cli.parsers import parse_train_command
    from pokedex_trainer.config import SCRATCH_DEFAULTS, TRANSFER_DEFAULTS

    assert any(getattr(GUIDE, name) != value for name, value in SCRATCH_DEFAULTS.items())
    scratch, actions = parse_train_command(["--model_type", model_type, "--weights", "none"])
    assert {name: getattr(scratch, name) for name in SCRATCH_DEFAULTS} == SCRATCH_DEFAULTS
    assert actions.recipe_defaults == {name: value for name, value in
                                          SCRATCH_DEFAULTS.items()
                                          if getattr(GUIDE, name) != value}
    transfer, actions = parse_train_command(["--model_type", model_type])
    assert transfer.recipe_name() == "transfer"
    assert {name: getattr(transfer, name) for name in TRANSFER_DEFAULTS} == TRANSFER_DEFAULTS
    assert actions.recipe_defaults == {name: value for name, value in
                                          TRANSFER_DEFAULTS.items()
                                          if getattr(GUIDE, name) != value}
    every = {**SCRATCH_DEFAULTS, **TRANSFER_DEFAULTS}
    for argv in (["--model_type", model_type, "--weights", "none", "--base_model", "b.keras"],
                 ["--model_type", model_type, "--weights", "none", "--recipe", "guide"],
                 ["--model_type", model_type, "--recipe", "guide"]):
        config, actions = parse_train_command(argv)
        assert config.recipe_name() == "guide"
        assert all(getattr(config, name) == getattr(GUIDE, name) for name in every)
        assert actions.recipe_defaults == {}
    for name in SCRATCH_DEFAULTS:  # the guide's value, given: kept
        argv = ["--model_type", model_type, "--weights", "none", f"--{name}",
                str(getattr(GUIDE, name))]
        config = parse_train_command(argv)[0]
        assert getattr(config, name) == getattr(GUIDE, name)
        others = [other for other in SCRATCH_DEFAULTS if other != name]
        assert {o: getattr(config, o) for o in others} == {o: SCRATCH_DEFAULTS[o] for o in others}


def test_options_that_need_the_guides_value_keep_it_from_scratch():
    """--augment_warmup means full augmentation, --lr_patience / --lr_factor the plateau
    schedule, --no_augment none: the from-scratch recipe does not undo what they ask for."""
    from pokedex_trainer.cli.parsers import parse_train_command

    scratch = ["--weights", "none"]
    assert parse_train_command(scratch + ["--augment_warmup", "2"])[0].augment == "full"
    assert parse_train_command(scratch + ["--lr_patience", "2"])[0].lr_schedule == "plateau"
    assert parse_train_command(scratch + ["--lr_factor", "0.5"])[0].lr_schedule == "plateau"
    assert parse_train_command(scratch + ["--no_augment"])[0].augment == "none"


def test_the_python_api_takes_the_same_from_scratch_defaults():
    from pokedex_trainer.api import MobileNetV2Trainer, ResNet152Trainer
    from pokedex_trainer.cli.parsers import parse_train_command

    for cls, model_type in ((MobileNetV2Trainer, "mobilenet"), (ResNet152Trainer, "resnet")):
        expected = parse_train_command(["--model_type", model_type, "--weights", "none"])[0]
        assert cls(weights="none").config == expected
        assert cls(weights="none", augment="full").config.augment == "full"


def test_a_from_scratch_run_records_the_recipe_it_took(tiny_dataset, tmp_path, caplog):
    """config.json holds the values the run trained with, and the console says where they
    came from."""
    from pokedex_trainer.config import SCRATCH_DEFAULTS

    with caplog.at_level("INFO", logger="pokedex_trainer.cli.commands"):
        run = train_tiny_run(tiny_dataset, tmp_path, "tiny_torch", "--epochs", "1")
    config = json.loads((run / "config.json").read_text("utf-8"))
    assert {name: config[name] for name in SCRATCH_DEFAULTS} == SCRATCH_DEFAULTS
    assert "recipe: scratch (--weights none: the from-scratch recipe); it sets --augment" in \
        caplog.text


def test_the_embedded_demo_is_what_the_generator_writes(tmp_path):
    """data/demo is reproducible from its documented command: the same classes, the same
    files, byte for byte; another seed draws other images of the same classes."""
    import hashlib

    from pokedex_trainer.data.synthetic import DEMO_CLASSES, DEMO_PATTERNS, main

    demo = Path(__file__).resolve().parents[2] / "data" / "demo"
    main([str(tmp_path / "demo")])

    def digests(root):
        return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(root.rglob("*.jpg"))}

    written = digests(tmp_path / "demo")
    assert len(written) == 6 * 150 and written == digests(demo)
    assert sorted(p.name for p in demo.iterdir()) == sorted(DEMO_CLASSES)
    assert len(set(DEMO_PATTERNS)) == len(DEMO_CLASSES)
    main([str(tmp_path / "other"), "--per_class", "2", "--seed", "1"])
    other = digests(tmp_path / "other")
    assert len(other) == 12 and not set(other.values()) & set(written.values())


def test_the_log_says_which_recipe_runs_and_why(caplog):
    """Issue 35: the first lines of a run name its recipe, the reason, and what it set."""
    from pokedex_trainer.cli.commands import log_recipe
    from pokedex_trainer.cli.parsers import parse_train_command

    cases = [(["--model_type", "mobilenet"],
              "recipe: transfer (weights to start from: the transfer recipe); it sets "
              "--augment light --fine_tune_layers all"),
             (["--model_type", "mobilenet", "--augment", "full"],
              "recipe: transfer (weights to start from: the transfer recipe); it sets "
              "--fine_tune_layers all"),
             (["--model_type", "mobilenet", "--recipe", "guide"],
              "recipe: guide (--recipe guide: the guide's values for every option you leave "
              "out)"),
             (["--model_type", "mobilenet", "--weights", "none"],
              "recipe: scratch (--weights none: the from-scratch recipe); it sets --augment "
              "light --lr_schedule cosine --label_smoothing 0.1"),
             (["--model_type", "mobilenet", "--base_model", "b.keras"],
              "recipe: guide (--base_model: the guide's values for every option you leave "
              "out)")]
    for argv, line in cases:
        caplog.clear()
        config, actions = parse_train_command(argv)
        with caplog.at_level("INFO", logger="pokedex_trainer.cli.commands"):
            log_recipe(config, actions.recipe_defaults)
        assert caplog.messages[-1].startswith(line), (argv, caplog.messages)
    caplog.clear()
    config, actions = parse_train_command(["--model_type", "mobilenet", "--augment", "full",
                                           "--fine_tune_layers", "50"])
    with caplog.at_level("INFO", logger="pokedex_trainer.cli.commands"):
        log_recipe(config, actions.recipe_defaults)
    assert "it sets" not in caplog.messages[-1]
