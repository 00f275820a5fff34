"""What a model file is: its framework by name, the sidecar JSON of an export, import order.

Exported files are described by a sidecar JSON beside them (``model.onnx`` -> ``model.onnx.json``):
class names, input size, layout and the arithmetic to apply to RGB 0..255 pixels before the model
(``ModelInfo``). The predictors (evaluation/predict.py) follow it exactly as an app would.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from pokedex_trainer.errors import UserError
from pokedex_trainer.evaluation.sidecar_schema import sidecar_problem

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

    def input_shape(self, batch: int) -> tuple[int, int, int, int]:
        """The shape of ``batch`` images as the model takes them."""
        height, width = self.image_size
        return (batch, 3, height, width) if self.layout == "NCHW" else (batch, height, width, 3)

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
        from pokedex_trainer.user_io.inert_text import class_name

        given = data["input"]
        return cls([class_name(n) for n in data["class_names"]], tuple(int(v) for v in data["image_size"]),
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
    except RecursionError:  # [[[[... nested deeper than Python's stack
        raise UserError(f"sidecar '{path}' is not a sidecar of this tool (JSON nested "
                        "thousands of levels deep)") from None
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
            from pokedex_trainer.machine.native_noise import import_tensorflow_quietly

            import_tensorflow_quietly()


def class_names_near(model_path: Path) -> list[str] | None:
    """``class_names.json`` beside a model (a run directory), if there is one."""
    from pokedex_trainer.runs.store import RunStore

    store = RunStore(Path(model_path).parent)
    if store.has_class_names():
        return store.class_names()  # checked, and against the manifest
    return None
