"""``ResNet152Model``: the class the guide's TorchScript snippet builds, for this tool's ``.pth``.

The guide pastes::

    model = ResNet152Model(num_classes=50)
    model.load_state_dict(torch.load('model/ultra/resnet152_best.pth'))

A ``.pth`` of this tool is a dictionary of the weights *and* what evaluation and export need
(class names, image size, input range: ``checkpoint_payload``); ``torch.load``'s weights-only
default reads it, since it holds tensors, numbers and strings only. ``load_state_dict`` here
takes that dictionary as well as a plain state dict, checks that it belongs to a ResNet152 with
this number of classes, and keeps its metadata on the model (``class_names``, ``image_size``,
``checkpoint_info``).
"""

from __future__ import annotations

from typing import Any, Mapping

from pokedex_trainer.networks import get_spec
from pokedex_trainer.backends.torch.torch_networks import Classifier, build_model

DEFAULT_DROPOUT = 0.3  # TrainConfig.dropout; dropout holds no weights, so any value loads


class ResNet152Model(Classifier):
    """The network ``--model_type resnet`` trains: ImageNet normalization inside (RGB 0..255 in,
    N x 3 x H x W), torchvision's ResNet152 backbone, dropout and a ``num_classes`` linear head
    that returns logits (``probabilities`` applies the softmax).

    Args:
        num_classes: classes of the head (the guide's 50).
        weights: 'none' (default: works offline; load a ``.pth`` next), 'imagenet' for
            torchvision's backbone weights, or a torchvision resnet152 state dict file.
        dropout: dropout before the head.
    """

    def __init__(self, num_classes: int = 50, weights: str = "none",
                 dropout: float = DEFAULT_DROPOUT):
        built = build_model(get_spec("resnet"), num_classes, weights, dropout)
        super().__init__(built.backbone, built.head.in_features, num_classes, dropout)
        self.num_classes = num_classes
        self.class_names: list[str] | None = None
        self.image_size: tuple[int, int] | None = None
        self.checkpoint_info: dict | None = None

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True,
                        assign: bool = False):
        """A plain state dict, or a ``.pth`` of this tool as ``torch.load`` returns it.

        Raises RuntimeError (as PyTorch does for weights that do not fit) naming the checkpoint's
        network or class count when they are not this model's.
        """
        if _is_tool_checkpoint(state_dict):
            payload = state_dict
            model_type, names = payload.get("model_type"), payload.get("class_names")
            if model_type != "resnet":
                raise RuntimeError(f"this checkpoint is a '{model_type}' network, not the "
                                   "ResNet152 of ResNet152Model")
            if not isinstance(names, list) or len(names) != self.num_classes:
                count = len(names) if isinstance(names, list) else "an unknown number of"
                raise RuntimeError(f"this checkpoint has {count} classes, the model "
                                   f"{self.num_classes}: build it with "
                                   f"ResNet152Model(num_classes={count})")
            result = super().load_state_dict(payload["state_dict"], strict=strict, assign=assign)
            self.class_names = [str(name) for name in names]
            size = payload.get("image_size")
            self.image_size = tuple(size) if isinstance(size, list) and len(size) == 2 and \
                all(isinstance(side, int) for side in size) else None
            self.checkpoint_info = {k: v for k, v in payload.items() if k != "state_dict"}
            return result
        return super().load_state_dict(state_dict, strict=strict, assign=assign)


def _is_tool_checkpoint(value) -> bool:
    """A ``.pth`` written by ``checkpoint_payload``: its weights sit under ``state_dict``."""
    return isinstance(value, Mapping) and isinstance(value.get("state_dict"), Mapping) and \
        "class_names" in value and "format" in value
