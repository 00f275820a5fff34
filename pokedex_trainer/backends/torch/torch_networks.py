"""torchvision networks (ResNet152; EfficientNetB7 and MobileNetV2 in torchvision_networks.py)
with their normalization inside and a new head.

The module takes RGB pixels in 0..255 (N, 3, H, W), like the Keras models, and returns logits;
``probabilities`` applies the softmax.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from pokedex_trainer.errors import UserError, reason_line
from pokedex_trainer.networks import IMAGENET_MEAN, IMAGENET_STD, ModelSpec
from pokedex_trainer.core.phases import BATCHNORM, OTHER, WEIGHTED, Phase, trainable_mask
from pokedex_trainer.backends.torch.torchvision_networks import (
    detach_classifier,
    efficientnet_b7,
    imagenet_download_error,
)
from pokedex_trainer.backends.torch.torchvision_networks import mobilenet_v2
from pokedex_trainer.backends.torch.tensor_files import (  # noqa: F401  (load_checkpoint callers)
    load_backbone_file,
    load_tensors,
    why_not_tensors,
)

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1

# Backbone modules whose outputs TensorBoard histograms as activations/stage_1, _2, ... (the ends
# of ResNet's four stages; core/tensorboard.py).
ACTIVATION_STAGES = {
    "resnet": ("layer1", "layer2", "layer3", "layer4"),
    "efficientnet": ("features.2", "features.3", "features.5", "features.8"),
    "mobilenet": ("features.3", "features.6", "features.13", "features.18"),
    "tiny_torch": ("bn1", "bn2"),
}


class Normalize(nn.Module):
    """0..255 RGB to ImageNet mean/std normalized input; saved with the model."""

    def __init__(self, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1) * 255.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class Classifier(nn.Module):
    """normalize -> backbone (pooled features) -> dropout -> linear head (logits)."""

    def __init__(self, backbone: nn.Module, num_features: int, num_classes: int,
                 dropout: float):
        super().__init__()
        self.normalize = Normalize()
        self.backbone = backbone
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(num_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.backbone(self.normalize(x))))

    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.forward(x).float(), dim=1)


def _resnet152(weights: str) -> nn.Module:
    from torchvision.models import ResNet152_Weights, resnet152

    if weights.lower() == "imagenet":
        try:
            return resnet152(weights=ResNet152_Weights.DEFAULT)
        except Exception as exc:  # URLError, HTTPError, hash mismatch...
            raise imagenet_download_error("ResNet152", "resnet152", exc) from None
    model = resnet152(weights=None)
    if weights.lower() != "none":
        load_backbone_file(model, Path(weights), "ResNet152")
    return model


class TinyConvNet(nn.Module):
    """The test network (``tiny_torch``): ResNet's kinds of layer, two convolutions deep, with
    torchvision's ``fc`` head. It has no ImageNet weights."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 1000)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


def _tiny(weights: str) -> nn.Module:
    if weights.lower() == "imagenet":
        raise UserError("the test network tiny_torch has no ImageNet weights")
    model = TinyConvNet()
    if weights.lower() != "none":
        load_backbone_file(model, Path(weights), "TinyTorch")
    return model


NETWORKS = {"resnet": _resnet152, "tiny_torch": _tiny, "efficientnet": efficientnet_b7,
            "mobilenet": mobilenet_v2}




def build_model(spec: ModelSpec, num_classes: int, weights: str, dropout: float,
                base_model: str | None = None) -> Classifier:
    """The spec's torchvision network with ``weights`` ('imagenet', 'none' or a file) and a
    new head.

    ``base_model`` (a .pth of this tool) replaces ``weights``: its trained backbone is reused,
    its head is not.
    """
    if spec.model_type not in NETWORKS:
        raise ValueError(f"no PyTorch network for {spec.model_type}")
    if base_model:
        try:
            base, payload = load_checkpoint(Path(base_model))
        except Exception as exc:
            raise UserError(f"could not take the backbone of --base_model '{base_model}': "
                            f"{reason_line(exc)}") from None
        logger.info("base model %s: keeping its backbone, replacing its %d-class head",
                    Path(base_model).name, len(payload["class_names"]))
        return Classifier(base.backbone, base.head.in_features, num_classes, dropout)
    backbone = NETWORKS[spec.model_type](weights)
    num_features = detach_classifier(spec.model_type, backbone)
    return Classifier(backbone, num_features, num_classes, dropout)


