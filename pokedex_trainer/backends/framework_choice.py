"""``--framework auto`` for a run that trains: the guide's pairing where it reaches the GPU at
speed, the PyTorch route of the same network where it does not.

Measured on one H200 (issue #23: PyTorch 2.11, JAX 0.11, Keras 3.15 and no TensorFlow, which is
what native Windows gets too): against a bare PyTorch step of the same torchvision network,
Keras on PyTorch trained EfficientNetB7 at 0.19x and MobileNetV2 at under 0.01x (eager), Keras
on JAX MobileNetV2 at 0.25x. So where TensorFlow sees no GPU and PyTorch sees one, a Keras
network trains as its torchvision twin, and the run says so in one line; ``--framework keras``
keeps the guide's network. Where TensorFlow sees the GPU, or there is no GPU at all, the guide's
pairing stands. The probes run in child processes (backends/keras/select.py).
"""

from __future__ import annotations

import os
from pathlib import Path

from pokedex_trainer.errors import UserError

MEASURED = ("Keras without TensorFlow's GPU measured 0.19x (EfficientNetB7, Keras on PyTorch), "
            "0.25x (MobileNetV2, Keras on JAX) and under 0.01x (MobileNetV2, Keras on PyTorch) "
            "of a bare PyTorch step on an H200")


def pick_training_framework(config, probe=None, maybe_gpu=None) -> tuple[str, str | None]:
    """(keras or pytorch, a note for the run's log or None) for a new run whose ``--framework``
    is auto. ``probe(backend)`` / ``maybe_gpu()``: keras_backend.select's, replaceable in tests.
    """
    from pokedex_trainer.backends.keras import select
    from pokedex_trainer.networks import MODEL_SPECS, choose_framework

    guide = choose_framework(config.model_type)
    from_file = weights_file_framework(config.weights)
    if from_file:  # a local weights file belongs to one framework
        name = MODEL_SPECS[config.model_type].display_name
        return from_file, (None if from_file == guide else
                           f"--framework auto: {name} trains on {FRAMEWORK_NAMES[from_file]}, "
                           f"the framework of --weights '{config.weights}'")
    pinned = config.keras_backend != "auto" or os.environ.get("KERAS_BACKEND") in select.BACKENDS
    if guide != "keras" or pinned:  # a Keras backend asked for
        return guide, None
    probe, maybe_gpu = probe or select.probe, maybe_gpu or select.maybe_gpu
    if not maybe_gpu() or probe("tensorflow") or not probe("torch"):
        return guide, None
    name = MODEL_SPECS[config.model_type].display_name
    return "pytorch", (f"--framework auto: {name} trains as torchvision's {name} on PyTorch, "
                       f"because TensorFlow sees no GPU and PyTorch does ({MEASURED}); "
                       "--framework keras keeps the guide's Keras network (TFLite from PyTorch "
                       "needs litert-torch: see docs/export.md)")


FRAMEWORK_NAMES = {"keras": "Keras", "pytorch": "PyTorch"}
# A local --weights file's framework, by its name: torch.save's files, Keras' weight files.
WEIGHTS_FILE_FRAMEWORKS = {".pth": "pytorch", ".pt": "pytorch", ".h5": "keras", ".keras": "keras"}


def weights_file_framework(weights: str) -> str | None:
    """keras or pytorch for a ``--weights`` file whose suffix names its framework, else None
    (imagenet, none, or a name that says nothing)."""
    if weights.lower() in ("imagenet", "none"):
        return None
    return WEIGHTS_FILE_FRAMEWORKS.get(Path(weights).suffix.lower())


def check_framework_options(config) -> None:
    """A new run's options that only one framework reads must match the framework it resolved
    to (``config.framework``: keras or pytorch): one UserError line when they do not."""
    from pokedex_trainer.networks import framework_option

    spec = config.spec
    framework = framework_option(spec.framework)
    if config.keras_backend != "auto" and framework != "keras":
        raise UserError(f"--keras_backend {config.keras_backend} is for networks trained on "
                        f"Keras, and {spec.display_name} trains on PyTorch here: add "
                        "--framework keras to train it on Keras, or leave --keras_backend out")
    from_file = weights_file_framework(config.weights)
    if from_file and from_file != framework:
        kind = ("a PyTorch state dict" if from_file == "pytorch" else "a Keras weights file")
        raise UserError(f"--framework {framework} does not match --weights '{config.weights}', "
                        f"{kind}: use --framework {from_file}, or a weights file of "
                        f"{FRAMEWORK_NAMES[framework]} ("
                        f"{'.pth' if framework == 'pytorch' else '.weights.h5'})")
