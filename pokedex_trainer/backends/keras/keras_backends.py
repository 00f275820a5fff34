"""What differs between the Keras 3 backends (TensorFlow, PyTorch, JAX), and nothing else.

The Keras trainer is written once against ``KerasOnBackend``; ``KerasOnTensorFlow``,
``KerasOnTorch`` and ``KerasOnJax`` supply their backend's devices, memory settings,
determinism, multi-GPU strategy, data feed, TensorBoard writer (tensorboard_writers.py),
gradients for the histograms and out-of-memory errors. Each imports only its own framework.
"""

from __future__ import annotations

import contextlib
import logging

import keras
import numpy as np

from pokedex_trainer.backends.keras.tensorboard_writers import (
    EventWriter,
    TensorFlowWriter,
    TorchWriter,
)

logger = logging.getLogger(__name__)


class LoaderFeed(keras.utils.PyDataset):
    """A BatchLoader as Keras' backend-neutral feed; each pass over it is one epoch.

    Keras reads it in order (one worker, no multiprocessing: the loader has its own worker
    processes), so batch ``i`` is the loader's ``i``-th batch of epoch ``epoch``.

    Args:
        loader: the shared BatchLoader.
        replicas: devices a batch is split over (see ``pack_batch``).
        class_weights: per-class loss weights, or None.
    """

    def __init__(self, loader, replicas: int = 1, class_weights=None,
                 unknown_weight: float | None = None):
        super().__init__(workers=1, use_multiprocessing=False, max_queue_size=2)
        self.loader, self.replicas, self.class_weights = loader, replicas, class_weights
        self.unknown_weight = unknown_weight
        self.epoch = 0
        self._batches = None

    def __len__(self) -> int:
        return len(self.loader)

    def __getitem__(self, index: int):
        if index == 0 or self._batches is None:
            # In place: pack_batch's float conversion reads the shared buffer before the next
            # batch may reuse it.
            self._batches = self.loader.iter_epoch(self.epoch, in_place=True)
        batch = next(self._batches)
        return pack_batch(batch, self.replicas, self.class_weights, float_images=True,
                          unknown_weight=self.unknown_weight)

    def on_epoch_end(self) -> None:
        self._batches = None


def pack_batch(batch, replicas: int = 1, class_weights=None, float_images: bool = False,
               unknown_weight: float | None = None):
    """(images, labels[, sample weights]) for Keras.

    ``class_weights`` (per class) become per-sample weights, which Keras multiplies into the
    loss exactly as PyTorch's trainer does; with ``unknown_weight`` (``--unknown_dir``) a photo
    labelled -1 gets that weight (core/outlier_exposure.py). With several replicas a last batch smaller than the
    replica count would leave a device with an empty batch; it is padded with copies that carry
    a sample weight of 0.
    """
    images = batch.images.astype(np.float32) if float_images else batch.images
    if replicas <= 1 and class_weights is None and unknown_weight is None:
        return images, batch.labels
    labels = batch.labels
    if unknown_weight is not None:
        from pokedex_trainer.core.outlier_exposure import sample_weights

        weights = sample_weights(labels, class_weights, unknown_weight)
    else:
        weights = np.ones(len(labels), np.float32) if class_weights is None else \
            np.asarray(class_weights, np.float32)[labels]
    missing = -len(labels) % replicas
    if missing:
        take = np.arange(missing) % len(labels)
        images = np.concatenate([images, images[take]])
        labels = np.concatenate([labels, labels[take]])
        weights = np.concatenate([weights, np.zeros(missing, np.float32)])
    return images, labels, weights


