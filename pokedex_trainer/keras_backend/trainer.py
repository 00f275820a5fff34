"""Two-phase Keras training of EfficientNetB7 / MobileNetV2 over the shared data layer."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import tensorflow as tf
import keras

from ..core.context import RunContext
from ..core.phases import Phase
from ..records import atomic_target
from ..tensorboard_tags import SAMPLE_IMAGES_TAG, TRAIN_SUBDIR, VALIDATION_SUBDIR, image_grid, \
    split_epoch_logs
from .models import apply_phase, build_model

logger = logging.getLogger(__name__)


def to_dataset(loader, image_size: tuple[int, int], replicas: int = 1,
               class_weights=None) -> tf.data.Dataset:
    """Wrap a BatchLoader as a tf.data pipeline; each pass over it is one epoch.

    ``class_weights`` (per class) become per-sample weights, which Keras multiplies into the
    loss exactly as PyTorch's trainer does. With several replicas (MirroredStrategy) a last
    batch smaller than the replica count would leave a GPU with an empty batch, which
    TensorFlow's kernels reject; it is padded with copies that carry a sample weight of 0.
    """
    height, width = image_size
    weighted = replicas > 1 or class_weights is not None

    def generate():
        for batch in loader.iter_epoch():
            if not weighted:
                yield batch.images, batch.labels
                continue
            weights = np.ones(len(batch.labels), np.float32) if class_weights is None else \
                np.asarray(class_weights, np.float32)[batch.labels]
            missing = -len(batch.labels) % replicas
            images, labels = batch.images, batch.labels
            if missing:
                take = np.arange(missing) % len(labels)
                images = np.concatenate([images, images[take]])
                labels = np.concatenate([labels, labels[take]])
                weights = np.concatenate([weights, np.zeros(missing, np.float32)])
            yield images, labels, weights

    signature = (tf.TensorSpec((None, height, width, 3), tf.uint8),
                 tf.TensorSpec((None,), tf.int32))
    if weighted:
        signature += (tf.TensorSpec((None,), tf.float32),)
    dataset = tf.data.Dataset.from_generator(generate, output_signature=signature)
    dataset = dataset.apply(tf.data.experimental.assert_cardinality(len(loader)))
    # uint8 crosses the pipe (4x smaller); the model gets float pixels in 0..255.
    dataset = dataset.map(lambda x, *rest: (tf.cast(x, tf.float32), *rest))
    return dataset.prefetch(2)


def save_model(model: keras.Model, path) -> None:
    """Save an inference-ready model atomically: a crash never leaves a damaged file.

    The optimizer state is left out (it would triple the file: 770 MB for EfficientNetB7), and
    so is the compile configuration, so the file loads with no warning and no training state.
    """
    optimizer, compiled = model.optimizer, model.compiled
    model.optimizer, model.compiled = None, False
    try:
        with atomic_target(path, suffix=".keras") as tmp:
            model.save(tmp)
    finally:
        model.optimizer, model.compiled = optimizer, compiled


def compile_model(model: keras.Model, learning_rate: float, num_classes: int) -> None:
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy"),
                 keras.metrics.SparseTopKCategoricalAccuracy(k=min(5, num_classes),
                                                             name="top5_accuracy")],
    )


class TensorBoardLogger:
    """Keras-named scalars, weight and gradient histograms and an augmented-sample grid.

    Written with tf.summary and flushed every epoch so a live TensorBoard shows each epoch.

    Args:
        log_dir: the run's TensorBoard directory.
        sample_batch: (images uint8, labels) of training data, for gradients and the image grid.
        histogram_freq: epochs between weight/gradient histograms; 0 for none.
    """

    def __init__(self, model: keras.Model, log_dir, sample_batch: tuple[np.ndarray, np.ndarray],
                 histogram_freq: int = 1):
        self.model = model
        self.histogram_freq = histogram_freq
        self.train_writer = tf.summary.create_file_writer(str(log_dir / TRAIN_SUBDIR))
        self.val_writer = tf.summary.create_file_writer(str(log_dir / VALIDATION_SUBDIR))
        self.sample_batch = sample_batch
        self._gradient_fn = None
        self._gradient_vars = -1

    def log_samples(self) -> None:
        grid = image_grid(self.sample_batch[0])
        with self.train_writer.as_default():
            tf.summary.image(SAMPLE_IMAGES_TAG, grid[None], step=0)
        self.train_writer.flush()

    def _gradients(self):
        images = tf.cast(self.sample_batch[0], tf.float32)
        labels = tf.convert_to_tensor(self.sample_batch[1])
        variables = self.model.trainable_variables
        if self._gradient_fn is None or self._gradient_vars != len(variables):
            # Compiled once per phase: eager backprop through a large backbone costs seconds.
            @tf.function
            def gradient_fn(images, labels):
                with tf.GradientTape() as tape:
                    loss = self.model.loss(labels, self.model(images, training=True))
                return tape.gradient(loss, self.model.trainable_variables)

            self._gradient_fn, self._gradient_vars = gradient_fn, len(variables)
        return zip(variables, self._gradient_fn(images, labels))

    def _log_histograms(self, epoch: int) -> None:
        for weight in self.model.weights:
            tf.summary.histogram(f"{weight.path}/histogram", weight, step=epoch)
        for variable, gradient in self._gradients():
            if gradient is not None:
                tf.summary.histogram(f"gradients/{variable.path}", gradient, step=epoch)

    def log_epoch(self, epoch: int, logs: dict) -> None:
        train_scalars, val_scalars = split_epoch_logs(logs)
        with self.train_writer.as_default():
            for tag, value in train_scalars.items():
                tf.summary.scalar(tag, value, step=epoch)
            if self.histogram_freq and epoch % self.histogram_freq == 0:
                self._log_histograms(epoch)
        with self.val_writer.as_default():
            for tag, value in val_scalars.items():
                tf.summary.scalar(tag, value, step=epoch)
        self.train_writer.flush()
        self.val_writer.flush()

    def close(self) -> None:
        self.train_writer.close()
        self.val_writer.close()


def configure_precision(mixed: bool) -> None:
    if not mixed:
        keras.mixed_precision.set_global_policy("float32")
        return
    if tf.config.list_physical_devices("GPU"):
        keras.mixed_precision.set_global_policy("mixed_float16")
    else:
        logger.warning("--mixed_precision without a GPU uses bfloat16, which most CPUs run "
                       "slower than float32")
        keras.mixed_precision.set_global_policy("mixed_bfloat16")


def enable_memory_growth() -> None:
    """Take GPU memory as needed instead of all at once (the seed's OOM advice)."""
    for gpu in tf.config.list_physical_devices("GPU"):
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:
            pass


WEIGHTS_FILE = "weights.weights.h5"
OPTIMIZER_FILE = "optimizer.npz"
LEGACY_WEIGHTS_FILE = "last.weights.h5"  # the first version's resume/ files


def save_training_state(folder: Path, model: keras.Model) -> None:
    """Weights and optimizer variables (moments, step, learning rate) of the last epoch."""
    model.save_weights(folder / WEIGHTS_FILE)
    buffer = io.BytesIO()
    np.savez(buffer, *[np.asarray(v) for v in model.optimizer.variables])
    (folder / OPTIMIZER_FILE).write_bytes(buffer.getvalue())


def restore_training_state(folder: Path, model: keras.Model) -> None:
    weights = folder / WEIGHTS_FILE
    model.load_weights(weights if weights.is_file() else folder / LEGACY_WEIGHTS_FILE)
    model.optimizer.build(model.trainable_variables)
    with np.load(folder / OPTIMIZER_FILE) as saved:
        values = [saved[f"arr_{i}"] for i in range(len(saved.files))]
    variables = model.optimizer.variables
    if len(values) != len(variables):
        logger.warning("optimizer state does not match the model: continuing with a fresh "
                       "optimizer")
        return
    for variable, value in zip(variables, values):
        variable.assign(value)


def search_batch_size(config, spec, num_classes: int):
    """--batch_size auto: real training steps at growing batch sizes (see batch_size.py)."""
    from ..batch_size import PeakRSS, find_batch_size, ram_limit
    from ..core.phases import Phase

    configure_precision(config.mixed_precision)
    enable_memory_growth()
    # Random weights, everything trainable: the most memory either phase can need.
    model = build_model(spec, num_classes, config.image_size, "none", config.dropout)
    apply_phase(model, Phase("probe", 1, 1e-3, "all"))
    compile_model(model, 1e-3, num_classes)
    gpus = tf.config.list_logical_devices("GPU")
    height, width = config.image_size

    def measure(batch: int):
        try:
            if gpus:
                tf.config.experimental.reset_memory_stats(gpus[0].name)
                model.train_on_batch(np.full((batch, height, width, 3), 128, np.float32),
                                     np.zeros(batch, np.int32))
                return tf.config.experimental.get_memory_info(gpus[0].name)["peak"]
            with PeakRSS() as watch:
                model.train_on_batch(np.full((batch, height, width, 3), 128, np.float32),
                                     np.zeros(batch, np.int32))
            return watch.peak
        except tf.errors.ResourceExhaustedError:
            return None

    if gpus:
        limit = (config.memory_limit_mb or 0) * 2**20 or 2**62  # the GPU's own OOM decides
        return find_batch_size(measure, limit, "GPU memory", resettable=True)
    return find_batch_size(measure, ram_limit(config.memory_limit_mb), "RAM", resettable=False)


def make_strategy() -> tf.distribute.Strategy:
    """MirroredStrategy over every visible GPU when there are several, else the default.

    The batch size stays global: each of N GPUs gets batch_size / N images per step.
    """
    gpus = tf.config.list_logical_devices("GPU")
    if len(gpus) > 1:
        strategy = tf.distribute.MirroredStrategy([gpu.name for gpu in gpus])
        logger.info("training on %d GPUs with MirroredStrategy", len(gpus))
        return strategy
    return tf.distribute.get_strategy()


class _BatchProgress(keras.callbacks.ProgbarLogger):
    """Keras' progress bar without its "Epoch e/E" header: the core fits one epoch at a time
    (E would be wrong) and logs each epoch's own line."""

    def set_params(self, params):
        super().set_params(params)
        self.epochs = 1


class KerasBackend:
    """Keras 3 work for the core phase loop (see core/backend.py for the contract).

    Args:
        context: the run.
    """

    main_process = True

    def __init__(self, context: RunContext):
        config = context.config
        self.context = context
        enable_memory_growth()
        keras.utils.set_random_seed(config.seed)
        if config.deterministic:
            tf.config.experimental.enable_op_determinism()
        gpus = tf.config.list_logical_devices("GPU")
        self.device = f"{len(gpus)} GPU ({', '.join(g.name for g in gpus)})" if gpus else "CPU"
        configure_precision(config.mixed_precision)
        self.strategy = make_strategy()
        with self.strategy.scope():
            self.model = build_model(context.spec, context.num_classes, config.image_size,
                                     config.weights, config.dropout, config.base_model)
        if not config.pretrained:
            logger.info("--weights none: training from scratch, nothing is frozen")
        self.replicas = self.strategy.num_replicas_in_sync
        self.train_loader = context.make_loader("train", training=True)
        self.val_loader = context.make_loader("val", training=False)
        self.tensorboard = None
        try:
            self._start_feeding(context)
        except BaseException:
            self.close()
            raise

    def _start_feeding(self, context: RunContext) -> None:
        config = context.config
        sample = self.train_loader.sample_batch()
        self.tensorboard = TensorBoardLogger(self.model, context.tensorboard_dir,
                                             (sample.images, sample.labels),
                                             config.histogram_freq)
        self.tensorboard.log_samples()
        self.train_ds = to_dataset(self.train_loader, config.image_size, self.replicas,
                                   context.class_weights())
        self.val_ds = to_dataset(self.val_loader, config.image_size, self.replicas)

    def start_phase(self, phase: Phase, learning_rate: float) -> None:
        apply_phase(self.model, phase)
        with self.strategy.scope():
            compile_model(self.model, learning_rate, self.context.num_classes)

    def set_learning_rate(self, learning_rate: float) -> None:
        self.model.optimizer.learning_rate = learning_rate

    def learning_rate(self) -> float:
        return float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))

    def fit_epoch(self, epoch: int, phase: Phase) -> dict:
        self.train_loader.epoch = epoch
        history = self.model.fit(self.train_ds, initial_epoch=epoch, epochs=epoch + 1,
                                 shuffle=False, verbose=1 if _interactive() else 0,
                                 callbacks=[keras.callbacks.TerminateOnNaN(), _BatchProgress()])
        return {key: float(values[-1]) for key, values in history.history.items()}

    def evaluate(self, split: str) -> dict:
        if split == "val":
            return _evaluate(self.model, self.val_ds)
        loader = self.context.make_loader(split, training=False)
        try:
            return _evaluate(self.model, to_dataset(loader, self.context.config.image_size,
                                                    self.replicas))
        finally:
            loader.close()

    def get_weights(self):
        return self.model.get_weights()

    def set_weights(self, weights) -> None:
        self.model.set_weights(weights)

    def save_model(self, path: Path) -> None:
        save_model(self.model, path)

    def read_model_weights(self, path: Path):
        return keras.models.load_model(path, compile=False).get_weights()

    def save_state(self, folder: Path) -> None:
        save_training_state(folder, self.model)

    def load_state(self, folder: Path) -> dict | None:
        restore_training_state(folder, self.model)
        return None  # the first version kept its plateau counters in state.json

    def log_epoch(self, epoch: int, logs: dict) -> None:
        self.tensorboard.log_epoch(epoch, logs)

    def close(self) -> None:
        self.train_loader.close()
        self.val_loader.close()
        if self.tensorboard is not None:
            self.tensorboard.close()


def _evaluate(model: keras.Model, dataset) -> dict:
    results = model.evaluate(dataset, verbose=0, return_dict=True)
    return {k: float(v) for k, v in results.items()}


def _interactive() -> bool:
    import sys

    return sys.stdout.isatty()


Backend = KerasBackend
