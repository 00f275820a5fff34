"""One ModelSpec row per ``--model_type``: framework, network, default size and input range.

Every saved model and exported file takes RGB pixels in 0..255; ``normalization`` says what the
network does with them internally, so the app (and the export sidecar) never has to guess.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class ModelSpec:
    """What the trainers, evaluation and export need to know about one network.

    Args:
        model_type: the ``--model_type`` value.
        framework: ``"keras"`` or ``"torch"``.
        arch: file-name stem of saved models (``mobilenet_v2_best.keras``).
        display_name: the network's usual name.
        image_size: default (height, width) from the guide.
        batch_size: default batch size from the guide.
        normalization: ``"efficientnet"`` (the network rescales 0..255 itself), ``"minus_one_one"``
            (x / 127.5 - 1), ``"imagenet"`` (ImageNet mean/std on 0..1) or ``"caffe"`` (RGB to
            BGR, minus the ImageNet mean in 0..255: Keras' ResNet).
        min_image_size: smallest side the network accepts.
    """

    model_type: str
    framework: str
    arch: str
    display_name: str
    image_size: tuple[int, int]
    batch_size: int
    normalization: str
    min_image_size: int = 32

    @property
    def model_extension(self) -> str:
        return ".keras" if self.framework == "keras" else ".pth"


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

MODEL_SPECS: dict[str, ModelSpec] = {
    "efficientnet": ModelSpec(
        "efficientnet", "keras", "efficientnet_b7", "EfficientNetB7", (600, 600), 16, "efficientnet"
    ),
    "resnet": ModelSpec("resnet", "torch", "resnet152", "ResNet152", (224, 224), 32, "imagenet"),
    "mobilenet": ModelSpec(
        "mobilenet", "keras", "mobilenet_v2", "MobileNetV2", (224, 224), 64, "minus_one_one"
    ),
}


# Tiny networks with the interface of the real ones (same normalization, backbone, pooling,
# dropout and head), for the tests: they run through the real trainers, savers, exporters and
# evaluation in seconds. Registered only when POKEDEX_TEST_MODELS=1 (the test suite sets it).
TEST_MODEL_SPECS: dict[str, ModelSpec] = {
    "tiny_keras": ModelSpec("tiny_keras", "keras", "tiny_keras", "TinyKeras", (32, 32), 8,
                            "minus_one_one", min_image_size=8),
    "tiny_torch": ModelSpec("tiny_torch", "torch", "tiny_torch", "TinyTorch", (32, 32), 8,
                            "imagenet", min_image_size=8),
}
if os.environ.get("POKEDEX_TEST_MODELS") == "1":
    MODEL_SPECS.update(TEST_MODEL_SPECS)


# --framework: every network is built in both frameworks. MODEL_SPECS holds the guide's pairing
# (the route ``auto`` takes); OTHER_ROUTES the same networks in the other framework, each with
# the normalization its own ImageNet weights were trained with.
FRAMEWORKS = ("auto", "keras", "pytorch")
_SPEC_FRAMEWORK = {"keras": "keras", "pytorch": "torch", "torch": "torch"}

OTHER_ROUTES: dict[str, ModelSpec] = {
    "efficientnet": ModelSpec("efficientnet", "torch", "efficientnet_b7", "EfficientNetB7",
                              (600, 600), 16, "imagenet"),
    "resnet": ModelSpec("resnet", "keras", "resnet152", "ResNet152", (224, 224), 32, "caffe"),
    "mobilenet": ModelSpec("mobilenet", "torch", "mobilenet_v2", "MobileNetV2", (224, 224), 64,
                           "imagenet"),
}


def choose_framework(model_type: str) -> str:
    """``--framework auto``: the framework ``model_type`` trains with, as the option names it
    (keras or pytorch). The one place that decides; today it keeps the guide's pairing
    (EfficientNetB7 and MobileNetV2 on Keras, ResNet152 on PyTorch)."""
    return framework_option(MODEL_SPECS[model_type].framework)


def framework_option(framework: str) -> str:
    """A spec's framework (keras, torch) as ``--framework`` names it (keras, pytorch)."""
    return "pytorch" if _SPEC_FRAMEWORK.get(framework) == "torch" else framework


def get_spec(model_type: str, framework: str | None = None) -> ModelSpec:
    """Return the spec of ``model_type`` (one of ``MODEL_SPECS``) in ``framework`` (keras,
    pytorch or torch; None or auto: ``choose_framework``'s)."""
    if framework in (None, "", "auto"):
        framework = choose_framework(model_type)
    wanted = _SPEC_FRAMEWORK[framework]
    spec = MODEL_SPECS[model_type]
    if spec.framework == wanted:
        return spec
    if model_type in OTHER_ROUTES and OTHER_ROUTES[model_type].framework == wanted:
        return OTHER_ROUTES[model_type]
    raise KeyError(f"{model_type} has no {framework} network")


def all_specs() -> list[ModelSpec]:
    """Every (network, framework) route there is."""
    return list(MODEL_SPECS.values()) + list(OTHER_ROUTES.values())
