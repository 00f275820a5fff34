"""Keras networks to TFLite (four precisions), ONNX (tf2onnx) and a TensorFlow SavedModel.

Everything goes through one SavedModel made by Keras 3's own ``model.export``: the TFLite
converter's ``from_keras_model`` and tf2onnx's Keras path both trip over Keras 3 models in some
versions, while a SavedModel is the input every TensorFlow converter is tested on.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from pokedex_trainer.user_io.atomic import atomic_write_bytes
from pokedex_trainer.exporters.metadata import add_onnx_metadata, add_tflite_metadata
from pokedex_trainer.exporters.quiet import quiet_converters

logger = logging.getLogger(__name__)

TFLITE_PRECISIONS = ("float32", "float16", "dynamic_int8", "int8")


def scored_model(model, graph):
    """``model`` with a second output ``known_score``, the "unknown" rule's score computed
    from its pooled features (exporters/torch_formats.py KnownScore does the same in PyTorch;
    evaluation/unknown.py in numpy); ``model`` itself when ``graph`` is None (max softmax)."""
    import keras
    from keras import ops

    from pokedex_trainer.backends.keras.keras_networks import HEAD_NAME, POOLING_NAME
    from pokedex_trainer.evaluation.unknown import BANK_SCORES, knn_k

    if graph is None:
        return model
    name, bank, k, unknown_bank, floor = graph
    weight, bias = model.get_layer(HEAD_NAME).get_weights()

    class KnownScore(keras.layers.Layer):
        def build(self, input_shape):
            self.weight = self.add_weight(shape=weight.shape, trainable=False, name="weight")
            self.bias = self.add_weight(shape=bias.shape, trainable=False, name="bias")
            self.weight.assign(weight)
            self.bias.assign(bias)
            if name in BANK_SCORES:
                self.bank_t = self.add_weight(shape=bank.T.shape, trainable=False, name="bank")
                self.bank_t.assign(np.ascontiguousarray(bank.T))
            if name == "knn_contrast":
                self.unknown_bank_t = self.add_weight(shape=unknown_bank.T.shape,
                                                      trainable=False, name="unknown_bank")
                self.unknown_bank_t.assign(np.ascontiguousarray(unknown_bank.T))

        def call(self, features):
            features = ops.cast(features, "float32")
            if name in BANK_SCORES:
                norm = ops.sqrt(ops.maximum(ops.sum(features * features, axis=1,
                                                    keepdims=True), 1e-24))
                unit = features / norm
                score = ops.top_k(ops.matmul(unit, self.bank_t), int(k))[0][:, int(k) - 1]
                if name == "knn":
                    return score
                k_unknown = knn_k(unknown_bank)  # its own k, as evaluation/unknown.py
                unknown = ops.top_k(ops.matmul(unit, self.unknown_bank_t),
                                    k_unknown)[0][:, k_unknown - 1]
                return score - ops.maximum(unknown, float(floor))
            logits = ops.matmul(features, self.weight) + self.bias
            if name == "max_logit":
                return ops.max(logits, axis=1)
            return ops.logsumexp(logits, axis=1)

    score = KnownScore(name="known_score", dtype="float32")(
        model.get_layer(POOLING_NAME).output)
    return keras.Model(model.input, [model.output, score], name=model.name)


def write_saved_model(model, path: Path) -> Path:
    """A SavedModel folder whose ``serve`` signature takes (batch, H, W, 3) float32 0..255."""
    path = Path(path)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    try:
        with quiet_converters():
            model.export(str(tmp / "model"), format="tf_saved_model", verbose=False)
        if path.exists():
            shutil.rmtree(path)
        (tmp / "model").replace(path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def convert_tflite(saved_model: Path, precision: str,
                   int8_batches: Callable[[], Iterator[np.ndarray]] | None = None) -> bytes:
    """TFLite flatbuffer of ``saved_model`` in ``precision`` (see TFLITE_PRECISIONS).

    ``int8`` is full integer quantization calibrated on ``int8_batches`` (batches of uint8 RGB);
    its input and output stay float32, so the app feeds the same pixels to every precision.
    """
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
    if precision == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif precision == "dynamic_int8":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif precision == "int8":
        if int8_batches is None:
            raise ValueError("full int8 needs calibration images")
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]

        def representative():
            for batch in int8_batches():
                for image in batch:
                    yield [image[None].astype(np.float32)]

        converter.representative_dataset = representative
    elif precision != "float32":
        raise ValueError(f"unknown TFLite precision {precision}")
    with quiet_converters():
        return converter.convert()


def write_tflite(saved_model: Path, path: Path, precision: str, sidecar: dict,
                 int8_batches=None) -> Path:
    flatbuffer = convert_tflite(saved_model, precision, int8_batches)
    atomic_write_bytes(path, add_tflite_metadata(flatbuffer, sidecar))
    return path


def write_onnx(saved_model: Path, path: Path, opset: int, sidecar: dict) -> Path:
    """ONNX from the SavedModel through tf2onnx, with a dynamic batch dimension ``batch``.

    The SavedModel path freezes everything the graph holds: converting the Keras call with
    ``from_function`` leaves tensors captured by layers such as EfficientNet's Normalization as
    extra graph inputs, and the file then cannot run.
    """
    import tf2onnx
    from tf2onnx import tf_loader

    with quiet_converters():
        graph_def, inputs, outputs = tf_loader.from_saved_model(
            str(saved_model), None, None, tag="serve", signatures=["serve"])
        proto, _ = tf2onnx.convert.from_graph_def(graph_def, input_names=inputs,
                                                  output_names=outputs, opset=opset)
    atomic_write_bytes(path, add_onnx_metadata(proto, sidecar).SerializeToString())
    return path
