"""Which Keras 3 backend a Keras run uses: TensorFlow, PyTorch or JAX.

Imports no framework: the choice must be made before Keras is first imported, and the device
probes of ``auto`` run in child processes, so the training process never holds a second
framework (importing PyTorch after TensorFlow crashes it).
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
import shutil
import subprocess
import sys

from pokedex_trainer.errors import UserError

logger = logging.getLogger(__name__)

BACKENDS = ("tensorflow", "torch", "jax")
CHOICES = ("auto",) + BACKENDS
PACKAGE = {"tensorflow": "tensorflow", "torch": "torch", "jax": "jax"}
INSTALL = {"tensorflow": "python -m pip install tensorflow==2.21.0",
           "torch": "python -m pip install torch==2.14.1",
           "jax": 'python -m pip install "jax[cuda12]"  (or "jax" for the CPU)'}
PROBES = {
    "tensorflow": "import os; os.environ['TF_CPP_MIN_LOG_LEVEL'] = '3'; import tensorflow as tf; "
                  "print(len(tf.config.list_physical_devices('GPU')))",
    "torch": "import torch; print(int(torch.cuda.is_available() or "
             "torch.backends.mps.is_available()))",
    "jax": "import jax; print(int(jax.devices()[0].platform == 'gpu'))",
}


# A Keras 3.15 training step of MobileNetV2 (224 px, batch 64, mixed precision) in images/s on
# one H200 (issue #23; TensorFlow was not installed there): what ``auto`` orders the backends
# that see a GPU by, fastest first. TensorFlow, which Keras compiles with XLA wherever it sees a
# GPU, stays first: the guide's backend. benchmarks/gpu_smoke.sh measures them again.
MEASURED_IMAGES_PER_SECOND = {"jax": 2053.0, "torch": 432.0}
SEES = {"tensorflow": "TensorFlow sees a GPU",
        "torch": "PyTorch sees a CUDA or MPS device",
        "jax": "JAX sees a GPU"}


def gpu_order() -> tuple[str, ...]:
    """The backends ``auto`` tries on a GPU machine: TensorFlow, then the others by their
    measured speed (MEASURED_IMAGES_PER_SECOND)."""
    others = sorted(("torch", "jax"), key=lambda b: -MEASURED_IMAGES_PER_SECOND[b])
    return ("tensorflow", *others)


def installed(backend: str) -> bool:
    return importlib.util.find_spec(PACKAGE[backend]) is not None


@functools.lru_cache(maxsize=None)
def probe(backend: str) -> bool:
    """Does ``backend`` see a GPU? Asked once, in a child process (see the module docstring)."""
    if not installed(backend):
        return False
    try:
        result = subprocess.run([sys.executable, "-c", PROBES[backend]], capture_output=True,
                                text=True, timeout=120)
        return result.returncode == 0 and result.stdout.strip().splitlines()[-1] not in ("", "0")
    except (subprocess.TimeoutExpired, OSError, IndexError):
        return False


def maybe_gpu() -> bool:
    """False when no GPU can be there at all (no NVIDIA tool, not a Mac): probes are skipped."""
    return sys.platform == "darwin" or shutil.which("nvidia-smi") is not None


def choose(requested: str, probe=probe) -> tuple[str, str]:
    """(backend, why) for ``--keras_backend``. ``auto``: the first of ``gpu_order()`` that sees
    a GPU (TensorFlow, then JAX, then PyTorch, by measured speed), else TensorFlow on the CPU.
    The environment variable KERAS_BACKEND stands in for ``auto`` when set."""
    if requested == "auto" and os.environ.get("KERAS_BACKEND") in BACKENDS:
        requested = os.environ["KERAS_BACKEND"]
        why = "from the environment variable KERAS_BACKEND"
    else:
        why = "asked with --keras_backend"
    if requested != "auto":
        if requested not in BACKENDS:
            raise UserError(f"--keras_backend must be one of {', '.join(CHOICES)}")
        if not installed(requested):
            raise UserError(f"--keras_backend {requested}: {PACKAGE[requested]} is not "
                            f"installed; install it with: {INSTALL[requested]}")
        return requested, why
    if maybe_gpu():
        skipped = []
        for backend in gpu_order():
            if probe(backend):
                measured = MEASURED_IMAGES_PER_SECOND.get(backend)
                note = f", measured {measured:.0f} img/s for MobileNetV2 on an H200" \
                    if measured else ""
                after = f" ({', '.join(skipped)} sees no GPU)" if skipped else ""
                return backend, f"auto: {SEES[backend]}{after}{note}"
            skipped.append({"tensorflow": "TensorFlow", "torch": "PyTorch",
                            "jax": "JAX"}[backend])
    if installed("tensorflow"):
        return "tensorflow", "auto: no backend sees a GPU, TensorFlow on the CPU"
    for backend in ("torch", "jax"):
        if installed(backend):
            return backend, f"auto: no GPU, and TensorFlow is not installed: {backend} on the CPU"
    raise UserError("no Keras backend is installed: " + INSTALL["tensorflow"])


def reading_backend() -> str:
    """The backend a process that only reads .keras files uses: Keras' own if it is loaded,
    else KERAS_BACKEND, else TensorFlow when installed (a .keras file reads on any)."""
    if "keras" in sys.modules:
        import keras

        return keras.backend.backend()
    if os.environ.get("KERAS_BACKEND") in BACKENDS:
        return os.environ["KERAS_BACKEND"]
    return next((b for b in BACKENDS if installed(b)), "tensorflow")


def activate(backend: str) -> None:
    """Make ``backend`` the Keras backend of this process, before Keras is imported.

    Raises UserError when Keras already runs on another backend here (Python API), or when
    the backend is not installed.
    """
    if "keras" in sys.modules:
        import keras

        current = keras.backend.backend()
        if current != backend:
            raise UserError(f"Keras already runs on {current} in this process; a "
                            f"{backend} run needs a new process (KERAS_BACKEND={backend})")
        return
    if not installed(backend):
        raise UserError(f"Keras backend {backend}: {PACKAGE[backend]} is not installed; install "
                        f"it with: {INSTALL[backend]}")
    os.environ["KERAS_BACKEND"] = backend
    if backend == "tensorflow":  # its start-up lines on stderr look like errors: kept quiet
        from pokedex_trainer.machine.native_noise import import_tensorflow_quietly

        import_tensorflow_quietly()
