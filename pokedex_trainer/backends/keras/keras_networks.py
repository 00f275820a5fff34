"""Keras networks: ImageNet backbone without its top, the normalization, a new head.

EfficientNetB7 and MobileNetV2 are the guide's; ResNet152 is ``--framework keras`` for it.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import keras

from pokedex_trainer.errors import UserError, reason_line
from pokedex_trainer.networks import ModelSpec
from pokedex_trainer.core.phases import BATCHNORM, OTHER, WEIGHTED, Phase, trainable_mask
from pokedex_trainer.backends.keras.normalization import CaffeNormalization

logger = logging.getLogger(__name__)

BACKBONE_NAME = "backbone"
HEAD_NAME = "predictions"
POOLING_NAME = "avg_pool"  # the features before the classifier (dropout, then HEAD_NAME)

# Backbone layers whose outputs TensorBoard histograms as activations/stage_1, _2, ... (the ends
# of stages at strides 4, 8, 16 and 32; core/tensorboard.py).
ACTIVATION_STAGES = {
    "efficientnet": ("block2g_add", "block3g_add", "block5j_add", "top_activation"),
    "mobilenet": ("block_2_add", "block_5_add", "block_12_add", "out_relu"),
    "resnet": ("conv2_block3_out", "conv3_block8_out", "conv4_block36_out", "conv5_block3_out"),
    "tiny_keras": ("relu1", "relu3"),
}

def tiny_backbone(include_top: bool = False, weights=None, input_shape=None) -> keras.Model:
    """The test network (``tiny_keras``): MobileNetV2's kinds of layer, three deep, with the
    application's signature. It has no ImageNet weights."""
    from keras import layers

    if weights == "imagenet":
        raise ValueError("the test network has no ImageNet weights")
    inputs = keras.Input(input_shape)
    y = layers.Conv2D(8, 3, strides=2, padding="same", name="conv1")(inputs)
    y = layers.BatchNormalization(name="bn1")(y)
    y = layers.ReLU(6.0, name="relu1")(y)
    y = layers.DepthwiseConv2D(3, padding="same", name="dwconv2")(y)
    y = layers.BatchNormalization(name="bn2")(y)
    y = layers.ReLU(6.0, name="relu2")(y)
    y = layers.Conv2D(16, 1, name="conv3")(y)
    y = layers.ReLU(6.0, name="relu3")(y)
    model = keras.Model(inputs, y, name="tiny_keras")
    if weights is not None:
        model.load_weights(weights)
    return model


_APPLICATIONS = {
    "efficientnet": lambda **kw: keras.applications.EfficientNetB7(**kw),
    "mobilenet": lambda **kw: keras.applications.MobileNetV2(**kw),
    "resnet": lambda **kw: keras.applications.ResNet152(**kw),
    "tiny_keras": tiny_backbone,
}

# From-scratch BatchNorm: the applications' momentum (0.99 / 0.999) makes the moving statistics
# lag far behind the weights for the first thousands of steps, so validation (which uses them)
# sits at chance while training accuracy climbs. 0.9 follows the weights within a few dozen steps.
SCRATCH_BN_MOMENTUM = 0.9


def _normalization_layer(spec: ModelSpec) -> keras.layers.Layer | None:
    if spec.normalization == "minus_one_one":
        return keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name="normalize_minus_one_one")
    if spec.normalization == "caffe":
        return CaffeNormalization(name="normalize_caffe")
    if spec.normalization == "efficientnet":
        return None  # keras.applications' EfficientNet rescales and normalizes 0..255 itself
    raise ValueError(f"no Keras normalization for {spec.normalization}")


def build_backbone(spec: ModelSpec, image_size: tuple[int, int], weights: str) -> keras.Model:
    """The application without its top, with ``weights`` 'imagenet', 'none' or a file path."""
    height, width = image_size
    source = None if weights.lower() == "none" else weights
    if source not in (None, "imagenet"):
        source = str(Path(weights))
    try:
        with warnings.catch_warnings():
            # a .weights.h5 file: Keras warns once per nested container of the functional
            # graph (hundreds for ResNet152) although every weight loads; a file that does not
            # fit still raises below
            warnings.filterwarnings("ignore", message="Skipping nested container")
            backbone = _APPLICATIONS[spec.model_type](include_top=False, weights=source,
                                                      input_shape=(height, width, 3))
    except Exception as exc:  # download and file errors come in many types
        reason = reason_line(exc)
        if source == "imagenet":
            raise UserError(
                f"could not get the ImageNet weights of {spec.display_name} ({reason}). They are "
                "downloaded once and cached in ~/.keras/models: connect once, or pass "
                "--weights PATH (a weights file of the network without its top) or "
                "--weights none to train from scratch") from None
        raise UserError(f"could not load --weights '{weights}' into {spec.display_name} without "
                        f"its top at {height}x{width}: {reason}") from None
    backbone.name = BACKBONE_NAME
    return backbone


