"""The Python API: the guide's trainer classes, over the command line's own code path."""

import inspect
import subprocess
import sys

import pytest

from conftest import ROOT
from pokedex_trainer.runs import live_log
from pokedex_trainer.api import Trainer, option_defaults
from pokedex_trainer.cli.parsers import build_train_parser, parse_train_command
from pokedex_trainer.errors import UserError
from train_professional_models import EfficientNetTrainer, MobileNetV2Trainer, ResNet152Trainer

CLASSES = {EfficientNetTrainer: "efficientnet", ResNet152Trainer: "resnet",
           MobileNetV2Trainer: "mobilenet"}


def _cli_options() -> dict:
    """Every option of train_professional_models.py --help and its default, read from the
    parser's own actions (a new option shows up here by itself)."""
    options = {}
    for action in build_train_parser()._actions:
        if "--help" in action.option_strings:
            continue
        default = False if action.nargs == 0 else action.default
        options[action.option_strings[0].lstrip("-")] = default
    return options


def test_keyword_arguments_are_the_command_lines_options_with_its_defaults():
    cli = _cli_options()
    assert len(cli) > 30 and option_defaults(build_train_parser()) == cli
    generic = inspect.signature(Trainer).parameters
    assert {n: p.default for n, p in generic.items()} == cli
    for cls, model_type in CLASSES.items():
        parameters = inspect.signature(cls).parameters
        assert {n: p.default for n, p in parameters.items()} == \
            {n: d for n, d in cli.items() if n != "model_type"}
        assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in parameters.values())
        assert cls().config.model_type == model_type


def test_keyword_arguments_give_the_configuration_of_the_same_command_line():
    trainer = MobileNetV2Trainer(data_path="data/demo", image_size=(64, 64), batch_size="auto",
                                 no_augment=True, mixed_precision=True, export="tflite",
                                 learning_rate=0.0005, run_name="León")
    config, actions = parse_train_command(
        ["--model_type", "mobilenet", "--data_path", "data/demo", "--image_size", "64", "64",
         "--batch_size", "auto", "--no_augment", "--mixed_precision", "--export", "tflite",
         "--learning_rate", "0.0005", "--run_name", "León"])
    assert trainer.config == config and trainer.actions == actions
    assert Trainer(model_type="resnet", export=True).actions.export == "all"


@pytest.mark.parametrize("options,expected", [
    ({"epoch": 3}, "unknown option 'epoch'"),
    ({"epochs": "many"}, "argument --epochs: invalid int value: 'many'"),
    ({"keras_backend": "theano"}, "argument --keras_backend: invalid choice"),
    ({"model_type": "resnet"}, "MobileNetV2Trainer trains --model_type mobilenet"),
])
def test_bad_options_raise_user_error_instead_of_exiting(options, expected):
    with pytest.raises(UserError, match=expected):
        MobileNetV2Trainer(**options)


def test_switches_follow_truth_and_evaluate_stays_one_run(tmp_path):
    """no_augment=0 is off, deterministic=1 on; evaluate() with another job's option says
    which call does it; a script without the __main__ guard is told before training."""
    assert MobileNetV2Trainer(no_augment=0).config.augment == \
        MobileNetV2Trainer().config.augment == "light"  # the transfer recipe's, not none
    assert MobileNetV2Trainer(deterministic=1).config.deterministic is True
    trainer = MobileNetV2Trainer()
    with pytest.raises(UserError, match="use predict"):
        trainer.evaluate(run_dir=str(tmp_path), predict=str(tmp_path))
    script = tmp_path / "unguarded.py"
    script.write_text(f"import sys; sys.path.insert(0, {str(ROOT)!r})\n"
                      "from train_professional_models import Trainer\n"
                      "Trainer(model_type='mobilenet', workers=1).train()\n", encoding="utf-8")
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                            timeout=120, cwd=tmp_path)
    assert "unguarded.py calls train() outside" in result.stderr
    assert not (tmp_path / "model").exists()


