"""Files of tensors read without running code: checkpoints, resume states, --weights state dicts."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from pokedex_trainer.errors import UserError, reason_line


def load_backbone_file(model: nn.Module, path: Path, network: str) -> None:
    """Load a torchvision state dict of ``network`` (its classifier, fc or classifier, may be
    absent); never executes code."""
    try:
        state = load_tensors(path)
    except Exception as exc:
        raise UserError(f"could not read --weights '{path}' as a PyTorch state dict: "
                        f"{why_not_tensors(exc)}") from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise UserError(f"--weights '{path}' does not hold a state dict")
    state = {k.removeprefix("backbone."): v for k, v in state.items()
             if not k.startswith(("fc.", "classifier.", "head.", "normalize."))}
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # tensors of another shape: another network's weights
        shapes = str(exc).count("size mismatch")
        raise UserError(f"--weights '{path}' does not fit {network}: {shapes} "
                        "tensors have another shape (weights of another network?)") from None
    missing = [k for k in result.missing_keys if not k.startswith(("fc.", "classifier."))]
    if missing or result.unexpected_keys:
        raise UserError(f"--weights '{path}' does not fit {network}: {len(missing)} missing "
                        f"and {len(result.unexpected_keys)} unexpected tensors")


def load_tensors(path: Path):
    """``torch.load`` of a file of tensors, numbers and strings only: nothing in it can run
    code (see evaluation/safe_loading.py). A file that torch.save did not write (empty, text,
    another format) is refused before PyTorch reads it, with a reason a user can act on."""
    with open(path, "rb") as handle:
        head = handle.read(4)
    if not head:
        raise ValueError("the file is empty")
    if not head.startswith((b"PK\x03\x04", b"\x80")):  # torch.save's zip, or a legacy pickle
        raise ValueError("it is not a file written by torch.save (neither its zip nor its "
                         "pickle format)")
    import warnings

    with warnings.catch_warnings():  # PyTorch's advice to drop weights_only: never taken
        warnings.simplefilter("ignore")
        return torch.load(path, map_location="cpu", weights_only=True)


def why_not_tensors(exc: Exception) -> str:
    """One line for a failed ``load_tensors``, without PyTorch's advice to load the file
    with weights_only=False (which would run whatever code it holds)."""
    import pickle

    if isinstance(exc, pickle.UnpicklingError) or "weights_only" in str(exc):
        return "it holds more than tensors (pickled Python objects); refused, since loading " \
               "it could run code"
    return reason_line(exc)