def backbone_layers(model: Classifier) -> list[tuple[str, nn.Module, str]]:
    """(name, module, kind) of the backbone's leaf modules in registration order.

    A *layer* is a leaf module: Conv2d/Linear are 'weighted', BatchNorm is 'batchnorm', and
    parameter-free leaves (ReLU, pooling) are 'other' -- the same classes of layer Keras lists.
    """
    layers = []
    for name, module in model.backbone.named_modules():
        if list(module.children()):
            continue
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            kind = BATCHNORM
        elif any(True for _ in module.parameters(recurse=False)):
            kind = WEIGHTED
        else:
            kind = OTHER
        layers.append((name, module, kind))
    return layers


def apply_phase(model: Classifier, phase: Phase) -> None:
    """Set requires_grad for ``phase``; the head always trains."""
    layers = backbone_layers(model)
    mask = trainable_mask(phase, [kind for _, _, kind in layers])
    for (_, module, _), trainable in zip(layers, mask):
        for parameter in module.parameters(recurse=False):
            parameter.requires_grad_(trainable)
    for parameter in model.head.parameters():
        parameter.requires_grad_(True)


def set_train_mode(model: Classifier, phase: Phase) -> None:
    """model.train(), but frozen BatchNorm stays in eval mode (keeps its ImageNet statistics)."""
    model.train()
    if phase.trainable != "all":
        for module in model.backbone.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()


def checkpoint_payload(model: Classifier, class_names: list[str], image_size, spec: ModelSpec,
                       dropout: float) -> dict:
    """What evaluation and export need, with nothing but tensors, numbers and strings."""
    module = model.module if hasattr(model, "module") else model
    return {
        "format": CHECKPOINT_FORMAT, "arch": spec.arch, "model_type": spec.model_type,
        "state_dict": {k: v.detach().cpu() for k, v in module.state_dict().items()},
        "class_names": list(class_names), "image_size": list(image_size),
        "dropout": dropout, "input": {"channels": "RGB", "range": [0, 255],
                                      "layout": "NCHW", "mean": list(IMAGENET_MEAN),
                                      "std": list(IMAGENET_STD)},
    }






def load_checkpoint(path: Path) -> tuple[Classifier, dict]:
    """Rebuild a Classifier from a ``.pth`` this project wrote (weights_only: no code runs)."""
    from pokedex_trainer.networks import get_spec

    from pokedex_trainer.errors import UserError
    from pokedex_trainer.user_io.checked_values import checkpoint_problem

    payload = load_tensors(path)
    problem = checkpoint_problem(payload) if isinstance(payload, dict) else \
        "it holds no checkpoint description"
    if problem:  # checked before its values build a network
        raise UserError(f"{path}: {problem}; the checkpoint's description is damaged "
                        "(restore the file, or train the run again)")
    model = build_model(get_spec(payload["model_type"], "torch"), len(payload["class_names"]),
                        "none", payload["dropout"])
    model.load_state_dict(payload["state_dict"])
    model.eval()
    return model, payload


@torch.no_grad()
def stage_activations(model: Classifier, x: torch.Tensor, model_type: str) -> list:
    """Outputs of the chosen backbone stages (``ACTIVATION_STAGES``) for the input ``x``
    (N, 3, H, W, 0..255) in inference mode, as float32 NumPy arrays; the modules' train/eval
    modes are left as they were."""
    modules = dict(model.backbone.named_modules())
    names = [name for name in ACTIVATION_STAGES.get(model_type, ()) if name in modules]
    outputs: dict = {}

    def keep(name):
        return lambda module, inputs, output: outputs.__setitem__(
            name, output.detach().float().cpu().numpy())

    hooks = [modules[name].register_forward_hook(keep(name)) for name in names]
    modes = [(module, module.training) for module in model.modules()]
    try:
        model.eval()
        model(x)
    finally:
        for hook in hooks:
            hook.remove()
        for module, mode in modes:
            module.train(mode)
    return [outputs[name] for name in names if name in outputs]
