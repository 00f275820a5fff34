"""The seed's command lines parse to the documented configuration; --help stays light."""

import subprocess
import sys

import pytest

from pokedex_trainer.cli.parsers import parse_train_args
from conftest import ROOT

SEED_COMMANDS = {
    "efficientnet": "--data_path data/training --model_type efficientnet --epochs 50 "
                    "--batch_size 16 --learning_rate 0.001 --image_size 600 600",
    "efficientnet_advanced": "--data_path data/training --model_type efficientnet --epochs 100 "
                             "--batch_size 8 --learning_rate 0.0005 --image_size 800 800",
    "resnet": "--data_path data/training --model_type resnet --epochs 50 --batch_size 32 "
              "--learning_rate 0.001 --image_size 224 224",
    "mobilenet": "--data_path data/training --model_type mobilenet --epochs 40 --batch_size 64 "
                 "--learning_rate 0.001 --image_size 224 224",
}


@pytest.mark.parametrize("name", sorted(SEED_COMMANDS))
def test_seed_commands_parse(name):
    config = parse_train_args(SEED_COMMANDS[name].split()).resolved()
    args = SEED_COMMANDS[name].split()
    assert config.model_type == args[args.index("--model_type") + 1]
    assert config.epochs == int(args[args.index("--epochs") + 1])
    assert config.batch_size == int(args[args.index("--batch_size") + 1])
    assert config.learning_rate == float(args[args.index("--learning_rate") + 1])
    size = int(args[args.index("--image_size") + 1])
    assert config.image_size == (size, size)
    assert config.data_path == "data/training"


@pytest.mark.parametrize("model_type,size,batch", [
    ("efficientnet", (600, 600), 16), ("mobilenet", (224, 224), 64), ("resnet", (224, 224), 32)])
def test_model_defaults_when_flags_are_omitted(model_type, size, batch):
    config = parse_train_args(["--model_type", model_type]).resolved()
    assert config.image_size == size and config.batch_size == batch
    # from ImageNet weights: the transfer recipe (docs/training.md)
    assert (config.epochs, config.fine_tune_epochs, config.fine_tune_layers) == (50, 30, "all")
    assert config.augment == "light"
    # --recipe guide: exactly the guide's options, as before the recipe existed
    import dataclasses

    from pokedex_trainer.config import TrainConfig

    guide = parse_train_args(["--model_type", model_type, "--recipe", "guide"])
    assert dataclasses.replace(guide, recipe="auto") == TrainConfig(model_type=model_type)
    assert (guide.fine_tune_layers, guide.augment) == (50, "full")
    assert config.fine_tune_learning_rate == 0.0001
    assert (config.patience, config.lr_patience) == (10, 5)
    assert config.weights == "imagenet"
    assert config.output_dir == "model/ultra"
    assert config.log_dir == "data/logs_ultra/tensorboard"


def test_fine_tune_epochs_zero_skips_phase_two():
    from pokedex_trainer.core.phases import plan_phases

    config = parse_train_args(["--model_type", "mobilenet", "--fine_tune_epochs", "0"]).resolved()
    assert [p.name for p in plan_phases(config)] == ["head"]


def test_help_imports_no_framework():
    code = ("import sys, runpy; sys.argv = ['train_professional_models.py', '--help'];\n"
            "try:\n runpy.run_path('train_professional_models.py', run_name='__main__')\n"
            "except SystemExit: pass\n"
            "heavy = [m for m in ('tensorflow', 'torch', 'keras') if m in sys.modules]\n"
            "print('HEAVY', heavy)")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, check=True)
    assert "--fine_tune_learning_rate" in result.stdout
    assert "HEAVY []" in result.stdout


def test_bad_flag_value_is_a_one_line_error():
    result = subprocess.run([sys.executable, "train_professional_models.py", "--model_type",
                             "mobilenet", "--image_size", "16", "16"], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: --image_size 16 16 is too small for MobileNetV2: each side must be at least "
        "32 px"]
