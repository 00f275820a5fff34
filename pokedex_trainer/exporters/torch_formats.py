"""A PyTorch network to TorchScript (the guide's ``torch.jit.trace``), ``torch.export`` and ONNX.

Every exported module outputs probabilities (softmax inside), like the Keras exports, so an app
reads the same kind of answer from every file; where the run's "unknown" rule is not max
softmax, a second output ``known_score`` holds the rule's score (KnownScore). TorchScript is deprecated upstream; the
``torch.export`` program (``.pt2``) is its successor and is written beside it.
"""

from __future__ import annotations

import io
import json
import logging
import warnings
from pathlib import Path

import torch
from torch import nn

from pokedex_trainer.user_io.atomic import atomic_target, atomic_write_bytes
from pokedex_trainer.exporters.metadata import EXTRA_FILE, add_onnx_metadata
from pokedex_trainer.exporters.quiet import quiet_converters
from pokedex_trainer.evaluation.unknown import BANK_SCORES, knn_k

logger = logging.getLogger(__name__)

# Trace with more than one image so no converter specializes the batch dimension to 1.
EXAMPLE_BATCH = 2


class KnownScore(nn.Module):
    """The "unknown" rule's score inside the file (evaluation/unknown.py computes the same in
    numpy): the top logit, logsumexp of the logits, the k-th highest cosine similarity of the
    features to a bank of normalized training features (knn), or that minus the k-th highest
    similarity to a bank of the run's unknown photos, never under ``floor`` (knn_contrast)."""

    def __init__(self, name: str, bank=None, k: int = 1, unknown_bank=None, floor=None):
        super().__init__()
        self.name, self.k = name, int(k)
        if name in BANK_SCORES:
            self.register_buffer("bank_t", torch.as_tensor(bank, dtype=torch.float32).T.clone())
        if name == "knn_contrast":
            self.register_buffer("unknown_bank_t", torch.as_tensor(
                unknown_bank, dtype=torch.float32).T.clone())
            self.k_unknown = knn_k(unknown_bank)  # its own k, as evaluation/unknown.py
            self.floor = float(floor)

    def forward(self, features: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        if self.name == "max_logit":
            return logits.max(dim=1).values
        if self.name == "energy":
            return torch.logsumexp(logits, dim=1)
        norm = torch.sqrt((features * features).sum(dim=1, keepdim=True)).clamp_min(1e-12)
        unit = features / norm
        score = _kth_highest((unit @ self.bank_t).clamp(-1.0, 1.0), self.k)
        if self.name == "knn":
            return score
        unknown = _kth_highest((unit @ self.unknown_bank_t).clamp(-1.0, 1.0), self.k_unknown)
        return score - unknown.clamp_min(self.floor)


def _kth_highest(similarity: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th highest of each row: the highest value with at least k values at or above it,
    equal ones counted apart as numpy's partition does (topk becomes a sort that LiteRT's
    interpreter lacks)."""
    at_or_above = (similarity[:, None, :] >= similarity[:, :, None]).float().sum(dim=2)
    return torch.where(at_or_above >= k, similarity,
                       torch.full_like(similarity, -2.0)).amax(dim=1)


class ProbabilityModel(nn.Module):
    """Classifier + softmax: RGB 0..255 (N, 3, H, W) in, probabilities out; with a
    ``score`` (KnownScore), (probabilities, known_score) out."""

    def __init__(self, classifier: nn.Module, score: KnownScore | None = None):
        super().__init__()
        self.classifier = classifier
        self.score = score

    def forward(self, x: torch.Tensor):
        if self.score is None:
            return torch.softmax(self.classifier(x).float(), dim=1)
        model = self.classifier
        features = model.backbone(model.normalize(x)).float()
        logits = model.head(features).float()
        return torch.softmax(logits, dim=1), self.score(features, logits)


def known_score_module(graph) -> KnownScore | None:
    """``graph``: (score name, bank or None, k, unknown bank or None, floor or None) of the
    rule, or None for max softmax."""
    return None if graph is None else KnownScore(*graph)


def _example(image_size) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.rand(EXAMPLE_BATCH, 3, *image_size, generator=generator) * 255.0


def write_torchscript(classifier: nn.Module, image_size, path: Path, sidecar: dict,
                      graph=None) -> Path:
    module = ProbabilityModel(classifier, known_score_module(graph)).eval()
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore", FutureWarning)  # "torch.jit.trace is deprecated"
        traced = torch.jit.trace(module, _example(image_size))
        with atomic_target(path, ".pt") as tmp:
            torch.jit.save(traced, str(tmp),
                           _extra_files={EXTRA_FILE: json.dumps(sidecar, ensure_ascii=False)})
    return path


def write_torch_export(classifier: nn.Module, image_size, path: Path, sidecar: dict,
                       graph=None) -> Path:
    module = ProbabilityModel(classifier, known_score_module(graph)).eval()
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.export.export(module, (_example(image_size),),
                                  dynamic_shapes={"x": {0: batch}})
    with atomic_target(path, ".pt2") as tmp:
        torch.export.save(program, str(tmp),
                          extra_files={EXTRA_FILE: json.dumps(sidecar, ensure_ascii=False)})
    return path


def write_onnx(classifier: nn.Module, image_size, path: Path, opset: int, sidecar: dict,
               graph=None) -> Path:
    """ONNX through PyTorch's current (``torch.export``-based) exporter, dynamic batch."""
    module = ProbabilityModel(classifier, known_score_module(graph)).eval()
    with warnings.catch_warnings(), quiet_converters():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(module, (_example(image_size),), dynamo=True,
                                    input_names=["image"],
                                    output_names=["probabilities"] + (
                                        [] if graph is None else ["known_score"]),
                                    dynamic_shapes={"x": {0: "batch"}}, opset_version=opset,
                                    verbose=False)
    proto = add_onnx_metadata(program.model_proto, sidecar)
    atomic_write_bytes(path, proto.SerializeToString())
    return path


def read_extra_metadata(path: Path) -> dict | None:
    """The sidecar stored inside a TorchScript (.pt) or torch.export (.pt2) file (opened only
    when safe_loading allows it: these formats can carry code)."""
    from pokedex_trainer.evaluation.safe_loading import check_can_open

    checked = io.BytesIO(check_can_open(Path(path)).data)  # the bytes that were checked
    files = {EXTRA_FILE: ""}
    if Path(path).suffix == ".pt2":
        torch.export.load(checked, extra_files=files)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # "torch.jit.load is deprecated"
            torch.jit.load(checked, map_location="cpu", _extra_files=files)
    value = files[EXTRA_FILE]
    return json.loads(value) if value else None
