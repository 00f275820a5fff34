"""Any model file this project writes, run in its own runtime: one ``predict`` for all of them.

``load_predictor(path)`` picks the runtime from the file: Keras (``.keras``/``.h5``), PyTorch
checkpoints (``.pth``), TorchScript (``.pt``), ``torch.export`` programs (``.pt2``), ONNX Runtime
(``.onnx``), the LiteRT interpreter (``.tflite``) and TensorFlow SavedModel folders. Exported files
are described by a sidecar JSON beside them (``model.onnx`` -> ``model.onnx.json``, see
evaluation/model_files.py): class names, input size, layout and the arithmetic to apply to RGB
0..255 pixels before the model. The predictor follows the sidecar exactly as an app would, so a
wrong sidecar shows up as wrong predictions in the parity check.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
from pathlib import Path

import numpy as np

from pokedex_trainer.errors import UserError, reason_line
from pokedex_trainer.evaluation.model_files import (
    ModelInfo,
    class_names_near,
    framework_of,
    import_frameworks,
    read_sidecar,
)

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def _quiet_logger(name: str):
    log = logging.getLogger(name)
    was = log.disabled
    log.disabled = True
    try:
        yield
    finally:
        log.disabled = was


def _threads() -> int:
    """OMP_NUM_THREADS when it is a whole number above 0, else every core."""
    text = os.environ.get("OMP_NUM_THREADS", "").strip()
    return int(text) if text.isdigit() and int(text) > 0 else os.cpu_count() or 1


class Predictor:
    """A loaded model: ``predict(images)`` takes uint8 RGB (N, H, W, 3), returns probabilities."""

    runtime = ""

    def __init__(self, path: Path, info: ModelInfo):
        self.path = Path(path)
        self.info = info
        self.threads = _threads()

    def prepare(self, images: np.ndarray) -> np.ndarray:
        """Pixels as the model takes them, following ``info`` (the sidecar for exports)."""
        x = images.astype(np.float32)
        mean, std = np.asarray(self.info.mean, np.float32), np.asarray(self.info.std, np.float32)
        if mean.any() or (std != 1).any():
            x = (x - mean) / std
        if self.info.layout == "NCHW":
            x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
        return x

    def predict(self, images: np.ndarray) -> np.ndarray:
        return self.predict_and_score(images)[0]

    def predict_and_score(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(probabilities, the file's ``known_score`` output or None) of uint8 images: an
        export whose "unknown" rule is not max softmax computes that score itself."""
        out, score = split_outputs(self._run(self.prepare(images)), self.info.num_classes)
        out = np.asarray(out, dtype=np.float64)
        if self.info.output == "logits":
            out = softmax(out)
        return out, score

    def _run(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def timed_calls(self, images: np.ndarray, warmup: int, runs: int) -> list[float] | None:
        """Milliseconds of each of ``runs`` calls on ``images`` after ``warmup``, timed where
        the model runs; None: time ``predict`` from here."""
        return None

    def logits_and_features(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """(logits, penultimate features) of uint8 images, for the unknown-photo scores;
        None for a file that gives probabilities only (every export)."""
        return None

    def describe(self) -> str:
        return f"{self.path.name} ({self.runtime})"


def split_outputs(out, num_classes: int) -> tuple[np.ndarray, np.ndarray | None]:
    """(the (N, classes) scores, the (N,) ``known_score`` or None) of a model's output(s):
    found by shape, since runtimes order and name a file's outputs each their own way."""
    if not isinstance(out, (list, tuple, dict)):
        return np.asarray(out), None
    arrays = [np.asarray(o) for o in (out.values() if isinstance(out, dict) else out)]
    main = next((a for a in arrays if a.ndim == 2 and a.shape[1] == num_classes), arrays[0])
    score = next((a.reshape(-1).astype(np.float64) for a in arrays if a is not main and (
        a.ndim == 1 or (a.ndim == 2 and a.shape[1] == 1))), None)
    return main, score


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


class KerasPredictor(Predictor):
    runtime = "keras"

    def __init__(self, path: Path, class_names: list[str] | None = None):
        import keras

        from pokedex_trainer.backends.keras import keras_networks  # noqa: F401  (backend setup)

        try:
            self.model = keras.models.load_model(path, compile=False)
        except Exception as exc:
            raise UserError(f"could not load Keras model '{path}': "
                            f"{reason_line(exc)}") \
                from None
        names = class_names or class_names_near(path)
        if names is None:
            raise UserError(f"no class list for '{path}': expected class_names.json beside it")
        _, height, width, _ = self.model.input_shape
        from pokedex_trainer.networks import all_specs

        spec = next((s for s in all_specs()
                     if s.framework == "keras" and s.arch == self.model.name), None)
        super().__init__(path, ModelInfo(list(names), (height, width), "NHWC",
                                         model_type=spec.model_type if spec else "",
                                         arch=self.model.name, source_framework="keras"))

        if keras.backend.backend() != "tensorflow":
            self._call = lambda x: self.model(x, training=False)
            return
        import tensorflow as tf

        # One traced graph for every batch size: an eager Keras call costs tens of ms of
        # Python per batch, which would swamp the batch-1 latency.
        self._call = tf.function(lambda x: self.model(x, training=False),
                                 input_signature=[tf.TensorSpec([None, height, width, 3],
                                                                tf.float32)])

    def _run(self, x):
        import keras

        return keras.ops.convert_to_numpy(self._call(x))

    def logits_and_features(self, images):
        import keras

        from pokedex_trainer.backends.keras.keras_networks import HEAD_NAME, POOLING_NAME

        names = {layer.name for layer in self.model.layers}
        if HEAD_NAME not in names or POOLING_NAME not in names:
            return None  # not a network of this tool's shape (the guide's own, say)
        if getattr(self, "_features", None) is None:
            self._features = keras.Model(self.model.input,
                                         self.model.get_layer(POOLING_NAME).output)
        features = np.concatenate([
            keras.ops.convert_to_numpy(self._features(self.prepare(images[i:i + 64]),
                                                      training=False))
            for i in range(0, len(images), 64)]).astype(np.float64)
        weight, bias = self.model.get_layer(HEAD_NAME).get_weights()
        return features @ weight.astype(np.float64) + bias, features


class TorchCheckpointPredictor(Predictor):
    runtime = "pytorch"

    def __init__(self, path: Path, class_names: list[str] | None = None):
        import torch

        from pokedex_trainer.backends.torch.torch_networks import load_checkpoint, why_not_tensors

        try:
            self.model, payload = load_checkpoint(path)
        except UserError:
            raise
        except Exception as exc:
            raise UserError(f"could not load PyTorch checkpoint '{path}' (only checkpoints "
                            f"this project wrote are read): {why_not_tensors(exc)}") from None
        from pokedex_trainer.user_io.checked_values import checkpoint_problem

        problem = checkpoint_problem(payload)
        if problem:
            raise UserError(f"{path}: {problem}; the checkpoint's description is damaged "
                            "(restore the file, or train the run again)")
        self._torch = torch
        super().__init__(path, ModelInfo(list(payload["class_names"]),
                                         tuple(payload["image_size"]), "NCHW",
                                         model_type=payload["model_type"], arch=payload["arch"],
                                         source_framework="torch"))

    def _run(self, x):
        with self._torch.inference_mode():
            return self.model.probabilities(self._torch.from_numpy(x)).numpy()

    def logits_and_features(self, images):
        model = self.model
        if not all(hasattr(model, part) for part in ("normalize", "backbone", "head")):
            return None  # not a network of this tool's shape (the guide's own, say)
        torch = self._torch
        logits, features = [], []
        with torch.inference_mode():
            for start in range(0, len(images), 64):
                inner = model.backbone(model.normalize(torch.from_numpy(
                    self.prepare(images[start:start + 64])))).float()
                features.append(inner.double().numpy())
                logits.append(model.head(inner).double().numpy())
        return np.concatenate(logits), np.concatenate(features)


class _SidecarPredictor(Predictor):
    """An exported file: everything about its input comes from the sidecar, which must
    describe the file (one image of its size and layout in, one score per class out)."""

    def __init__(self, path: Path, checked=None):
        from pokedex_trainer.evaluation.safe_loading import check_can_open

        # what the trust check read (bytes, or a private copy): the loaders read only this
        self.checked = checked or check_can_open(Path(path))
        self.sidecar = read_sidecar(path)
        super().__init__(path, ModelInfo.from_sidecar(self.sidecar))
        self.load()
        self._check_sidecar()

    def _check_sidecar(self) -> None:
        info = self.info
        try:
            out, _ = split_outputs(self._run(self.prepare(np.zeros((1, *info.image_size, 3),
                                                                   np.uint8))),
                                   info.num_classes)
        except UserError:  # the runtime's process: a deadline, a refusal, a death
            raise
        except Exception as exc:
            raise UserError(f"'{self.path}' does not take the input its sidecar describes "
                            f"({info.layout}, {info.image_size[0]}x{info.image_size[1]}): "
                            f"{reason_line(exc)}"
                            ) from None
        if out.shape != (1, info.num_classes):
            raise UserError(f"'{self.path}' answers with shape {tuple(out.shape)}, but its "
                            f"sidecar names {info.num_classes} classes")
        if not np.isfinite(out.astype(np.float64)).all():
            raise UserError(f"'{self.path}' answers a black image with NaN or infinite scores "
                            "(its weights or its sidecar's mean and std are broken)")
        row = out.astype(np.float64)[0]
        if info.output == "probabilities" and (row.min() < -1e-3 or abs(row.sum() - 1) > 1e-2):
            raise UserError(f"'{self.path}': its sidecar says it answers probabilities, but it "
                            f"answers a black image with scores summing to {row.sum():.4g} "
                            "(say \"kind\": \"logits\" in the sidecar's output if they are "
                            "logits)")

    def load(self) -> None:
        raise NotImplementedError


class TorchScriptPredictor(_SidecarPredictor):
    runtime = "torchscript"

    def load(self):
        import warnings

        import torch

        self._torch = torch
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # "torch.jit.load is deprecated"
            self.model = torch.jit.load(io.BytesIO(self.checked.data), map_location="cpu").eval()

    def _run(self, x):
        with self._torch.inference_mode():
            return _numpy(self.model(self._torch.from_numpy(x)))


class TorchExportPredictor(_SidecarPredictor):
    runtime = "torch.export"

    def load(self):
        import torch

        self._torch = torch
        with _quiet_logger("torch.export"):  # it logs failures with a traceback, then raises
            self.model = torch.export.load(io.BytesIO(self.checked.data)).module()

    def _run(self, x):
        with self._torch.inference_mode():
            return _numpy(self.model(self._torch.from_numpy(x)))


class OnnxPredictor(_SidecarPredictor):
    """ONNX Runtime in a child process killed at a deadline (evaluation/model_child.py)."""

    runtime = "onnxruntime"
    kind = "onnx"

    def load(self):
        from pokedex_trainer.evaluation.model_child import ModelChild

        self.child = ModelChild(self.path, self.kind, self.info.input_shape(1), self.threads)
        self.providers = self.child.details["providers"]

    def _run(self, x):
        return self.child.run(x)

    def timed_calls(self, images, warmup: int, runs: int):
        return self.child.time_calls(self.prepare(images), warmup, runs)


class TFLitePredictor(OnnxPredictor):
    """The LiteRT interpreter, in a child process like ONNX Runtime; quantized inputs and
    outputs are (de)quantized there."""

    runtime = "litert"
    kind = "tflite"


def _quantize(x: np.ndarray, detail: dict) -> np.ndarray:
    if detail["dtype"] == np.float32:
        return x
    scale, zero_point = detail["quantization"]
    info = np.iinfo(detail["dtype"])
    return np.clip(np.round(x / scale + zero_point), info.min, info.max).astype(detail["dtype"])


def _dequantize(y: np.ndarray, detail: dict) -> np.ndarray:
    if detail["dtype"] == np.float32:
        return y
    scale, zero_point = detail["quantization"]
    return (y.astype(np.float32) - zero_point) * scale


class SavedModelPredictor(_SidecarPredictor):
    runtime = "tf.saved_model"

    def load(self):
        import tensorflow as tf

        self._tf = tf
        self.model = tf.saved_model.load(str(self.checked.folder))

    def _run(self, x):
        return _numpy(self.model.serve(self._tf.constant(x)))


def _numpy(out):
    """A tensor, or a tuple/list/dict of them (probabilities and known_score), as numpy."""
    if isinstance(out, dict):
        return {key: np.asarray(value) for key, value in out.items()}
    if isinstance(out, (list, tuple)):
        return [np.asarray(value) for value in out]
    return out.numpy() if hasattr(out, "numpy") else np.asarray(out)


_BY_SUFFIX = {".keras": KerasPredictor, ".h5": KerasPredictor,
              ".pth": TorchCheckpointPredictor, ".pt": TorchScriptPredictor,
              ".pt2": TorchExportPredictor, ".onnx": OnnxPredictor, ".tflite": TFLitePredictor}


def load_predictor(path: Path | str, class_names: list[str] | None = None,
                   trust: bool = False) -> Predictor:
    """The predictor of any model file this project writes; UserError when it cannot be read
    or could run code when opened (see evaluation/safe_loading.py).

    ``class_names`` only matters for Keras files without a ``class_names.json`` beside them.
    ``trust``: open a code-bearing file (TorchScript, SavedModel) without the trust record,
    for the file export.py has just written.
    """
    from pokedex_trainer.evaluation.safe_loading import check_can_open

    path = Path(path)
    if not path.exists():
        raise UserError(f"model '{path}' does not exist")
    framework = framework_of(path)
    checked = check_can_open(path, trust)
    import_frameworks({framework})
    cls = SavedModelPredictor if path.is_dir() else _BY_SUFFIX[path.suffix.lower()]
    if cls in (KerasPredictor, TorchCheckpointPredictor):
        return cls(path, class_names)
    try:
        return cls(path, checked)
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"could not load '{path}' in {cls.runtime}: "
                        f"{reason_line(exc)}") \
            from None
