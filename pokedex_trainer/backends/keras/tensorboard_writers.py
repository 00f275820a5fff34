"""TensorBoard event files of a Keras run, one writer per Keras backend: TensorFlow's
tf.summary, PyTorch's SummaryWriter, or the tensorboard package alone (JAX)."""

from __future__ import annotations

import keras
import numpy as np

from pokedex_trainer.core.tensorboard import (
    TRAIN_SUBDIR,
    VALIDATION_SUBDIR,
    tensorboard_without_tensorflow,
)


class _Writers:
    """The train and validation event-file writers of one run (``self.writers``)."""

    writers: dict

    def flush(self) -> None:
        for writer in self.writers.values():
            writer.flush()

    def close(self) -> None:
        for writer in self.writers.values():
            writer.close()


class TensorFlowWriter(_Writers):
    """tf.summary event files for the train and validation runs."""

    def __init__(self, log_dir):
        import tensorflow as tf

        self.tf = tf
        self.writers = {"train": tf.summary.create_file_writer(str(log_dir / TRAIN_SUBDIR)),
                        "val": tf.summary.create_file_writer(str(log_dir / VALIDATION_SUBDIR))}

    def scalar(self, which: str, tag: str, value: float, step: int) -> None:
        with self.writers[which].as_default():
            self.tf.summary.scalar(tag, value, step=step)

    def histogram(self, tag: str, values, step: int) -> None:
        with self.writers["train"].as_default():
            self.tf.summary.histogram(tag, values, step=step)

    def image(self, tag: str, grid: np.ndarray, step: int) -> None:
        with self.writers["train"].as_default():
            self.tf.summary.image(tag, grid[None], step=step)


class TorchWriter(_Writers):
    """PyTorch's SummaryWriter, the same tags (TensorBoard reads both alike)."""

    def __init__(self, log_dir):
        from pokedex_trainer.core.tensorboard import tensorboard_without_tensorflow

        tensorboard_without_tensorflow()  # before SummaryWriter is imported: no TensorFlow
        from torch.utils.tensorboard import SummaryWriter

        self.writers = {"train": SummaryWriter(str(log_dir / TRAIN_SUBDIR)),
                        "val": SummaryWriter(str(log_dir / VALIDATION_SUBDIR))}

    def scalar(self, which: str, tag: str, value: float, step: int) -> None:
        self.writers[which].add_scalar(tag, value, step)

    def histogram(self, tag: str, values, step: int) -> None:
        self.writers["train"].add_histogram(tag, np.asarray(keras.ops.convert_to_numpy(values),
                                                            np.float32), step)

    def image(self, tag: str, grid: np.ndarray, step: int) -> None:
        self.writers["train"].add_image(tag, grid, step, dataformats="HWC")


class EventWriter(_Writers):
    """Event files written with the tensorboard package alone (no TensorFlow, no PyTorch):
    the same tags and summaries as the other writers."""

    class _One:
        def __init__(self, folder):
            tensorboard_without_tensorflow()
            from tensorboard.summary.writer.event_file_writer import EventFileWriter

            self.file = EventFileWriter(str(folder))

        def add(self, value, step: int) -> None:
            import time

            from tensorboard.compat.proto import event_pb2, summary_pb2

            self.file.add_event(event_pb2.Event(wall_time=time.time(), step=int(step),
                                                summary=summary_pb2.Summary(value=[value])))

        def flush(self) -> None:
            self.file.flush()

        def close(self) -> None:
            self.file.close()

    def __init__(self, log_dir):
        self.writers = {"train": self._One(log_dir / TRAIN_SUBDIR),
                        "val": self._One(log_dir / VALIDATION_SUBDIR)}

    def scalar(self, which: str, tag: str, value: float, step: int) -> None:
        from tensorboard.compat.proto import summary_pb2

        self.writers[which].add(summary_pb2.Summary.Value(tag=tag, simple_value=float(value)),
                                step)

    def histogram(self, tag: str, values, step: int) -> None:
        from tensorboard.compat.proto import summary_pb2

        values = np.asarray(keras.ops.convert_to_numpy(values), np.float64).ravel()
        values = values[np.isfinite(values)]
        if values.size == 0:
            return
        counts, edges = np.histogram(values, bins=30)
        histogram = summary_pb2.HistogramProto(
            min=float(values.min()), max=float(values.max()), num=float(values.size),
            sum=float(values.sum()), sum_squares=float(np.square(values).sum()),
            bucket_limit=[float(edge) for edge in edges[1:]],
            bucket=[float(count) for count in counts])
        self.writers["train"].add(summary_pb2.Summary.Value(tag=tag, histo=histogram), step)

    def image(self, tag: str, grid: np.ndarray, step: int) -> None:
        import cv2
        from tensorboard.compat.proto import summary_pb2

        grid = np.ascontiguousarray(grid, np.uint8)
        ok, png = cv2.imencode(".png", cv2.cvtColor(grid, cv2.COLOR_RGB2BGR))
        if not ok:
            return
        image = summary_pb2.Summary.Image(height=grid.shape[0], width=grid.shape[1],
                                          colorspace=3, encoded_image_string=png.tobytes())
        self.writers["train"].add(summary_pb2.Summary.Value(tag=tag, image=image), step)
