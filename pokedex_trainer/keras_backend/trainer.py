"""Two-phase Keras training of EfficientNetB7 / MobileNetV2 over the shared data layer."""

from __future__ import annotations

import io
import logging

import numpy as np
import tensorflow as tf
import keras

from ..phases import Phase
from ..runs import atomic_target, atomic_write_bytes
from ..summaries import SAMPLE_IMAGES_TAG, TRAIN_SUBDIR, VALIDATION_SUBDIR, image_grid, \
    split_epoch_logs
from ..training import RESUME_DIR, PhaseWindow, RunContext, RunState
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


class RunCallback(keras.callbacks.Callback):
    """Bridges Keras to the shared RunState: history, best checkpoint, early stopping.

    The best weights are kept in memory as well as on disk, so the final model of the run
    (and phase 2's starting point) is the best one seen, not the last.

    Args:
        context: the run.
        state: shared per-epoch bookkeeping.
        phase: the phase this fit runs.
    """

    def __init__(self, context: RunContext, state: RunState, phase: Phase):
        super().__init__()
        self.context, self.state, self.phase = context, state, phase
        self.best_weights = None

    def on_epoch_begin(self, epoch, logs=None):
        self.state.start_epoch()

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        logs["learning_rate"] = float(keras.ops.convert_to_numpy(
            self.model.optimizer.learning_rate))
        improved, stop = self.state.end_epoch(epoch, self.phase, logs)
        if improved:
            self.best_weights = self.model.get_weights()
            save_model(self.model, self.context.model_path("best"))
        if stop:
            self.model.stop_training = True


class TensorBoardLogger(keras.callbacks.Callback):
    """Keras-named scalars, weight and gradient histograms and an augmented-sample grid.

    Written with tf.summary and flushed every epoch so a live TensorBoard shows each epoch.

    Args:
        log_dir: the run's TensorBoard directory.
        sample_batch: (images uint8, labels) of training data, for gradients and the image grid.
        histogram_freq: epochs between weight/gradient histograms; 0 for none.
    """

    def __init__(self, log_dir, sample_batch: tuple[np.ndarray, np.ndarray],
                 histogram_freq: int = 1):
        super().__init__()
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

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        logs["learning_rate"] = float(keras.ops.convert_to_numpy(
            self.model.optimizer.learning_rate))
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


class ReduceLROnPlateau(keras.callbacks.ReduceLROnPlateau):
    """Keras' callback whose wait/best counters survive a resume.

    Args:
        initial_state: counters saved by ``state()`` in an interrupted run, or None.
    """

    def __init__(self, initial_state: dict | None = None, **kwargs):
        super().__init__(**kwargs)
        self.initial_state = initial_state

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        if self.initial_state:
            self.wait = self.initial_state["wait"]
            self.best = self.initial_state["best"]
            self.cooldown_counter = self.initial_state["cooldown_counter"]

    def state(self) -> dict:
        return {"wait": int(self.wait), "best": float(self.best),
                "cooldown_counter": int(self.cooldown_counter)}


class ResumeCheckpoint(keras.callbacks.Callback):
    """After every epoch (last in the callback list): what ``--resume`` needs, atomically.

    Args:
        context: the run.
        state: shared bookkeeping, which records the resume point once the files are written.
        window: the phase being trained.
        reduce_lr: the phase's ReduceLROnPlateau, whose counters are saved too.
    """

    def __init__(self, context: RunContext, state: RunState, window: PhaseWindow,
                 reduce_lr: ReduceLROnPlateau):
        super().__init__()
        self.context, self.state, self.window, self.reduce_lr = context, state, window, reduce_lr

    def on_epoch_end(self, epoch, logs=None):
        periodic = self.state.periodic_name(epoch, self.context.config.save_every)
        if periodic:
            save_model(self.model, self.context.model_path(periodic))
        save_training_state(self.context.run_dir / RESUME_DIR, self.model)
        self.state.save_resume_point(self.context.run_dir, self.window, epoch,
                                     bool(self.model.stop_training),
                                     {"reduce_lr": self.reduce_lr.state()})


def save_training_state(folder, model: keras.Model) -> None:
    """Weights and optimizer variables (moments, step, learning rate) of the last epoch."""
    folder.mkdir(exist_ok=True)
    with atomic_target(folder / "last.weights.h5", suffix=".weights.h5") as tmp:
        model.save_weights(tmp)
    buffer = io.BytesIO()
    np.savez(buffer, *[np.asarray(v) for v in model.optimizer.variables])
    atomic_write_bytes(folder / "optimizer.npz", buffer.getvalue())


