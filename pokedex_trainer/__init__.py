"""Pokedex Ultra trainer: prepare, train, evaluate and export animal classifiers.

This package must stay importable without TensorFlow or PyTorch; the framework code lives in
``backends/keras`` and ``backends/torch`` and is imported only by the runs that need it.
"""

__version__ = "0.1.0"
