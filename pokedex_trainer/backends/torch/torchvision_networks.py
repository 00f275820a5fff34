"""EfficientNetB7 and MobileNetV2 as torchvision networks (``--framework pytorch``).

Each builder returns torchvision's network with its ImageNet classifier still attached, like
``_resnet152`` in torch_networks.py: ``weights`` is 'imagenet' (torchvision's weights API, downloaded
once into ~/.cache/torch/hub/checkpoints), 'none', or the path of a local state dict.
``HEAD_ATTRIBUTE`` names the classifier that ``build_model`` replaces with its own head.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from pokedex_trainer.errors import UserError, reason_line

# The attribute of each torchvision network that holds its ImageNet classifier.
HEAD_ATTRIBUTE = {"resnet": "fc", "tiny_torch": "fc", "efficientnet": "classifier",
                  "mobilenet": "classifier"}


def imagenet_download_error(display_name: str, torchvision_name: str, exc: Exception
                            ) -> UserError:
    """The one-line error of an ImageNet download that failed (offline, proxy, bad hash)."""
    reason = reason_line(exc)
    return UserError(
        f"could not get the ImageNet weights of {display_name} ({reason}). torchvision "
        "downloads them once into ~/.cache/torch/hub/checkpoints: connect once, or pass "
        f"--weights PATH (a torchvision {torchvision_name} state dict) or --weights none to "
        "train from scratch")


def _torchvision_network(builder, imagenet_weights, display_name: str, torchvision_name: str,
                         weights: str) -> nn.Module:
    from pokedex_trainer.backends.torch.tensor_files import load_backbone_file

    if weights.lower() == "imagenet":
        try:
            return builder(weights=imagenet_weights)
        except Exception as exc:  # URLError, HTTPError, hash mismatch...
            raise imagenet_download_error(display_name, torchvision_name, exc) from None
    model = builder(weights=None)
    if weights.lower() != "none":
        load_backbone_file(model, Path(weights), display_name)
    return model


def efficientnet_b7(weights: str) -> nn.Module:
    """torchvision's EfficientNetB7 (its only ImageNet weights, IMAGENET1K_V1)."""
    from torchvision.models import EfficientNet_B7_Weights
    from torchvision.models import efficientnet_b7 as build

    return _torchvision_network(build, EfficientNet_B7_Weights.IMAGENET1K_V1, "EfficientNetB7",
                                "efficientnet_b7", weights)


def mobilenet_v2(weights: str) -> nn.Module:
    """torchvision's MobileNetV2. IMAGENET1K_V1 (mobilenet_v2-b0353104.pth) rather than the
    newer V2 recipe: it is the network Keras' MobileNetV2 weights match (the original paper's
    training), and the file an offline machine can place in torchvision's cache."""
    from torchvision.models import MobileNet_V2_Weights
    from torchvision.models import mobilenet_v2 as build

    return _torchvision_network(build, MobileNet_V2_Weights.IMAGENET1K_V1, "MobileNetV2",
                                "mobilenet_v2", weights)


def detach_classifier(model_type: str, network: nn.Module) -> int:
    """Replace the network's ImageNet classifier by an identity (the network then returns its
    pooled features); returns the number of those features."""
    name = HEAD_ATTRIBUTE.get(model_type, "fc")
    classifier = getattr(network, name)
    linear = classifier if isinstance(classifier, nn.Linear) else \
        [m for m in classifier.modules() if isinstance(m, nn.Linear)][-1]
    setattr(network, name, nn.Identity())
    return linear.in_features
