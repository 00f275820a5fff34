"""A PyTorch network to TFLite through litert-torch (the app's file, from ``--framework
pytorch``), checked in LiteRT like the Keras one.

litert-torch is optional: it is not in requirements.txt because its dependencies (jax,
transformers, pinned typing_extensions and pydantic) would replace packages of the training
environment. Without it, asking a PyTorch model for TFLite is a one-line error that says how
to get it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from pokedex_trainer.errors import UserError

INSTALL_HINT = ("TFLite from a PyTorch model needs litert-torch, which is not installed: "
                "'python -m pip install -r requirements-tflite.txt' (best in its own virtual "
                "environment: it pins typing_extensions and pydantic; see docs/export.md), or "
                "train with --framework keras for the app's TFLite; the formats for it without "
                "litert-torch are: {formats}")


def litert_torch_available() -> bool:
    return importlib.util.find_spec("litert_torch") is not None


def checked_format(available: tuple[str, ...]) -> tuple[str, ...]:
    """("tflite",), the format a PyTorch model gains with litert-torch; UserError (one line,
    naming the ``available`` formats) when litert-torch is missing."""
    if not litert_torch_available():
        raise UserError(INSTALL_HINT.format(formats=", ".join(available)))
    return ("tflite",)


def write_tflite(classifier, image_size, path: Path, sidecar: dict) -> Path:
    """Float32 TFLite taking (N, H, W, 3) RGB 0..255, the layout the app feeds every TFLite
    file; ``sidecar`` is updated to say so."""
    import tempfile

    import litert_torch
    import torch

    from pokedex_trainer.user_io.atomic import atomic_write_bytes
    from pokedex_trainer.exporters.metadata import add_tflite_metadata
    from pokedex_trainer.exporters.quiet import quiet_converters
    from pokedex_trainer.exporters.torch_formats import ProbabilityModel

    class ChannelsLast(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, x):
            return self.model(x.permute(0, 3, 1, 2))

    module = ChannelsLast(ProbabilityModel(classifier)).eval()
    example = torch.rand(1, *image_size, 3, generator=torch.Generator().manual_seed(0)) * 255.0
    with quiet_converters():
        edge = litert_torch.convert(module, (example,))
    sidecar["input"]["layout"] = "NHWC"
    with tempfile.TemporaryDirectory(prefix="pokedex_tflite_") as folder:
        edge.export(str(Path(folder) / "model.tflite"))
        flatbuffer = (Path(folder) / "model.tflite").read_bytes()
    # the sidecar inside the file too, as in the Keras TFLite (metadata "pokedex_ultra")
    atomic_write_bytes(path, add_tflite_metadata(flatbuffer, sidecar))
    return path
