"""The Keras 3 side: EfficientNetB7 and MobileNetV2 on TensorFlow, PyTorch or JAX.

The backend is chosen (``select.py``) before Keras is first imported; importing this package
imports no framework.
"""

import os

# TensorFlow's C++ start-up chatter (oneDNN, CUDA probing) is noise for our users.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
