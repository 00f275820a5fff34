"""A PyTorch network to TFLite through litert-torch (the app's file, from ``--framework
pytorch``), checked in LiteRT like the Keras one.

litert-torch is not in requirements.txt: its dependencies (jax, transformers, pinned
typing_extensions and pydantic) would replace packages of the training environment. Where it
is importable here, it converts in this process; elsewhere (the README's one install) the
conversion runs in an environment of its own that export.py makes once (tflite_env.py).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from pokedex_trainer.errors import UserError

INSTALL_HINT = ("TFLite from a PyTorch model needs litert-torch (made for you in its own "
                "environment when the package registry is reachable; see docs/export.md), or "
                "train with --framework keras for the app's TFLite; the formats for it without "
                "litert-torch are: {formats}")


def litert_torch_available() -> bool:
    return importlib.util.find_spec("litert_torch") is not None


def checked_format(available: tuple[str, ...]) -> tuple[str, ...]:
    """("tflite",), the format a PyTorch model gains with litert-torch: here, or in its own
    environment, made now, before any export (UserError, one line, when it cannot be)."""
    if not litert_torch_available():
        from pokedex_trainer.exporters.tflite_env import ensure_env

        try:
            ensure_env()
        except UserError as exc:
            raise UserError(f"{exc}; {INSTALL_HINT.format(formats=', '.join(available))}"
                            ) from None
    return ("tflite",)


def write_tflite(classifier, image_size, path: Path, sidecar: dict, graph=None) -> Path:
    """Float32 TFLite taking (N, H, W, 3) RGB 0..255, the layout the app feeds every TFLite
    file; ``sidecar`` is updated to say so."""
    import tempfile

    import torch

    from pokedex_trainer.user_io.atomic import atomic_write_bytes
    from pokedex_trainer.exporters.metadata import add_tflite_metadata
    from pokedex_trainer.exporters.quiet import quiet_converters
    from pokedex_trainer.exporters.torch_formats import ProbabilityModel, known_score_module

    class ChannelsLast(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, x):
            return self.model(x.permute(0, 3, 1, 2))

    module = ChannelsLast(ProbabilityModel(classifier, known_score_module(graph))).eval()
    example = torch.rand(1, *image_size, 3, generator=torch.Generator().manual_seed(0)) * 255.0
    sidecar["input"]["layout"] = "NHWC"
    with tempfile.TemporaryDirectory(prefix="pokedex_tflite_") as folder:
        target = Path(folder) / "model.tflite"
        if litert_torch_available():
            import litert_torch

            with quiet_converters():
                litert_torch.convert(module, (example,)).export(str(target))
        else:  # in litert-torch's own environment, on the same program
            from pokedex_trainer.exporters.tflite_env import convert_in_env

            program = Path(folder) / "model.pt2"
            with quiet_converters():
                torch.export.save(torch.export.export(module, (example,)), str(program))
            convert_in_env(program, tuple(example.shape), target)
        flatbuffer = target.read_bytes()
    # the sidecar inside the file too, as in the Keras TFLite (metadata "pokedex_ultra")
    atomic_write_bytes(path, add_tflite_metadata(flatbuffer, sidecar))
    return path
