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
    pinned = (config.keras_backend != "auto" or os.environ.get("KERAS_BACKEND") in select.BACKENDS
              or config.weights.lower() not in ("imagenet", "none") or config.base_model)
    if guide != "keras" or pinned:  # a Keras backend, weights or base model of Keras's asked
        return guide, None
    probe, maybe_gpu = probe or select.probe, maybe_gpu or select.maybe_gpu
    if not maybe_gpu() or probe("tensorflow") or not probe("torch"):
        return guide, None
    name = MODEL_SPECS[config.model_type].display_name
    return "pytorch", (f"--framework auto: {name} trains as torchvision's {name} on PyTorch, "
                       f"because TensorFlow sees no GPU and PyTorch does ({MEASURED}); "
                       "--framework keras keeps the guide's Keras network (TFLite from PyTorch "
                       "needs: python -m pip install litert-torch)")