def restore_training_state(folder, model: keras.Model) -> None:
    model.load_weights(folder / "last.weights.h5")
    model.optimizer.build(model.trainable_variables)
    with np.load(folder / "optimizer.npz") as saved:
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
    from ..phases import Phase

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


def train(context: RunContext, state: RunState, phases: list[Phase]) -> dict:
    """Run ``phases`` and save the models; returns the best model's test-split metrics."""
    config = context.config
    enable_memory_growth()
    keras.utils.set_random_seed(config.seed)
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    gpus = tf.config.list_logical_devices("GPU")
    state.device = f"{len(gpus)} GPU ({', '.join(g.name for g in gpus)})" if gpus else "CPU"
    configure_precision(config.mixed_precision)
    strategy = make_strategy()
    with strategy.scope():
        model = build_model(context.spec, context.num_classes, config.image_size,
                            config.weights, config.dropout, config.base_model)
    if not config.pretrained:
        logger.info("--weights none: training from scratch, nothing is frozen")
    train_loader = context.make_loader("train", training=True)
    val_loader = context.make_loader("val", training=False)
    try:
        sample = train_loader.sample_batch()
        tensorboard = TensorBoardLogger(context.tensorboard_dir, (sample.images, sample.labels),
                                        config.histogram_freq)
        tensorboard.log_samples()
        replicas = strategy.num_replicas_in_sync
        train_ds = to_dataset(train_loader, config.image_size, replicas, context.class_weights())
        val_ds = to_dataset(val_loader, config.image_size, replicas)
        best_weights = None
        for window in state.schedule(phases):
            phase = window.phase
            state.start_phase(phase, window.resumed)
            if window.restore_best:
                best_weights = load_best_weights(context)
                model.set_weights(best_weights)
            apply_phase(model, phase)
            with strategy.scope():
                compile_model(model, phase.learning_rate, context.num_classes)
                if window.resumed:
                    restore_training_state(context.run_dir / RESUME_DIR, model)
            saved = (state.resume_point or {}).get("backend", {}) if window.resumed else {}
            run_callback = RunCallback(context, state, phase)
            reduce_lr = ReduceLROnPlateau(initial_state=saved.get("reduce_lr"),
                                          monitor="val_loss", factor=config.lr_factor,
                                          patience=config.lr_patience, min_lr=config.min_lr,
                                          verbose=1)
            callbacks = [run_callback, reduce_lr, tensorboard, keras.callbacks.TerminateOnNaN(),
                         ResumeCheckpoint(context, state, window, reduce_lr)]
            train_loader.epoch = window.first
            model.fit(train_ds, validation_data=val_ds, initial_epoch=window.first,
                      epochs=window.end, shuffle=False, callbacks=callbacks,
                      verbose=1 if _interactive() else 2)
            best_weights = run_callback.best_weights or best_weights or \
                load_best_weights(context)
            if best_weights is not None:
                model.set_weights(best_weights)  # early stopping restores the best weights
        save_model(model, context.model_path("final"))
        logger.info("saved %s and %s", context.model_path("best").name,
                    context.model_path("final").name)
        return evaluate_split(model, context, "test", replicas)
    finally:
        train_loader.close()
        val_loader.close()


def load_best_weights(context: RunContext):
    """The best checkpoint's weights from disk (a resumed run has none in memory)."""
    path = context.model_path("best")
    if not path.exists():
        return None
    return keras.models.load_model(path, compile=False).get_weights()


def evaluate_split(model: keras.Model, context: RunContext, split: str,
                   replicas: int = 1) -> dict:
    """Loss, accuracy and top-5 of ``model`` on a split of the run (empty dict if no images)."""
    if not context.splits.get(split):
        return {}
    loader = context.make_loader(split, training=False)
    try:
        results = model.evaluate(to_dataset(loader, context.config.image_size, replicas),
                                 verbose=0,
                                 return_dict=True)
    finally:
        loader.close()
    metrics = {k: float(v) for k, v in results.items()}
    logger.info("%s split: accuracy %.4f, top-5 %.4f, loss %.4f", split,
                metrics.get("accuracy", float("nan")), metrics.get("top5_accuracy", float("nan")),
                metrics.get("loss", float("nan")))
    return metrics


def _interactive() -> bool:
    import sys

    return sys.stdout.isatty()