def test_evaluate_before_train_says_what_to_do():
    with pytest.raises(UserError, match=r"call train\(\) first"):
        ResNet152Trainer().evaluate()


def test_importing_the_script_loads_no_framework(tmp_path):
    code = ("import sys; sys.path.insert(0, {root!r})\n"
            "from train_professional_models import EfficientNetTrainer, ResNet152Trainer\n"
            "EfficientNetTrainer(epochs=2); ResNet152Trainer(image_size=(224, 224))\n"
            "print('HEAVY', [m for m in ('tensorflow', 'torch', 'keras', 'jax') "
            "if m in sys.modules])").format(root=str(ROOT))
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                            text=True, timeout=120)
    assert "HEAVY []" in result.stdout, result.stderr[-2000:]


def test_a_tiny_run_trains_evaluates_and_predicts_from_python(tiny_dataset, tmp_path,
                                                              monkeypatch):
    """The guide's flow in a notebook, and the live log that follows it."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(live_log.ENVIRONMENT, raising=False)
    trainer = Trainer(model_type="tiny_torch", data_path=str(tiny_dataset), weights="none",
                      image_size=(32, 32), batch_size=8, epochs=2, fine_tune_epochs=1,
                      workers=0, histogram_freq=0, output_dir="runs", log_dir="tb",
                      run_name="notebook")
    run_dir = trainer.train()
    assert run_dir == trainer.run_dir and (run_dir / "tiny_torch_best.pth").is_file()
    metrics = trainer.evaluate(latency_runs=1, latency_batch=4)
    assert 0 <= metrics["accuracy"] <= 1 and len(metrics["confusion_matrix"]) == 3
    rows = trainer.predict(tiny_dataset / "León" / sorted((tiny_dataset / "León").iterdir())[0],
                           top_k=2)
    assert len(rows) == 1 and len(rows[0]["top_classes"]) == 2
    lines = (tmp_path / "training.log").read_text(encoding="utf-8").splitlines()
    assert lines[0] == live_log.HEADER.strip()
    assert all(line.startswith("[notebook] ") for line in lines[1:])
    assert any("epoch 3 (fine_tune)" in line for line in lines)
    assert lines[-1] == "[notebook] run ended: completed"


@pytest.mark.slow
# EfficientNetB7 exports as a SavedModel here: its tf2onnx conversion alone takes more than
# 20 GB of RAM in a process that also holds the trained model (the 2-core reference machine).
@pytest.mark.parametrize("cls,formats", [(MobileNetV2Trainer, "onnx"),
                                         (ResNet152Trainer, "torchscript"),
                                         (EfficientNetTrainer, "savedmodel")])
def test_each_guide_class_trains_evaluates_and_exports_its_network(cls, formats, tiny_dataset,
                                                                   tmp_path):
    trainer = cls(data_path=str(tiny_dataset), weights="none", image_size=(32, 32),
                  batch_size=8, epochs=1, fine_tune_epochs=0, workers=0, histogram_freq=0,
                  output_dir=str(tmp_path / "runs"), log_dir=str(tmp_path / "tb"))
    run_dir = trainer.train()
    assert run_dir.parent == tmp_path / "runs"
    assert 0 <= trainer.evaluate(latency_runs=1, latency_batch=2)["accuracy"] <= 1
    files = trainer.export(formats=formats, check_images=6, calibration_images=6)
    assert [f["format"] for f in files] == [formats] and all(f["passed"] for f in files)


def test_train_refuses_to_run_inside_a_worker_importing_the_script(monkeypatch):
    """A script without the __main__ guard: each data-loading worker would train again."""
    import multiprocessing

    monkeypatch.setattr(multiprocessing.current_process(), "_inheriting", True, raising=False)
    with pytest.raises(UserError, match='if __name__ == "__main__"'):
        Trainer(model_type="tiny_torch").train()
