"""The PyTorch training backend: ResNet152 (and EfficientNetB7, MobileNetV2 with --framework pytorch)
from torchvision. Imports torch; never TensorFlow."""

from pokedex_trainer.core.tensorboard import tensorboard_without_tensorflow

# torch.utils.tensorboard goes through tensorboard.compat: keep TensorFlow out of the process.
tensorboard_without_tensorflow()