class KerasOnBackend:
    """Keras on any backend, the defaults: one device, no strategy, a PyDataset feed,
    PyTorch's TensorBoard writer."""

    name = ""
    gpus = 0

    def describe(self) -> str:
        return "CPU"

    def seed(self, seed: int) -> None:
        """keras.utils.set_random_seed without its TensorFlow part: it imports TensorFlow
        whenever it is installed, which a PyTorch or JAX run must not load."""
        import random

        from keras.src.backend.common import global_state
        from keras.src.random import seed_generator
        from keras.src.utils.rng_utils import GLOBAL_RANDOM_SEED

        global_state.set_global_attribute(GLOBAL_RANDOM_SEED, seed)
        global_state.set_global_attribute(seed_generator.GLOBAL_SEED_GENERATOR, None)
        random.seed(seed)
        np.random.seed(seed)

    def prepare_memory(self) -> None:
        """Before the first model: how GPU memory is taken."""

    def set_deterministic(self) -> None:
        """Deterministic kernels where the framework has them."""

    def strategy_scope(self):
        return contextlib.nullcontext()

    replicas = 1

    def feed(self, loader, image_size, class_weights=None, unknown_weight=None):
        return LoaderFeed(loader, self.replicas, class_weights, unknown_weight)

    def set_epoch(self, feed, epoch: int) -> None:
        feed.epoch = epoch

    def writer(self, log_dir):
        return TorchWriter(log_dir)

    def gradients(self, model, images: np.ndarray, labels: np.ndarray):
        """(variable, gradient array) of one training batch, for the histograms; None when
        this backend cannot give them cheaply."""
        return None

    out_of_memory: tuple = (MemoryError,)

    def peak_memory(self, step):
        """Run ``step`` and return the device's peak memory in bytes (None: use RAM)."""
        return None


def _note_many_gpus(count: int, backend: str) -> None:
    if count > 1:
        logger.warning("%d GPUs visible: Keras on %s trains on one of them. For several GPUs, "
                       "use --keras_backend tensorflow on Linux (MirroredStrategy) or "
                       "--framework pytorch with torchrun", count, backend)


class KerasOnTensorFlow(KerasOnBackend):
    name = "tensorflow"

    def __init__(self):
        import tensorflow as tf

        self.tf = tf
        self.prepare_memory()
        self.devices = tf.config.list_logical_devices("GPU")
        self.gpus = len(self.devices)
        self._strategy = self._make_strategy()
        self.replicas = self._strategy.num_replicas_in_sync

    def describe(self) -> str:
        return f"{self.gpus} GPU ({', '.join(g.name for g in self.devices)})" if self.gpus \
            else "CPU"

    def seed(self, seed: int) -> None:
        keras.utils.set_random_seed(seed)

    def prepare_memory(self) -> None:
        """Take GPU memory as needed instead of all at once (the guide's OOM advice)."""
        for gpu in self.tf.config.list_physical_devices("GPU"):
            try:
                self.tf.config.experimental.set_memory_growth(gpu, True)
            except RuntimeError:
                pass

    def set_deterministic(self) -> None:
        self.tf.config.experimental.enable_op_determinism()

    def _make_strategy(self):
        """MirroredStrategy over every visible GPU when there are several, else the default.
        The batch size stays global: each of N GPUs gets batch_size / N images per step."""
        return make_strategy()

    def strategy_scope(self):
        return self._strategy.scope()

    def feed(self, loader, image_size, class_weights=None, unknown_weight=None):
        """tf.data over the loader: uint8 crosses into TensorFlow (4x smaller), then floats."""
        tf = self.tf
        height, width = image_size
        replicas = self.replicas
        weighted = replicas > 1 or class_weights is not None or unknown_weight is not None

        def generate():
            # Copied out of the shared buffers: TensorFlow may keep a NumPy array's memory.
            for batch in loader.iter_epoch():
                yield pack_batch(batch, replicas, class_weights, unknown_weight=unknown_weight)

        signature = (tf.TensorSpec((None, height, width, 3), tf.uint8),
                     tf.TensorSpec((None,), tf.int32))
        if weighted:
            signature += (tf.TensorSpec((None,), tf.float32),)
        dataset = tf.data.Dataset.from_generator(generate, output_signature=signature)
        dataset = dataset.apply(tf.data.experimental.assert_cardinality(len(loader)))
        dataset = dataset.map(lambda x, *rest: (tf.cast(x, tf.float32), *rest))
        return dataset.prefetch(2)

    def set_epoch(self, feed, epoch: int) -> None:
        pass  # the generator reads the loader's own epoch (set by the trainer)

    def writer(self, log_dir):
        return TensorFlowWriter(log_dir)

    def gradients(self, model, images, labels):
        tf = self.tf
        variables = model.trainable_variables
        key = (id(model.optimizer), len(variables))
        if getattr(self, "_gradient_key", None) != key:
            # Compiled once per phase: eager backprop through a large backbone costs seconds.
            @tf.function
            def gradient_fn(x, y):
                with tf.GradientTape() as tape:
                    loss = model.loss(y, model(x, training=True))
                return tape.gradient(loss, model.trainable_variables)

            self._gradient_fn, self._gradient_key = gradient_fn, key
        grads = self._gradient_fn(tf.cast(images, tf.float32), tf.convert_to_tensor(labels))
        return [(v, g) for v, g in zip(variables, grads) if g is not None]

    @property
    def out_of_memory(self):
        return (self.tf.errors.ResourceExhaustedError, MemoryError)

    def peak_memory(self, step):
        if not self.gpus:
            return None
        name = self.devices[0].name
        self.tf.config.experimental.reset_memory_stats(name)
        step()
        return self.tf.config.experimental.get_memory_info(name)["peak"]


