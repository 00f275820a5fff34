"""Keras 3 work for the core phase loop: EfficientNetB7 / MobileNetV2 on TensorFlow, PyTorch
or JAX. Written once; what differs between those backends is in keras_backends.py."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import keras
import numpy as np

from pokedex_trainer.core.context import RunContext
from pokedex_trainer.core.interrupt import INTERRUPT
from pokedex_trainer.core.phases import Phase
from pokedex_trainer.user_io.atomic import atomic_target
from pokedex_trainer.core.tensorboard import (
    ACTIVATION_IMAGES,
    SAMPLE_IMAGES_TAG,
    activation_tag,
    image_grid,
    split_epoch_logs,
)
from pokedex_trainer.backends.keras.keras_networks import activation_probe, apply_phase, build_model
from pokedex_trainer.backends.keras.keras_backends import keras_on_current_backend

logger = logging.getLogger(__name__)


def save_model(model: keras.Model, path) -> None:
    """Save an inference-ready model atomically: a crash never leaves a damaged file.

    The optimizer state is left out (it would triple the file: 770 MB for EfficientNetB7), and
    so is the compile configuration, so the file loads with no warning and no training state.
    A path ending in ``.h5`` gets Keras's legacy HDF5 format (``--save_h5``), asked for on purpose.
    """
    optimizer, compiled = getattr(model, "optimizer", None), model.compiled
    model.optimizer, model.compiled = None, False
    suffix = ".h5" if Path(path).suffix.lower() == ".h5" else ".keras"
    absl = logging.getLogger("absl")  # Keras's "HDF5 is legacy" advice, through absl
    absl.addFilter(_drop_hdf5_advice)
    try:
        with atomic_target(path, suffix=suffix) as tmp:
            # HDF5 would write the (None) optimizer's weights unless told not to
            model.save(tmp, **({"include_optimizer": False} if suffix == ".h5" else {}))
    finally:
        absl.removeFilter(_drop_hdf5_advice)
        model.optimizer, model.compiled = optimizer, compiled


def _drop_hdf5_advice(record: logging.LogRecord) -> bool:
    return "considered legacy" not in record.getMessage()


class SmoothedSparseCrossentropy(keras.losses.Loss):
    """Cross-entropy on integer labels with ``--label_smoothing``: the target is
    1 - s + s/classes for the true class and s/classes for the others (PyTorch's
    ``CrossEntropyLoss(label_smoothing=s)``)."""

    def __init__(self, num_classes: int, smoothing: float, **kwargs):
        super().__init__(name="smoothed_crossentropy", **kwargs)
        self.num_classes, self.smoothing = num_classes, smoothing

    def call(self, y_true, y_pred):
        labels = keras.ops.cast(keras.ops.reshape(y_true, (-1,)), "int32")
        target = keras.ops.one_hot(labels, self.num_classes, dtype=y_pred.dtype)
        return keras.losses.categorical_crossentropy(target, y_pred,
                                                     label_smoothing=self.smoothing)


def make_optimizer(config, learning_rate: float):
    """Adam or AdamW (``--optimizer``), keeping a moving average of the weights with
    ``--ema``; the average is swapped in by ``KerasTrainingBackend.swap_ema_weights``, never written
    over the weights at the end of ``fit`` (Keras' default)."""
    kwargs = {"learning_rate": learning_rate}
    if config is not None and config.ema:
        kwargs.update(use_ema=True, ema_momentum=config.ema)
    if config is not None and config.optimizer == "adamw":
        optimizer = keras.optimizers.AdamW(weight_decay=config.weight_decay, **kwargs)
    else:
        optimizer = keras.optimizers.Adam(**kwargs)
    if kwargs.get("use_ema"):
        optimizer.finalize_variable_values = lambda variables: None
    return optimizer


def compile_model(model: keras.Model, learning_rate: float, num_classes: int,
                  config=None) -> None:
    """Optimizer, loss and metrics of ``config``'s recipe (Adam, plain cross-entropy when
    ``config`` is None)."""
    smoothing = config.label_smoothing if config is not None else 0.0
    loss = SmoothedSparseCrossentropy(num_classes, smoothing) if smoothing else \
        keras.losses.SparseCategoricalCrossentropy()
    metrics = [keras.metrics.SparseCategoricalAccuracy(name="accuracy"),
               keras.metrics.SparseTopKCategoricalAccuracy(k=min(5, num_classes),
                                                           name="top5_accuracy")]
    if config is not None and config.unknown_dir:  # outlier exposure: labels of -1 too
        from pokedex_trainer.backends.keras.exposure import exposure_loss_and_metrics

        loss, metrics = exposure_loss_and_metrics(num_classes, smoothing)
    model.compile(
        # --compile: a compiled step on every backend (Keras' own "auto" runs eagerly on
        # PyTorch and without XLA on a TensorFlow CPU)
        jit_compile=True if config is not None and config.compile else "auto",
        optimizer=make_optimizer(config, learning_rate), loss=loss, metrics=metrics)


class KerasTensorBoardLog:
    """Keras-named scalars, weight and gradient histograms and an augmented-sample grid,
    flushed every epoch so a live TensorBoard shows each epoch; the same tags on every backend.

    Args:
        keras_on: Keras on this process's backend (writer and gradients).
        model: the model being trained.
        log_dir: the run's TensorBoard directory.
        sample_batch: (images uint8, labels) of training data, for gradients and the image grid.
        histogram_freq: epochs between weight/gradient/activation histograms; 0 for none.
        activations: images -> outputs of the chosen backbone stages (``activation_probe``),
            or None.
    """

    def __init__(self, keras_on, model: keras.Model, log_dir,
                 sample_batch: tuple[np.ndarray, np.ndarray], histogram_freq: int = 1,
                 activations=None):
        self.keras_on, self.model = keras_on, model
        self.histogram_freq = histogram_freq
        self.writer = keras_on.writer(log_dir)
        self.sample_batch = sample_batch
        self.activations = activations

    def log_samples(self) -> None:
        self.writer.image(SAMPLE_IMAGES_TAG, image_grid(self.sample_batch[0]), 0)
        self.writer.flush()

    def _log_histograms(self, epoch: int) -> None:
        for weight in self.model.weights:
            self.writer.histogram(f"{weight.path}/histogram", weight.value, epoch)
        images, labels = self.sample_batch
        for variable, gradient in self.keras_on.gradients(self.model, images, labels) or []:
            self.writer.histogram(f"gradients/{variable.path}", gradient, epoch)
        if self.activations is not None:
            for stage, values in enumerate(self.activations(images[:ACTIVATION_IMAGES]), 1):
                self.writer.histogram(activation_tag(stage), values, epoch)

    def log_epoch(self, epoch: int, logs: dict) -> None:
        train_scalars, val_scalars = split_epoch_logs(logs)
        for tag, value in train_scalars.items():
            self.writer.scalar("train", tag, value, epoch)
        for tag, value in val_scalars.items():
            self.writer.scalar("val", tag, value, epoch)
        if self.histogram_freq and epoch % self.histogram_freq == 0:
            self._log_histograms(epoch)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def configure_precision(mixed: bool, keras_on) -> None:
    if not mixed:
        keras.mixed_precision.set_global_policy("float32")
        return
    if keras_on.gpus:
        keras.mixed_precision.set_global_policy("mixed_float16")
    else:
        logger.warning("--mixed_precision without a GPU uses bfloat16, which most CPUs run "
                       "slower than float32")
        keras.mixed_precision.set_global_policy("mixed_bfloat16")


WEIGHTS_FILE = "weights.weights.h5"
OPTIMIZER_FILE = "optimizer.npz"


def save_training_state(folder: Path, model: keras.Model) -> None:
    """Weights and optimizer variables (moments, step, learning rate) of the last epoch."""
    model.save_weights(folder / WEIGHTS_FILE)
    buffer = io.BytesIO()
    np.savez(buffer, *[np.asarray(v) for v in model.optimizer.variables])
    (folder / OPTIMIZER_FILE).write_bytes(buffer.getvalue())


def restore_training_state(folder: Path, model: keras.Model) -> None:
    import warnings

    weights = folder / WEIGHTS_FILE
    with warnings.catch_warnings():  # the optimizer is restored below, from optimizer.npz
        warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
        model.load_weights(weights)
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


def find_batch_size(config, spec, num_classes: int):
    """--batch_size auto: real training steps at growing batch sizes (see core/batch_size.py)."""
    from pokedex_trainer.core.batch_size import PeakRSS, find_batch_size, ram_limit
    from pokedex_trainer.core.phases import Phase

    keras_on = keras_on_current_backend()
    configure_precision(config.mixed_precision, keras_on)
    # Random weights, everything trainable: the most memory either phase can need.
    model = build_model(spec, num_classes, config.image_size, "none", config.dropout)
    apply_phase(model, Phase("probe", 1, 1e-3, "all"))
    compile_model(model, 1e-3, num_classes)
    height, width = config.image_size

    def measure(batch: int):
        def step():
            model.train_on_batch(np.full((batch, height, width, 3), 128, np.float32),
                                 np.zeros(batch, np.int32))

        try:
            if keras_on.gpus:
                return keras_on.peak_memory(step)
            with PeakRSS() as watch:
                step()
            return watch.peak
        except keras_on.out_of_memory:
            return None

    if keras_on.gpus:
        limit = (config.memory_limit_mb or 0) * 2**20 or 2**62  # the GPU's own OOM decides
        return find_batch_size(measure, limit, "GPU memory", resettable=True)
    return find_batch_size(measure, ram_limit(config.memory_limit_mb), "RAM", resettable=False)


class _StopOnInterrupt(keras.callbacks.Callback):
    """End fit, evaluate or predict after the current batch when Ctrl-C asked to stop (see
    core/interrupt.py); the core loop then discards what the cut-short pass returned."""

    def on_train_batch_end(self, batch, logs=None):
        if INTERRUPT.requested:
            self.model.stop_training = True

    def on_test_batch_end(self, batch, logs=None):
        if INTERRUPT.requested:
            self.model.stop_evaluating = True

    def on_predict_batch_end(self, batch, logs=None):
        if INTERRUPT.requested:
            self.model.stop_predicting = True


class _BatchProgress(keras.callbacks.ProgbarLogger):
    """Keras' progress bar without its "Epoch e/E" header: the core fits one epoch at a time
    (E would be wrong) and logs each epoch's own line."""

    def set_params(self, params):
        super().set_params(params)
        self.epochs = 1


class KerasTrainingBackend:
    """Keras 3 work for the core phase loop (see core/training_backend.py for the contract).

    Args:
        context: the run.
    """

    main_process = True
    graceful_interrupt = True  # a KeyboardInterrupt inside tf.data can deadlock: see core/interrupt

    def __init__(self, context: RunContext):
        config = context.config
        self.context = context
        self.keras_on = keras_on_current_backend()
        self.keras_on.seed(config.seed)
        if config.deterministic:
            self.keras_on.set_deterministic()
        self.device = f"{self.keras_on.describe()}, Keras on {self.keras_on.name}"
        logger.info("Keras backend: %s, device: %s", self.keras_on.name, self.keras_on.describe())
        configure_precision(config.mixed_precision, self.keras_on)
        with self.keras_on.strategy_scope():
            self.model = build_model(context.spec, context.num_classes, config.image_size,
                                     config.weights, config.dropout, config.base_model)
            # compiled from the start: a resumed run with no epoch left still evaluates
            compile_model(self.model, config.learning_rate, context.num_classes, config)
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
        self.tensorboard = KerasTensorBoardLog(self.keras_on, self.model, context.tensorboard_dir,
                                             (sample.images, sample.labels),
                                             config.histogram_freq,
                                             activation_probe(self.model, context.spec.model_type))
        self.tensorboard.log_samples()
        self.train_ds = self.keras_on.feed(self.train_loader, config.image_size,
                                           context.class_weights(), config.unknown_weight
                                           if config.unknown_dir else None)
        self.val_ds = self.keras_on.feed(self.val_loader, config.image_size)

    def start_phase(self, phase: Phase, learning_rate: float) -> None:
        apply_phase(self.model, phase)
        with self.keras_on.strategy_scope():
            compile_model(self.model, learning_rate, self.context.num_classes,
                          self.context.config)

    def set_learning_rate(self, learning_rate: float) -> None:
        self.model.optimizer.learning_rate = learning_rate

    def swap_ema_weights(self) -> None:
        """Exchange the weights and their moving average (``--ema``; twice restores them)."""
        optimizer = self.model.optimizer
        if not getattr(optimizer, "use_ema", False) or \
                not getattr(optimizer, "_model_variables_moving_average", None):
            return
        for variable, average in zip(optimizer._trainable_variables,
                                     optimizer._model_variables_moving_average):
            kept = keras.ops.convert_to_numpy(variable)
            variable.assign(keras.ops.convert_to_numpy(average))
            average.assign(kept)

    def learning_rate(self) -> float:
        return float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))

    def fit_epoch(self, epoch: int, phase: Phase) -> dict:
        self.train_loader.epoch = epoch
        self.keras_on.set_epoch(self.train_ds, epoch)
        history = self.model.fit(self.train_ds, initial_epoch=epoch, epochs=epoch + 1,
                                 shuffle=False, verbose=1 if _interactive() else 0,
                                 callbacks=[keras.callbacks.TerminateOnNaN(), _StopOnInterrupt(),
                                            _BatchProgress()])
        return {key: float(values[-1]) for key, values in history.history.items()}

    def evaluate(self, split: str) -> dict:
        if split == "val":
            return _evaluate(self.model, self.val_ds)
        loader = self.context.make_loader(split, training=False)
        try:
            return _evaluate(self.model, self.keras_on.feed(loader,
                                                            self.context.config.image_size))
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

    def load_state(self, folder: Path) -> None:
        restore_training_state(folder, self.model)

    def log_epoch(self, epoch: int, logs: dict) -> None:
        self.tensorboard.log_epoch(epoch, logs)

    def close(self) -> None:
        self.train_loader.close()
        self.val_loader.close()
        if self.tensorboard is not None:
            self.tensorboard.close()


def _evaluate(model: keras.Model, dataset) -> dict:
    results = model.evaluate(dataset, verbose=0, return_dict=True,
                             callbacks=[_StopOnInterrupt()])
    return {k: float(v) for k, v in results.items()}


def _interactive() -> bool:
    import sys

    return sys.stdout.isatty()


Backend = KerasTrainingBackend