def backbone_of_base_model(path: str | Path) -> keras.Model:
    """The trained backbone of a model this tool saved earlier (``--base_model``)."""
    try:
        base = keras.models.load_model(path, compile=False)
        backbone = base.get_layer(BACKBONE_NAME)
    except Exception as exc:
        raise UserError(f"could not take the backbone of --base_model '{path}': "
                        f"{reason_line(exc)}") \
            from None
    head = base.get_layer(HEAD_NAME)
    logger.info("base model %s: keeping its backbone, replacing its %d-class head",
                Path(path).name, head.units)
    return backbone


def build_model(spec: ModelSpec, num_classes: int, image_size: tuple[int, int], weights: str,
                dropout: float, base_model: str | None = None) -> keras.Model:
    """RGB 0..255 in, class probabilities out; the network's normalization is inside.

    A pretrained backbone is always called in inference mode, so its BatchNorm layers keep their
    ImageNet statistics in both phases (the standard Keras fine-tuning recipe). ``base_model``
    (a .keras of this tool) replaces ``weights``: its backbone is reused, its head is not.
    """
    height, width = image_size
    if base_model:
        backbone = backbone_of_base_model(base_model)
    else:
        backbone = build_backbone(spec, image_size, weights)
    pretrained = bool(base_model) or weights.lower() != "none"
    if not pretrained:
        for layer in backbone.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = min(layer.momentum, SCRATCH_BN_MOMENTUM)
    inputs = keras.Input(shape=(height, width, 3), name="image")
    x = inputs
    normalization = _normalization_layer(spec)
    if normalization is not None:
        x = normalization(x)
    x = backbone(x, training=False) if pretrained else backbone(x)
    x = keras.layers.GlobalAveragePooling2D(name=POOLING_NAME)(x)
    x = keras.layers.Dropout(dropout, name="head_dropout")(x)
    # float32 output keeps softmax stable under mixed precision.
    outputs = keras.layers.Dense(num_classes, activation="softmax", dtype="float32",
                                 name=HEAD_NAME)(x)
    return keras.Model(inputs, outputs, name=spec.arch)


def layer_kinds(backbone: keras.Model) -> list[str]:
    """Per backbone layer: batchnorm, weighted (owns weights) or other (see phases.py)."""
    kinds = []
    for layer in backbone.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            kinds.append(BATCHNORM)
        elif layer.weights:
            kinds.append(WEIGHTED)
        else:
            kinds.append(OTHER)
    return kinds


def apply_phase(model: keras.Model, phase: Phase) -> None:
    """Set which layers train in ``phase``; the head always trains. Compile afterwards."""
    backbone = model.get_layer(BACKBONE_NAME)
    backbone.trainable = True  # a frozen container would override the per-layer flags
    mask = trainable_mask(phase, layer_kinds(backbone))
    for layer, trainable in zip(backbone.layers, mask):
        layer.trainable = trainable
    if not any(mask):
        backbone.trainable = False
    for layer in model.layers:
        if layer.name != BACKBONE_NAME:
            layer.trainable = True


def activation_probe(model: keras.Model, model_type: str):
    """A function from images (N, H, W, 3, 0..255) to the outputs of the chosen backbone
    stages (``ACTIVATION_STAGES``) as float32 arrays, in inference mode; None when the network
    has none. It shares the model's weights, so it always shows the current ones."""
    import numpy as np

    backbone = model.get_layer(BACKBONE_NAME)
    present = {layer.name for layer in backbone.layers}
    names = [name for name in ACTIVATION_STAGES.get(model_type, ()) if name in present]
    if not names:
        return None
    probe = keras.Model(backbone.inputs, [backbone.get_layer(n).output for n in names])
    # what the model does to the pixels before its backbone (its normalization)
    before = model.layers[1:model.layers.index(backbone)]

    def stage_outputs(images) -> list:
        x = keras.ops.convert_to_tensor(np.asarray(images, np.float32))
        for layer in before:
            x = layer(x)
        outputs = probe(x, training=False)
        return [np.asarray(keras.ops.convert_to_numpy(o), np.float32) for o in outputs]

    return stage_outputs
