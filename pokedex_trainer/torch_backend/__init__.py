"""The PyTorch side: ResNet152 from torchvision. Imports torch; never TensorFlow."""

import sys
import types

# torch.utils.tensorboard goes through tensorboard.compat, which imports TensorFlow when it is
# installed (seconds and a GB of memory for nothing). The presence of this module is
# TensorBoard's own switch for its TensorFlow-free stub. It is process-wide, and it would break
# tf.summary for a process that also runs Keras, so it is set only when TensorFlow is not
# already loaded (a process that needs both must import TensorFlow first).
if "tensorflow" not in sys.modules:
    sys.modules.setdefault("tensorboard.compat.notf", types.ModuleType("tensorboard.compat.notf"))
