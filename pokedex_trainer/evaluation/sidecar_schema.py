"""The schema of an exported file's sidecar JSON (``model.onnx.json``), checked in full.

A sidecar comes with a file from anywhere, so it is input like any other: every number must be
finite and in a range that keeps the arithmetic finite in float32 (a std of 1e-300 turns every
pixel into inf and every score into NaN), every list has the length the predictor relies on,
every field the type it is used as.
"""

from __future__ import annotations

import math

from pokedex_trainer.runs.checked_files import TEMPERATURE_RANGE
from pokedex_trainer.user_io.checked_values import is_number

MAX_CLASSES = 100_000
# (pixel - mean) / std of pixels in 0..255 stays far below float32's 3.4e38 within these
MEAN_RANGE = (-1e4, 1e4)
STD_RANGE = (1e-3, 1e4)


def _numbers_in(values, low: float, high: float) -> bool:
    return isinstance(values, list) and len(values) == 3 and \
        all(is_number(v) and low <= v <= high for v in values)


def sidecar_problem(data) -> str | None:
    """What is wrong with a sidecar's content, or None: the schema export.py writes."""
    if not isinstance(data, dict):
        return "not a JSON object"
    names = data.get("class_names")
    if not (isinstance(names, list) and 2 <= len(names) <= MAX_CLASSES and
            all(isinstance(n, str) and n and len(n) <= 1000 for n in names)):
        return f"class_names must be a list of 2 to {MAX_CLASSES} non-empty strings"
    if len(set(names)) != len(names):
        return "class_names holds the same name twice"
    size = data.get("image_size")
    if not (isinstance(size, list) and len(size) == 2 and
            all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 4096
                for v in size)):
        return "image_size must be [height, width], whole numbers from 1 to 4096"
    problem = _input_problem(data.get("input"))
    if problem:
        return problem
    output = data.get("output", {})
    if not isinstance(output, dict) or output.get("kind", "probabilities") not in (
            "probabilities", "logits") or output.get("order", "class_names") != "class_names":
        return "output must be {\"kind\": \"probabilities\" or \"logits\", \"order\": " \
               "\"class_names\"}"
    if "temperature" in data and not (is_number(data["temperature"]) and
                                      TEMPERATURE_RANGE[0] <= data["temperature"] <=
                                      TEMPERATURE_RANGE[1]):
        return f"temperature must be a number from {TEMPERATURE_RANGE[0]} to " \
               f"{TEMPERATURE_RANGE[1]:g}"
    if data.get("unknown") is not None:
        from pokedex_trainer.errors import UserError
        from pokedex_trainer.evaluation.unknown import checked_rule

        try:
            checked_rule(data["unknown"], "unknown")
        except UserError as exc:
            return str(exc)
    for key in ("model_type", "arch", "source_framework"):
        if not isinstance(data.get(key, ""), str):
            return f"{key} must be a string"
    return None


def _input_problem(given) -> str | None:
    if not isinstance(given, dict):
        return "input must be an object"
    if given.get("layout", "NHWC") not in ("NHWC", "NCHW"):
        return "input.layout must be NHWC or NCHW"
    if given.get("channels", "RGB") != "RGB" or given.get("dtype", "float32") != "float32":
        return "input.channels must be RGB and input.dtype float32 (what the predictor feeds)"
    if given.get("range", [0, 255]) != [0, 255]:
        return "input.range must be [0, 255]: pixels are fed as 0..255, then (x - mean) / std"
    if not _numbers_in(given.get("mean", [0.0] * 3), *MEAN_RANGE):
        return f"input.mean must be 3 finite numbers from {MEAN_RANGE[0]:g} to " \
               f"{MEAN_RANGE[1]:g}"
    std = given.get("std", [1.0] * 3)
    if _numbers_in(std, -math.inf, math.inf) and any(v <= 0 for v in std):
        return "input.std must be positive"
    if not _numbers_in(std, *STD_RANGE):
        return f"input.std must be 3 finite numbers from {STD_RANGE[0]:g} to {STD_RANGE[1]:g}"
    return None
