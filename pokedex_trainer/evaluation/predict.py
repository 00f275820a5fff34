"""Any model file this project writes, run in its own runtime: one ``predict`` for all of them.

``load_predictor(path)`` picks the runtime from the file: Keras (``.keras``/``.h5``), PyTorch
checkpoints (``.pth``), TorchScript (``.pt``), ``torch.export`` programs (``.pt2``), ONNX Runtime
(``.onnx``), the LiteRT interpreter (``.tflite``) and TensorFlow SavedModel folders. Exported files
are described by a sidecar JSON beside them (``model.onnx`` -> ``model.onnx.json``): class names,
input size, layout and the arithmetic to apply to RGB 0..255 pixels before the model. The
predictor follows the sidecar exactly as an app would, so a wrong sidecar shows up as wrong
predictions in the parity check.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pokedex_trainer.errors import UserError
from pokedex_trainer.exporters.sidecar_schema import sidecar_problem

logger = logging.getLogger(__name__)

SIDECAR_SUFFIX = ".json"
KERAS_SUFFIXES = (".keras", ".h5")
TORCH_SUFFIXES = (".pth", ".pt", ".pt2")
MODEL_SUFFIXES = KERAS_SUFFIXES + TORCH_SUFFIXES + (".onnx", ".tflite")


@dataclass
class ModelInfo:
    """What it takes to feed a model and read its answer.

    Args:
        class_names: output index -> class name.
        image_size: (height, width) the model takes.
        layout: ``"NHWC"`` (Keras, TFLite, Keras-made ONNX) or ``"NCHW"`` (PyTorch).
        mean, std: per RGB channel, applied as ``(pixels - mean) / std`` to pixels in 0..255
            before the model. Ours are 0 and 1: every network normalizes inside itself.
        model_type, arch: the network (``mobilenet``, ``mobilenet_v2``).
        source_framework: ``keras`` or ``torch``.
        output: ``"probabilities"`` (softmax applied) or ``"logits"``.
    """

    class_names: list[str]
    image_size: tuple[int, int]
    layout: str = "NHWC"
    mean: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    std: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0])
    model_type: str = ""
    arch: str = ""
    source_framework: str = ""
    output: str = "probabilities"

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def to_sidecar(self, **extra) -> dict:
        """The sidecar JSON of an exported file: enough to use it without this project."""
        return {
            "class_names": list(self.class_names),
            "image_size": list(self.image_size),
            "input": {
                "layout": self.layout, "channels": "RGB", "dtype": "float32",
                "range": [0, 255], "resize": "area (cv2.INTER_AREA) to image_size",
                "mean": list(self.mean), "std": list(self.std),
                "how": "resize the photo to image_size, keep RGB pixel values 0..255 as float32, "
                       "compute (pixel - mean) / std per channel, lay out as 'layout'; the "
                       "network's own normalization is inside the model",
            },
            "output": {"kind": self.output, "order": "class_names"},
            "model_type": self.model_type, "arch": self.arch,
            "source_framework": self.source_framework, **extra,
        }

    @classmethod
    def from_sidecar(cls, data: dict) -> "ModelInfo":
        given = data["input"]
        return cls(list(data["class_names"]), tuple(int(v) for v in data["image_size"]),
                   given.get("layout", "NHWC"), list(given.get("mean", [0.0] * 3)),
                   list(given.get("std", [1.0] * 3)), data.get("model_type", ""),
                   data.get("arch", ""), data.get("source_framework", ""),
                   data.get("output", {}).get("kind", "probabilities"))


def sidecar_path(model_path: Path) -> Path:
    """``model.onnx`` -> ``model.onnx.json`` (a SavedModel folder gets ``folder.json``)."""
    model_path = Path(model_path)
    return model_path.with_name(model_path.name + SIDECAR_SUFFIX)


def read_sidecar(model_path: Path) -> dict:
    """The sidecar of an exported file, checked against its schema (UserError otherwise)."""
    path = sidecar_path(model_path)
    if not path.is_file():
        raise UserError(f"'{model_path}' has no sidecar '{path.name}' beside it (class names and "
                        "input description): export it with export.py, or keep the JSON with it")
    try:
        from pokedex_trainer.user_io.regular_files import read_regular_text

        data = json.loads(read_regular_text(path))
    except (ValueError, UnicodeDecodeError) as exc:
        raise UserError(f"sidecar '{path}' is not valid JSON: {exc}") from None
    except OSError as exc:
        raise UserError(f"sidecar '{path}' cannot be read: {exc.strerror or exc}") from None
    problem = sidecar_problem(data)
    if problem:
        raise UserError(f"sidecar '{path}' is not valid: {problem}")
    return data


def framework_of(path: Path) -> str:
    """Which framework a model file needs: keras, torch, onnx or tflite."""
    from pokedex_trainer.evaluation.safe_loading import is_saved_model

    path = Path(path)
    suffix = path.suffix.lower()
    if path.is_dir():  # a folder is a SavedModel or nothing, whatever its name says
        if is_saved_model(path):
            return "keras"
        raise UserError(f"'{path}' is a folder but not a SavedModel (no saved_model.pb): give a "
                        f"model file ({', '.join(MODEL_SUFFIXES)})")
    if suffix in KERAS_SUFFIXES:
        return "keras"
    if suffix in TORCH_SUFFIXES:
        return "torch"
    if suffix in (".onnx", ".tflite"):
        return suffix[1:]
    raise UserError(f"'{path}' is not a model file this project reads (expected one of "
                    f"{', '.join(MODEL_SUFFIXES)} or a SavedModel folder)")


@contextlib.contextmanager
def _quiet_logger(name: str):
    log = logging.getLogger(name)
    was = log.disabled
    log.disabled = True
    try:
        yield
    finally:
        log.disabled = was


def import_frameworks(frameworks: set[str]) -> None:
    """Import the frameworks a process will need, in an order that works.

    torchvision imported after TensorFlow has started crashes the process (torch._dynamo's
    import of triton); the other way round is fine. So torch comes first, always.
    """
    if "torch" in frameworks:
        import torchvision  # noqa: F401  (imports torch)
    if "keras" in frameworks:
        from pokedex_trainer.backends.keras.select import activate, reading_backend

        backend = reading_backend()
        activate(backend)
        if backend == "tensorflow":
            import tensorflow  # noqa: F401


def class_names_near(model_path: Path) -> list[str] | None:
    """``class_names.json`` beside a model (a run directory), if there is one."""
    from pokedex_trainer.runs.layout import CLASS_NAMES

    from pokedex_trainer.runs.checked_files import run_class_names

    if (Path(model_path).parent / CLASS_NAMES).is_file():
        return run_class_names(Path(model_path).parent)  # checked, and against the manifest
    return None


def _threads() -> int:
    return int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count() or 1)


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
        out = np.asarray(self._run(self.prepare(images)), dtype=np.float64)
        if self.info.output == "logits":
            out = softmax(out)
        return out

    def _run(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def describe(self) -> str:
        return f"{self.path.name} ({self.runtime})"


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


class KerasPredictor(Predictor):
    runtime = "keras"

    def __init__(self, path: Path, class_names: list[str] | None = None):
        import keras

        from pokedex_trainer.backends.keras import networks as keras_models  # noqa: F401  (backend setup)

        try:
            self.model = keras.models.load_model(path, compile=False)
        except Exception as exc:
            raise UserError(f"could not load Keras model '{path}': "
                            f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") \
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


class TorchCheckpointPredictor(Predictor):
    runtime = "pytorch"

    def __init__(self, path: Path, class_names: list[str] | None = None):
        import torch

        from pokedex_trainer.backends.torch.networks import load_checkpoint, why_not_tensors

        try:
            self.model, payload = load_checkpoint(path)
        except UserError:
            raise
        except Exception as exc:
            raise UserError(f"could not load PyTorch checkpoint '{path}' (only checkpoints "
                            f"this project wrote are read): {why_not_tensors(exc)}") from None
        from pokedex_trainer.runs.checked_files import checkpoint_problem

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
            out = np.asarray(self._run(self.prepare(np.zeros((1, *info.image_size, 3),
                                                             np.uint8))))
        except Exception as exc:
            raise UserError(f"'{self.path}' does not take the input its sidecar describes "
                            f"({info.layout}, {info.image_size[0]}x{info.image_size[1]}): "
                            f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
                            ) from None
        if out.shape != (1, info.num_classes):
            raise UserError(f"'{self.path}' answers with shape {tuple(out.shape)}, but its "
                            f"sidecar names {info.num_classes} classes")
        if not np.isfinite(out.astype(np.float64)).all():
            raise UserError(f"'{self.path}' answers a black image with NaN or infinite scores "
                            "(its weights or its sidecar's mean and std are broken)")

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
            return self.model(self._torch.from_numpy(x)).numpy()


class TorchExportPredictor(_SidecarPredictor):
    runtime = "torch.export"

    def load(self):
        import torch

        self._torch = torch
        with _quiet_logger("torch.export"):  # it logs failures with a traceback, then raises
            self.model = torch.export.load(io.BytesIO(self.checked.data)).module()

    def _run(self, x):
        with self._torch.inference_mode():
            return self.model(self._torch.from_numpy(x)).numpy()


class OnnxPredictor(_SidecarPredictor):
    runtime = "onnxruntime"

    def load(self):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(self.path), options,
                                            providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def _run(self, x):
        return self.session.run(None, {self.input_name: x})[0]


class TFLitePredictor(_SidecarPredictor):
    """The LiteRT interpreter; quantized inputs and outputs are (de)quantized here."""

    runtime = "litert"

    def load(self):
        from ai_edge_litert.interpreter import Interpreter

        self.interpreter = Interpreter(model_path=str(self.path), num_threads=self.threads)
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]
        self._batch = None

    def _run(self, x):
        interpreter = self.interpreter
        if self._batch != len(x):
            interpreter.resize_tensor_input(self.input["index"], list(x.shape))
            interpreter.allocate_tensors()
            self._batch = len(x)
        x = _quantize(x, self.input)
        interpreter.set_tensor(self.input["index"], x)
        interpreter.invoke()
        return _dequantize(interpreter.get_tensor(self.output["index"]), self.output)


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
        return self.model.serve(self._tf.constant(x)).numpy()


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
                        f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") \
            from None



def measure_latency(predictor: Predictor, image: np.ndarray, warmup: int = 3,
                    runs: int = 20) -> dict:
    """Batch-1 milliseconds per image: median and 95th percentile after ``warmup`` calls."""
    import time

    batch = image[None]
    for _ in range(warmup):
        predictor.predict(batch)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        predictor.predict(batch)
        times.append((time.perf_counter() - start) * 1000.0)
    return {"median_ms": float(np.median(times)), "p95_ms": float(np.percentile(times, 95)),
            "runs": runs}


def measure_throughput(predictor: Predictor, images: np.ndarray, repeats: int = 3) -> float:
    """Images per second at the batch size of ``images`` (one warm-up call first)."""
    import time

    predictor.predict(images)
    start = time.perf_counter()
    for _ in range(repeats):
        predictor.predict(images)
    return len(images) * repeats / (time.perf_counter() - start)
