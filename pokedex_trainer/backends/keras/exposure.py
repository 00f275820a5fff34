"""Keras' side of outlier exposure (``--unknown_dir``, core/outlier_exposure.py): the loss on
labels where -1 marks a photo of none of the classes, and accuracy on the labelled ones only.

The weights (a labelled photo's class weight, an unknown one's ``--unknown_weight``) come from
the core as Keras sample weights; the loss gives each photo the core's target distribution:
the label-smoothed one-hot of its class, or the uniform distribution for an unknown photo.
"""

from __future__ import annotations

import keras


class ExposureCrossentropy(keras.losses.Loss):
    """Cross-entropy against ``core.outlier_exposure.soft_targets`` (in Keras ops)."""

    def __init__(self, num_classes: int, smoothing: float, **kwargs):
        super().__init__(name="exposure_crossentropy", **kwargs)
        self.num_classes, self.smoothing = num_classes, smoothing

    def call(self, y_true, y_pred):
        ops = keras.ops
        labels = ops.cast(ops.reshape(y_true, (-1,)), "int32")
        known = ops.expand_dims(ops.cast(labels >= 0, y_pred.dtype), 1)
        one_hot = ops.one_hot(ops.maximum(labels, 0), self.num_classes, dtype=y_pred.dtype)
        smoothed = one_hot * (1.0 - self.smoothing) + self.smoothing / self.num_classes
        target = known * smoothed + (1.0 - known) / self.num_classes
        return keras.losses.categorical_crossentropy(target, y_pred)


class _LabelledOnly:
    """A sparse accuracy metric counting the labelled photos only (label >= 0), unweighted, as
    the PyTorch meter counts them."""

    def update_state(self, y_true, y_pred, sample_weight=None):
        ops = keras.ops
        labels = ops.reshape(y_true, (-1,))
        known = ops.cast(labels >= 0, "float32")
        return super().update_state(ops.maximum(labels, 0), y_pred, sample_weight=known)


class LabelledAccuracy(_LabelledOnly, keras.metrics.SparseCategoricalAccuracy):
    pass


class LabelledTopKAccuracy(_LabelledOnly, keras.metrics.SparseTopKCategoricalAccuracy):
    pass


def exposure_loss_and_metrics(num_classes: int, smoothing: float):
    return ExposureCrossentropy(num_classes, smoothing), [
        LabelledAccuracy(name="accuracy"),
        LabelledTopKAccuracy(k=min(5, num_classes), name="top5_accuracy")]
