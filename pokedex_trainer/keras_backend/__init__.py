"""The Keras 3 (TensorFlow) side: EfficientNetB7 and MobileNetV2. Imports TensorFlow."""

import os

# TensorFlow's C++ start-up chatter (oneDNN, CUDA probing) is noise for our users.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