def make_strategy():
    """TensorFlow's distribution strategy for this machine (a hook the tests replace)."""
    import tensorflow as tf

    gpus = tf.config.list_logical_devices("GPU")
    if len(gpus) > 1:
        strategy = tf.distribute.MirroredStrategy([gpu.name for gpu in gpus])
        logger.info("training on %d GPUs with MirroredStrategy", len(gpus))
        return strategy
    return tf.distribute.get_strategy()


class KerasOnTorch(KerasOnBackend):
    name = "torch"

    def __init__(self):
        import torch

        self.torch = torch
        torch.backends.cudnn.benchmark = True  # fixed sizes (set_deterministic turns it off)
        if torch.cuda.is_available():
            self.gpus, self.kind = torch.cuda.device_count(), "cuda"
        elif torch.backends.mps.is_available():
            self.gpus, self.kind = 1, "mps"
        else:
            self.gpus, self.kind = 0, "cpu"
        _note_many_gpus(self.gpus, "PyTorch")

    def describe(self) -> str:
        if self.kind == "cuda":
            return f"cuda:0 ({self.torch.cuda.get_device_name(0)})"
        return self.kind

    def seed(self, seed: int) -> None:
        super().seed(seed)
        self.torch.manual_seed(seed)

    def set_deterministic(self) -> None:
        import os

        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        self.torch.use_deterministic_algorithms(True, warn_only=True)
        self.torch.backends.cudnn.benchmark = False

    def gradients(self, model, images, labels):
        torch = self.torch
        variables = model.trainable_variables
        for variable in variables:
            variable.value.grad = None
        loss = model.loss(torch.as_tensor(labels),
                          model(torch.as_tensor(images, dtype=torch.float32), training=True))
        loss.backward()
        pairs = [(v, v.value.grad.detach()) for v in variables if v.value.grad is not None]
        for variable in variables:
            variable.value.grad = None
        return pairs

    @property
    def out_of_memory(self):
        return (self.torch.cuda.OutOfMemoryError, MemoryError)

    def peak_memory(self, step):
        if self.kind != "cuda":
            return None
        self.torch.cuda.reset_peak_memory_stats()
        step()
        return self.torch.cuda.max_memory_allocated()


class KerasOnJax(KerasOnBackend):
    name = "jax"

    def __init__(self):
        import jax

        self.jax = jax
        devices = [d for d in jax.devices() if d.platform == "gpu"]
        self.gpus = len(devices)
        self.device = devices[0] if devices else jax.devices()[0]
        _note_many_gpus(self.gpus, "JAX")
        logger.info("JAX: TensorBoard gets weight histograms, not gradient histograms")

    def describe(self) -> str:
        return f"{self.device.platform}:0 ({self.device.device_kind})"

    def writer(self, log_dir):
        # Not PyTorch's writer: importing torch would load PyTorch's CUDA libraries (cuDNN,
        # cuBLAS, of its own versions) into the process whose GPU JAX drives.
        return EventWriter(log_dir)

    def peak_memory(self, step):
        if not self.gpus:
            return None
        step()
        return (self.device.memory_stats() or {}).get("peak_bytes_in_use")


KERAS_ON = {"tensorflow": KerasOnTensorFlow, "torch": KerasOnTorch, "jax": KerasOnJax}


def keras_on_current_backend() -> KerasOnBackend:
    """Keras on the backend it runs on in this process."""
    return KERAS_ON[keras.backend.backend()]()
