"""TensorFlow's start-up lines on stderr, kept from users who did not ask for them.

Importing TensorFlow and its first device query write, from C++, straight to the process's
stderr: ``I0000 ... oneDNN custom operations are on``, ``E0000 ... failed call to cuInit`` on
every machine without a GPU, ``WARNING: All log messages before absl::InitializeLog()...``.
They look like errors and are not (``TF_CPP_MIN_LOG_LEVEL`` does not reach them: they come
before TensorFlow reads it). While TensorFlow starts, stderr goes to a temporary file; what
is not such a line (a Python warning, a fatal ``F`` line) is written back afterwards.
``TF_CPP_MIN_LOG_LEVEL=0`` (or 1) shows everything, as TensorFlow would.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from contextlib import contextmanager

NOISE = re.compile(rb"^(?:[IWE]\d{4} [\d:.]+\s+\d+ \S+:\d+\] "
                   rb"|WARNING: All log messages before absl::InitializeLog\(\) is called"
                   rb"|To enable the following instructions: )")


def asked_for() -> bool:
    return os.environ.get("TF_CPP_MIN_LOG_LEVEL", "").strip() in ("0", "1")


@contextmanager
def without_native_noise():
    """Inside: stderr's start-up noise is dropped; every other line is kept (see above)."""
    if asked_for():
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            try:
                sys.stderr.flush()
            except (OSError, ValueError):
                pass
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            kept = [line for line in sink.read().splitlines(keepends=True)
                    if not NOISE.match(line)]
            if kept:
                os.write(2, b"".join(kept))


def import_tensorflow_quietly():
    """``import tensorflow`` and its first device query (where cuInit complains), quietly."""
    if "tensorflow" in sys.modules:
        import tensorflow

        return tensorflow
    with without_native_noise():
        import tensorflow

        tensorflow.config.list_physical_devices("GPU")
    return tensorflow
