"""TensorBoard for a PyTorch run: the Keras runs' tags through PyTorch's SummaryWriter."""

from __future__ import annotations

import numpy as np
from torch import nn

from pokedex_trainer.core.tensorboard import (
    SAMPLE_IMAGES_TAG,
    TRAIN_SUBDIR,
    VALIDATION_SUBDIR,
    activation_tag,
    image_grid,
    split_epoch_logs,
)


class TorchTensorBoardLog:
    """The same tags as the Keras runs, through PyTorch's SummaryWriter, flushed every epoch."""

    def __init__(self, log_dir, histogram_freq: int, activations=None):
        from torch.utils.tensorboard import SummaryWriter

        self.train = SummaryWriter(str(log_dir / TRAIN_SUBDIR))
        self.val = SummaryWriter(str(log_dir / VALIDATION_SUBDIR))
        self.histogram_freq = histogram_freq
        self.activations = activations  # () -> outputs of the chosen backbone stages

    def log_samples(self, images: np.ndarray) -> None:
        self.train.add_image(SAMPLE_IMAGES_TAG, image_grid(images), 0, dataformats="HWC")
        self.train.flush()

    def log_epoch(self, epoch: int, logs: dict, model: nn.Module) -> None:
        """Scalars, and weight/gradient histograms when due."""
        train_scalars, val_scalars = split_epoch_logs(logs)
        for tag, value in train_scalars.items():
            self.train.add_scalar(tag, value, epoch)
        for tag, value in val_scalars.items():
            self.val.add_scalar(tag, value, epoch)
        if self.histogram_freq and epoch % self.histogram_freq == 0:
            for name, parameter in model.named_parameters():
                self.train.add_histogram(f"{name}/histogram", parameter.detach().float(), epoch)
                if parameter.grad is not None:  # the last step's gradients
                    self.train.add_histogram(f"gradients/{name}", parameter.grad.float(), epoch)
            for stage, values in enumerate(self.activations() if self.activations else [], 1):
                self.train.add_histogram(activation_tag(stage), values, epoch)
        self.train.flush()
        self.val.flush()

    def close(self) -> None:
        self.train.close()
        self.val.close()
