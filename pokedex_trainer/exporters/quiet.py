"""Converters print pages of graph signatures and INFO lines; the user needs the verdicts."""

from __future__ import annotations

import contextlib
import io
import logging

CONVERTER_LOGGERS = ("tf2onnx", "tensorflow", "absl", "onnxscript", "onnx_ir", "torch.onnx",
                     "torch.export", "torch._export")


@contextlib.contextmanager
def quiet_converters():
    """Silence converter stdout and their loggers' INFO lines for the duration."""
    loggers = [logging.getLogger(name) for name in CONVERTER_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
