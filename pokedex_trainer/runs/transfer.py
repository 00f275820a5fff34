"""``--base_model``: start a new run from a model this tool trained before (the guide's
"transfer learning avanzado"): its backbone is kept, its classification head is replaced.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

from pokedex_trainer.errors import UserError
from pokedex_trainer.networks import all_specs


@dataclass
class BaseModel:
    """What a new run needs to know about its base model before loading any framework."""

    path: Path
    model_type: str
    image_size: tuple[int, int]
    num_classes: int
    framework: str = "auto"  # keras or pytorch (--framework's words)


def describe_base_model(path: str | Path) -> BaseModel:
    """Read the network, input size and class count of a ``.keras`` or ``.pth`` of this tool.

    Raises UserError for a missing file or a file this tool did not write.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--base_model '{path}' does not exist")
    suffix = path.suffix.lower()
    if suffix == ".keras":
        return _describe_keras(path)
    if suffix == ".pth":
        return _describe_torch(path)
    raise UserError(f"--base_model '{path}': expected a model this tool trained, "
                    "<arch>_best.keras or <arch>_best.pth")


def _describe_keras(path: Path) -> BaseModel:
    """From the .keras archive's config.json: no TensorFlow needed."""
    try:
        with zipfile.ZipFile(path) as archive:
            config = json.loads(archive.read("config.json"))["config"]
        spec = next(s for s in all_specs()
                    if s.framework == "keras" and s.arch == config["name"])
        shape = config["layers"][0]["config"]["batch_shape"]
        head = next(layer for layer in config["layers"] if layer["name"] == "predictions")
        return BaseModel(path, spec.model_type, (int(shape[1]), int(shape[2])),
                         int(head["config"]["units"]), "keras")
    except (zipfile.BadZipFile, KeyError, StopIteration, ValueError, TypeError, IndexError):
        raise UserError(f"--base_model '{path}' is not a model this tool trained (expected a "
                        "Keras network of this tool with its 'predictions' head)") from None


def _describe_torch(path: Path) -> BaseModel:
    import torch

    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        return BaseModel(path, payload["model_type"], tuple(payload["image_size"]),
                         len(payload["class_names"]), "pytorch")
    except Exception:
        raise UserError(f"--base_model '{path}' is not a checkpoint this tool wrote "
                        "(<arch>_best.pth)") from None


def feature_extractor(model_file: str | Path):
    """A saved model of this tool without its classifier: RGB pixels 0..255 in (the model's
    own image size), the pooled backbone features its classifier reads out (one vector per
    image). What the guide's ``base_model.layers[-4].output`` was after; here the layer is
    named: ``avg_pool`` in Keras (then ``head_dropout`` and ``predictions``), the backbone's
    output in PyTorch (then ``dropout`` and ``head``).

    Returns a ``keras.Model`` for a ``.keras`` file, an ``nn.Module`` in eval mode for a
    ``.pth``. Both files are opened safely (no code from the file runs).
    """
    path = Path(model_file)
    if not path.is_file():
        raise UserError(f"model '{path}' does not exist")
    describe_base_model(path)  # UserError for a file this tool did not write
    if path.suffix.lower() == ".pth":
        from torch import nn

        from pokedex_trainer.backends.torch.torch_networks import load_checkpoint

        model, _ = load_checkpoint(path)
        return nn.Sequential(model.normalize, model.backbone).eval()
    import keras

    from pokedex_trainer.backends.keras.keras_networks import POOLING_NAME

    model = keras.models.load_model(path, compile=False, safe_mode=True)
    return keras.Model(model.input, model.get_layer(POOLING_NAME).output,
                       name=f"{model.name}_features")
