"""Keras' ResNet152 normalization as a layer saved with the model (``"caffe"`` in keras_networks.py).

keras.applications' ResNet weights were trained on Caffe's input: BGR pixels in 0..255 minus
the ImageNet mean, no scaling (``keras.applications.resnet.preprocess_input``). The layer takes
the RGB 0..255 every saved model takes. It is registered, so a ``.keras`` file holding it
loads in safe mode (no Lambda, no code from the file) wherever this module is imported.
"""

from __future__ import annotations

import keras

CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


@keras.saving.register_keras_serializable(package="pokedex_trainer")
class CaffeNormalization(keras.layers.Layer):
    """RGB 0..255 -> BGR minus the ImageNet mean (channels last)."""

    def call(self, inputs):
        # gather rather than a reverse: every exporter (TFLite, tf2onnx) maps it to one op
        bgr = keras.ops.take(inputs, [2, 1, 0], axis=-1)
        return bgr - keras.ops.convert_to_tensor(CAFFE_MEAN_BGR, dtype=bgr.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape
