"""Hostile model files, second round (issue 26, items 1-3): what a loader reads is what was checked.

"Runs code" means a payload in the file created a marker file. Each hostile file is first shown
to be live (the framework's own loader runs it), then every entry point must refuse it in one
line with exit code 2 and leave no marker.
"""

from __future__ import annotations

import io
import json
import shutil
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from test_hostile import (Payload, _copy_with_sidecar, _one_line_error,  # noqa: E402,F401
                          torch_exports)
from pokedex_trainer.cli.commands import evaluate_main, export_main, run_main  # noqa: E402


def _entries(pt2: Path) -> list[tuple[str, bytes]]:
    with zipfile.ZipFile(pt2) as archive:
        return [(info.filename, archive.read(info)) for info in archive.infolist()]


def _write_entries(target: Path, entries: list[tuple[str, bytes]], sidecar_of: Path) -> Path:
    with warnings.catch_warnings(), zipfile.ZipFile(target, "w") as archive:
        warnings.simplefilter("ignore", UserWarning)  # "Duplicate name": wanted here
        for name, data in entries:
            archive.writestr(name, data)
    shutil.copy(sidecar_of.with_name(sidecar_of.name + ".json"),
                target.with_name(target.name + ".json"))
    return target


def _saved(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _root(entries) -> str:
    return entries[0][0].split("/", 1)[0]


def _named(entries, suffix: str) -> tuple[int, str, bytes]:
    return next((i, n, d) for i, (n, d) in enumerate(entries) if n.endswith(suffix))


def legacy_weights(entries, marker):
    entries.append((f"{_root(entries)}/data/weights/model.pt", _saved(Payload(marker))))


def legacy_constants(entries, marker):
    entries.append((f"{_root(entries)}/data/constants/model.pt", _saved(Payload(marker))))


def duplicate_entry(entries, marker):
    # Python's zipfile returns the last of two same-named entries; PyTorch's reader looks names
    # up by a search that finds either: one of the two orders reaches the loader
    index, name, _ = _named(entries, "/models/model.json")
    hostile = list(entries)
    sympy_expression(hostile, marker)
    hostile = (name, hostile[index][1])
    return [entries[:index] + [hostile] + entries[index:],
            entries[:index + 1] + [hostile] + entries[index + 1:]]


def duplicate_entry_other_case(entries, marker):
    # PyTorch's reader also compares names without case
    index, name, _ = _named(entries, "/data/sample_inputs/model.pt")
    hostile = (name.replace("/data/sample_inputs/", "/DATA/sample_inputs/"),
               _saved(Payload(marker)))
    return [entries[:index] + [hostile] + entries[index:],
            entries[:index + 1] + [hostile] + entries[index + 1:]]


def second_program(entries, marker):
    root = _root(entries)
    copies = {"/models/model.json": "/models/second.json",
              "/data/sample_inputs/model.pt": "/data/sample_inputs/second.pt",
              "/data/constants/model_constants_config.json":
                  "/data/constants/second_constants_config.json"}
    for old, new in copies.items():
        entries.append((root + new, _named(entries, old)[2]))
    config = json.loads(_named(entries, "/data/weights/model_weights_config.json")[2])
    first = next(iter(config["config"].values()))
    first.update(use_pickle=True, path_name="weight_payload")
    entries.append((f"{root}/data/weights/second_weights_config.json", json.dumps(config).encode()))
    entries.append((f"{root}/data/weights/weight_payload", _saved(Payload(marker))))


def _change_program(entries, change):
    index, name, data = _named(entries, "/models/model.json")
    program = json.loads(data)
    change(program)
    entries[index] = (name, json.dumps(program).encode())


def _touch_code(marker) -> str:
    return f"__import__('pathlib').Path({str(marker)!r}).touch()"


def sympy_expression(entries, marker):
    # torch parses shape expressions with sympy.sympify, which evaluates Python
    def change(program):
        sizes = program["graph_module"]["graph"]["tensor_values"]["x"]["sizes"]
        sizes[0]["as_expr"]["expr_str"] = _touch_code(marker)
    _change_program(entries, change)


def guard_code(entries, marker):
    # guards are exec'd into a function that runs before every call of .module()
    _change_program(entries, lambda p: p.update(guards_code=[_touch_code(marker) + " is None"]))


def opaque_constant(entries, marker):
    import pickle

    index, name, data = _named(entries, "/data/constants/model_constants_config.json")
    config = json.loads(data)
    config["config"]["hidden"] = {"path_name": "opaque_obj_0", "is_param": False,
                                  "use_pickle": True, "tensor_meta": None}
    entries[index] = (name, json.dumps(config).encode())
    entries.append((f"{_root(entries)}/data/constants/opaque_obj_0", pickle.dumps(Payload(marker))))


def parameter_name_code(entries, marker):
    # .module() writes `getattr(self, "<name>")` into Python source without escaping the name
    # torch splits the name at dots, so the code has none (nor has the marker's folder)
    assert "." not in str(marker)
    touch = f"getattr(getattr(__import__('pathlib'),'Path')({str(marker)!r}),'touch')()"
    evil = f'X"+str({touch})+"'

    def change(program):
        for spec in program["graph_module"]["signature"]["input_specs"]:
            if spec.get("parameter", {}).get("parameter_name") == "classifier.head.bias":
                spec["parameter"]["parameter_name"] = "classifier.head." + evil
    _change_program(entries, change)
    index, name, data = _named(entries, "/data/weights/model_weights_config.json")
    config = json.loads(data)
    config["config"]["classifier.head." + evil] = config["config"].pop("classifier.head.bias")
    entries[index] = (name, json.dumps(config).encode())


PT2_VARIANTS = [legacy_weights, legacy_constants, duplicate_entry, duplicate_entry_other_case,
                second_program, sympy_expression, guard_code, opaque_constant,
                parameter_name_code]


def _is_live(bad: Path, marker: Path, capsys) -> bool:
    """Whether PyTorch's own loader (and one call of the module) runs the payload."""
    try:
        module = torch.export.load(str(bad)).module()
        module(torch.zeros(1, 3, 32, 32))
    except Exception:
        pass
    capsys.readouterr()  # what PyTorch printed while doing so
    live = marker.exists()
    if live:
        marker.unlink()
    return live


@pytest.mark.parametrize("variant", PT2_VARIANTS, ids=lambda v: v.__name__)
def test_a_pt2_that_hides_code_is_refused_at_every_entry_point(torch_exports, tmp_path,
                                                               tiny_dataset, capsys, variant):
    marker = tmp_path / "pwned"
    source = torch_exports / "tiny_torch_best.pt2"
    entries = _entries(source)
    candidates = variant(entries, marker) or [entries]
    bad = tmp_path / "model.pt2"
    assert any(_is_live(_write_entries(bad, candidate, source), marker, capsys)
               for candidate in candidates), "the payload does not run in PyTorch's loader"

    photo = next(tiny_dataset.rglob("*.jpg"))
    for argv in (["--data_path", str(tiny_dataset)], ["--predict", str(photo)]):
        assert run_main(evaluate_main, ["--model", str(bad), *argv]) == 2
        assert "refused to open" in _one_line_error(capsys)
        assert not marker.exists()
    assert run_main(export_main, ["--model", str(bad), "--data_path", str(tiny_dataset)]) == 2
    _one_line_error(capsys)
    assert not marker.exists()


def test_a_pt2_of_this_tool_still_opens_from_the_checked_bytes(torch_exports, tmp_path,
                                                               tiny_dataset):
    from pokedex_trainer.evaluation.predict import load_predictor

    predictor = load_predictor(torch_exports / "tiny_torch_best.pt2")
    probabilities = predictor.predict(np.zeros((2, 32, 32, 3), np.uint8))
    assert probabilities.shape == (2, 3) and np.allclose(probabilities.sum(axis=1), 1, atol=1e-4)


# ---------------------------------------------------------------- SavedModel folders

def _saved_model_writing(folder: Path, marker: Path | None, as_text: bool) -> Path:
    """A SavedModel whose serving function writes ``marker`` (or plain softmax of zeros)."""
    tf = pytest.importorskip("tensorflow")

    class Model(tf.Module):
        def __init__(self):
            super().__init__()
            self.bias = tf.Variable([0.0, 1.0, 2.0])

        @tf.function(input_signature=[tf.TensorSpec([None, 32, 32, 3], tf.float32)])
        def serve(self, x):
            if marker is not None:
                tf.io.write_file(str(marker), "x")
            return tf.nn.softmax(tf.zeros([tf.shape(x)[0], 3]) + self.bias)

    tf.saved_model.save(Model(), str(folder))
    if as_text:  # the same graph as a text protocol buffer: TensorFlow reads either
        from google.protobuf import text_format
        from tensorflow.core.protobuf import saved_model_pb2

        proto = saved_model_pb2.SavedModel()
        proto.ParseFromString((folder / "saved_model.pb").read_bytes())
        (folder / "saved_model.pbtxt").write_text(text_format.MessageToString(proto))
        (folder / "saved_model.pb").unlink()
    return folder


def _sidecar_for(model: Path) -> None:
    model.with_name(model.name + ".json").write_text(json.dumps({
        "class_names": ["Gato", "León", "Perro"], "image_size": [32, 32],
        "input": {"layout": "NHWC", "mean": [0, 0, 0], "std": [1, 1, 1]}}), encoding="utf-8")


@pytest.fixture(scope="module")
def pbtxt_saved_model(tmp_path_factory) -> tuple[Path, Path]:
    """(a text SavedModel that writes a marker when called, the marker); shown to be live."""
    tf = pytest.importorskip("tensorflow")
    root = tmp_path_factory.mktemp("pbtxt")
    marker = root / "written_by_the_graph"
    folder = _saved_model_writing(root / "hostile", marker, as_text=True)
    loaded = tf.saved_model.load(str(folder))
    loaded.serve(tf.zeros([1, 32, 32, 3]))
    assert marker.exists(), "the payload does not run in TensorFlow's loader"
    marker.unlink()
    return folder, marker


@pytest.mark.parametrize("name", ["x.onnx", "x.keras", "x.pth", "x.tflite", "x.h5", "x.pt2",
                                  "model_saved_model"])
def test_a_text_savedmodel_is_refused_whatever_its_name(pbtxt_saved_model, tmp_path,
                                                        tiny_dataset, capsys, name):
    source, marker = pbtxt_saved_model
    folder = tmp_path / name
    shutil.copytree(source, folder)
    _sidecar_for(folder)
    photo = next(tiny_dataset.rglob("*.jpg"))
    for argv in (["--data_path", str(tiny_dataset)], ["--predict", str(photo)]):
        assert run_main(evaluate_main, ["--model", str(folder), *argv]) == 2
        assert "refused to open" in _one_line_error(capsys)
        assert not marker.exists()
    assert run_main(export_main, ["--model", str(folder), "--data_path",
                                  str(tiny_dataset)]) == 2
    _one_line_error(capsys)
    assert not marker.exists()


@pytest.mark.parametrize("name", ["x.onnx", "x.keras", "x.pth"])
def test_a_folder_that_is_no_savedmodel_is_refused_in_one_line(tmp_path, tiny_dataset, capsys,
                                                               name):
    folder = tmp_path / name
    folder.mkdir()
    (folder / "model.onnx").write_bytes(b"not a model")
    photo = next(tiny_dataset.rglob("*.jpg"))
    assert run_main(evaluate_main, ["--model", str(folder), "--predict", str(photo)]) == 2
    assert "is a folder but not a SavedModel" in _one_line_error(capsys)
    assert run_main(export_main, ["--model", str(folder), "--data_path",
                                  str(tiny_dataset)]) == 2
    assert "is a folder, not a trained model" in _one_line_error(capsys)


# ---------------------------------------------------------------- time of check, time of use

def _swap_after_the_check(monkeypatch, swap):
    """Run ``swap()`` between the trust check and the framework's load: where the framework
    is imported (seconds, for a user)."""
    import pokedex_trainer.evaluation.predict as inference

    real = inference.import_frameworks

    def import_then_swap(frameworks):
        real(frameworks)
        swap()
    monkeypatch.setattr(inference, "import_frameworks", import_then_swap)


class _AllOnLast(torch.nn.Module):
    def forward(self, x):
        return torch.nn.functional.one_hot(torch.full((x.shape[0],), 2), 3).float()


def test_a_trusted_torchscript_swapped_after_the_check_is_not_run(torch_exports, tmp_path,
                                                                  monkeypatch):
    from pokedex_trainer.evaluation.predict import load_predictor

    ours = shutil.copy(torch_exports / "tiny_torch_best.pt", tmp_path / "model.pt")
    shutil.copy(torch_exports / "tiny_torch_best.pt.json", tmp_path / "model.pt.json")
    zeros = np.zeros((1, 32, 32, 3), np.uint8)
    expected = load_predictor(ours).predict(zeros)  # trusted: export.py wrote these bytes
    other = torch.jit.trace(_AllOnLast(), torch.zeros(1, 3, 32, 32))

    _swap_after_the_check(monkeypatch, lambda: torch.jit.save(other, str(ours)))
    predictor = load_predictor(ours)
    assert not np.allclose(expected, [[0, 0, 1]])
    assert np.allclose(predictor.predict(zeros), expected, atol=1e-6)  # the checked bytes ran


def test_a_trusted_savedmodel_swapped_after_the_check_is_not_run(tmp_path, monkeypatch,
                                                                 tiny_dataset, capsys):
    from pokedex_trainer.evaluation.predict import load_predictor
    from pokedex_trainer.evaluation.safe_loading import remember_written

    folder = _saved_model_writing(tmp_path / "model_saved_model", None, as_text=False)
    _sidecar_for(folder)
    remember_written(folder)  # as export.py does for what it wrote
    marker = tmp_path / "written_by_the_graph"
    hostile = _saved_model_writing(tmp_path / "hostile", marker, as_text=False)

    def swap():
        shutil.rmtree(folder)
        shutil.copytree(hostile, folder)
    _swap_after_the_check(monkeypatch, swap)
    predictor = load_predictor(folder)
    out = predictor.predict(np.zeros((1, 32, 32, 3), np.uint8))
    assert not marker.exists()
    assert np.allclose(out, np.exp([0, 1, 2]) / np.exp([0, 1, 2]).sum(), atol=1e-5)


# ---------------------------------------------------------------- sidecars

@pytest.mark.parametrize("change, expected", [
    (lambda s: s["input"].update(std=[1e-300, 1.0, 1.0]), "std"),
    (lambda s: s["input"].update(mean=[1e300, 0.0, 0.0]), "mean"),
    (lambda s: s.update(temperature=1e-300), "temperature"),
    (lambda s: s.update(temperature=1e300), "temperature"),
    (lambda s: s["input"].update(mean=[0.0, 0.0]), "mean"),
    (lambda s: s.update(arch=["not", "a", "name"]), "arch"),
], ids=["tiny std", "huge mean", "tiny temperature", "huge temperature", "2 means",
        "arch not a string"])
def test_a_sidecar_with_insane_numbers_is_one_line(torch_exports, tmp_path, tiny_dataset,
                                                   capsys, change, expected):
    model = shutil.copy(torch_exports / "tiny_torch_best.pt2", tmp_path / "model.pt2")
    sidecar_file = tmp_path / "model.pt2.json"
    sidecar = json.loads((torch_exports / "tiny_torch_best.pt2.json").read_text("utf-8"))
    change(sidecar)
    sidecar_file.write_text(json.dumps(sidecar), encoding="utf-8")
    photo = next(tiny_dataset.rglob("*.jpg"))
    assert run_main(evaluate_main, ["--model", str(model), "--predict", str(photo)]) == 2
    assert expected in _one_line_error(capsys)


def test_a_model_that_answers_nan_is_one_line(torch_exports, tmp_path, tiny_dataset, capsys):
    source = torch_exports / "tiny_torch_best.pt2"
    entries = _entries(source)
    index, name, data = _named(entries, "/data/weights/weight_0")
    entries[index] = (name, np.full(len(data) // 4, np.nan, np.float32).tobytes())
    model = _write_entries(tmp_path / "model.pt2", entries, source)
    photo = next(tiny_dataset.rglob("*.jpg"))
    assert run_main(evaluate_main, ["--model", str(model), "--predict", str(photo)]) == 2
    assert "NaN or infinite scores" in _one_line_error(capsys)


@pytest.mark.parametrize("expression", ["9**9**9**9", "Pow(Integer(9), Integer(999999999))",
                                        "LShift(Integer(1), Integer(10**15))",
                                        "Integer(1" + "0" * 30 + ")"])
def test_a_pt2_whose_shapes_would_never_finish_computing_is_refused(torch_exports, tmp_path,
                                                                   tiny_dataset, capsys,
                                                                   expression):
    """sympy evaluates powers as it parses: a tower of them never ends (not run here)."""
    source = torch_exports / "tiny_torch_best.pt2"
    entries = _entries(source)

    def change(program):
        sizes = program["graph_module"]["graph"]["tensor_values"]["x"]["sizes"]
        sizes[0]["as_expr"]["expr_str"] = expression
    _change_program(entries, change)
    bad = _write_entries(tmp_path / "model.pt2", entries, source)
    photo = next(tiny_dataset.rglob("*.jpg"))
    assert run_main(evaluate_main, ["--model", str(bad), "--predict", str(photo)]) == 2
    assert "not plain arithmetic" in _one_line_error(capsys)


@pytest.mark.parametrize("name", ["model.pt2", "model.onnx", "model.pth"])
def test_a_model_that_is_a_pipe_or_a_device_is_one_line(torch_exports, tmp_path, tiny_dataset,
                                                        capsys, name):
    """A named pipe would block every loader forever, /dev/zero would never end."""
    import os

    photo = next(tiny_dataset.rglob("*.jpg"))
    for kind in ("pipe", "device"):
        model = tmp_path / kind / name
        model.parent.mkdir()
        if kind == "pipe":
            os.mkfifo(model)
        else:
            model.symlink_to("/dev/zero")
        shutil.copy(torch_exports / "tiny_torch_best.pt2.json", model.with_name(name + ".json"))
        assert run_main(evaluate_main, ["--model", str(model), "--predict", str(photo)]) == 2
        assert "not a regular file" in _one_line_error(capsys)


def test_a_savedmodel_with_a_link_is_refused_before_it_is_copied(tmp_path, tiny_dataset,
                                                                 capsys):
    """A link to /dev/zero inside the folder would fill the disk while it is copied."""
    folder = tmp_path / "model"
    (folder / "variables").mkdir(parents=True)
    (folder / "saved_model.pb").write_bytes(b"\x08\x01")
    (folder / "variables" / "variables.data-00000-of-00001").symlink_to("/dev/zero")
    photo = next(tiny_dataset.rglob("*.jpg"))
    assert run_main(evaluate_main, ["--model", str(folder), "--predict", str(photo)]) == 2
    assert "is a link or a special file" in _one_line_error(capsys)


# --- models that never return (issue 32, item 2) ----------------------------------------------

def _endless_onnx(path: Path, classes: int = 3, size: int = 32) -> Path:
    """A 1 KB ONNX model whose answer is a Loop of 2^62 iterations, with a valid sidecar."""
    import onnx
    from onnx import TensorProto, helper

    from pokedex_trainer.evaluation.model_files import ModelInfo, sidecar_path

    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("Add", ["v_in", "one"], ["v_out"])], "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_in", TensorProto.FLOAT, [None, classes])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_out", TensorProto.FLOAT, [None, classes])],
        [helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])])
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["x"], ["m"], axes=[1, 2], keepdims=0),
         helper.make_node("Loop", ["trip", "cond", "m"], ["out"], body=body)], "endless",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, size, size, classes])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [None, classes])],
        [helper.make_tensor("trip", TensorProto.INT64, [], [2 ** 62]),
         helper.make_tensor("cond", TensorProto.BOOL, [], [True])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    info = ModelInfo(["Gato", "León", "Perro"], (size, size), "NHWC", [0.0] * 3, [1.0] * 3,
                     "tiny_keras", "tiny", "keras", "probabilities")
    sidecar_path(path).write_text(json.dumps(info.to_sidecar()), encoding="utf-8")
    return path


@pytest.mark.parametrize("how", ["--predict", "--data_path"])
def test_an_onnx_loop_that_never_ends_is_refused_in_one_line(how, tmp_path, tiny_dataset,
                                                             capsys):
    model = _endless_onnx(tmp_path / "endless.onnx")
    assert model.stat().st_size < 2048
    target = str(tiny_dataset / "Gato") if how == "--predict" else str(tiny_dataset)
    code = run_main(evaluate_main, ["--model", str(model), how, target, "--output_dir",
                                    str(tmp_path / "out"), "--latency_runs", "1"])
    assert code == 2
    assert "Loop" in _one_line_error(capsys)


def _one_operator_onnx(path: Path, size_input: str = "constant") -> Path:
    """The probe's 540-byte model: a ConstantOfShape makes a 1x64x4096x4096 tensor for one
    Conv (6e11 multiply-adds, one operator, so the deadline cannot stop it). With
    ``size_input="photo"`` the tensor's size comes from the photo's values instead."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes = [helper.make_node("ReduceMean", ["x"], ["mx"], axes=[1, 2], keepdims=0)]
    if size_input == "photo":  # 1 x 64 x (max pixel) x (max pixel)
        nodes += [helper.make_node("ReduceMax", ["x"], ["peak"], keepdims=0),
                  helper.make_node("Cast", ["peak"], ["peak_int"], to=TensorProto.INT64),
                  helper.make_node("Reshape", ["peak_int", "one_dim"], ["side"]),
                  helper.make_node("Concat", ["head", "side", "side"], ["shape"], axis=0)]
    nodes += [helper.make_node("ConstantOfShape", ["shape"], ["big"],
                               value=numpy_helper.from_array(np.ones(1, np.float32))),
              helper.make_node("Conv", ["big", "w"], ["y"], pads=[1, 1, 1, 1]),
              helper.make_node("ReduceMean", ["y"], ["m"], axes=[0, 1, 2, 3], keepdims=0),
              helper.make_node("Add", ["mx", "m"], ["scores"]),
              helper.make_node("Softmax", ["scores"], ["out"], axis=1)]
    weights = [numpy_helper.from_array(np.full((64, 64, 3, 3), 1e-3, np.float32), "w")]
    if size_input == "photo":
        weights += [numpy_helper.from_array(np.array([1, 64], np.int64), "head"),
                    numpy_helper.from_array(np.array([1], np.int64), "one_dim")]
    else:
        weights.append(numpy_helper.from_array(np.array([1, 64, 4096, 4096], np.int64),
                                               "shape"))
    graph = helper.make_graph(
        nodes, "one_operator",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 32, 32, 3])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [None, 3])], weights)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    return _loop_sidecar(path, "NHWC")


@pytest.mark.parametrize("size_input,message", [("constant", "6.18e+11 operations"),
                                                ("photo", "depends on the photo's values")])
def test_one_operator_too_large_to_end_is_refused_before_it_runs(size_input, message,
                                                                 tmp_path, tiny_dataset,
                                                                 capsys):
    """Issue 32, item 2: ONNX Runtime reads its terminate flag between operators, so one huge
    operator would run past the deadline (30 s with a 3 s limit when tried): its size is read
    from the file and it is refused before anything runs."""
    model = _one_operator_onnx(tmp_path / "huge.onnx", size_input)
    code = run_main(evaluate_main, ["--model", str(model), "--predict",
                                    str(tiny_dataset / "Gato")])
    assert code == 2
    assert message in _one_line_error(capsys)


def test_a_pool_with_a_huge_window_is_refused_within_a_short_limit(tmp_path, tiny_dataset,
                                                                   monkeypatch, capsys):
    """A MaxPool of a 3000x3000 window over a padded photo: 3e10 comparisons in one operator,
    more than one core does within a 5 s POKEDEX_MODEL_CALL_LIMIT (it ran for minutes)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from pokedex_trainer.evaluation.bounded_runs import CALL_LIMIT_ENV

    graph = helper.make_graph(
        [helper.make_node("Transpose", ["x"], ["xt"], perm=[0, 3, 1, 2]),
         helper.make_node("Pad", ["xt", "pads"], ["big"]),
         helper.make_node("MaxPool", ["big"], ["pooled"], kernel_shape=[3000, 3000]),
         helper.make_node("ReduceMean", ["pooled"], ["out"], axes=[2, 3], keepdims=0)],
        "pool", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 32, 32, 3])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [None, 3])],
        [numpy_helper.from_array(np.array([0, 0, 0, 0, 0, 0, 3000, 3000], np.int64), "pads")])
    model = _loop_sidecar(tmp_path / "pool.onnx", "NHWC")
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), model)
    monkeypatch.setenv(CALL_LIMIT_ENV, "5")
    code = run_main(evaluate_main, ["--model", str(model), "--predict",
                                    str(tiny_dataset / "Gato")])
    assert code == 2
    assert "one MaxPool operator needs 2.94e+10 operations" in _one_line_error(capsys)


def test_a_small_model_of_the_same_operators_is_run(tmp_path, tiny_dataset, capsys):
    """The bound refuses the size, not the operators: the same graph at 1x64x8x8 answers."""
    import onnx
    from onnx import numpy_helper

    model = _one_operator_onnx(tmp_path / "small.onnx")
    proto = onnx.load(str(model))
    shape = next(i for i in proto.graph.initializer if i.name == "shape")
    shape.CopyFrom(numpy_helper.from_array(np.array([1, 64, 8, 8], np.int64), "shape"))
    onnx.save(proto, str(model))
    code = run_main(evaluate_main, ["--model", str(model), "--predict",
                                    str(tiny_dataset / "Gato")])
    assert code == 0, capsys.readouterr().err


def _slow_onnx(path: Path, steps: int = 400) -> Path:
    """Many operators each under the operator bound (800x800 by 800x800 products, 5e8 each),
    2e11 in all: seconds to minutes of honest work, on the photo (nothing to fold ahead)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes = [helper.make_node("Reshape", ["x", "row_shape"], ["row"]),
             helper.make_node("Slice", ["row", "zero", "width", "one"], ["part"]),
             helper.make_node("Tile", ["part", "repeats"], ["h0"])]
    for i in range(steps):
        nodes.append(helper.make_node("MatMul", [f"h{i}", "w"], [f"h{i + 1}"]))
    nodes += [helper.make_node("ReduceMean", [f"h{steps}"], ["m"], axes=[0], keepdims=0),
              helper.make_node("Slice", ["m", "zero", "three"], ["m3"]),
              helper.make_node("Reshape", ["m3", "out_shape"], ["scores"]),
              helper.make_node("Softmax", ["scores"], ["out"], axis=1)]
    weights = [numpy_helper.from_array(np.array([1, 3072], np.int64), "row_shape"),
               numpy_helper.from_array(np.array([800, 1], np.int64), "repeats"),
               numpy_helper.from_array(np.array([800], np.int64), "width"),
               numpy_helper.from_array(np.array([1], np.int64), "one"),
               numpy_helper.from_array(np.eye(800, dtype=np.float32), "w"),
               numpy_helper.from_array(np.array([0], np.int64), "zero"),
               numpy_helper.from_array(np.array([3], np.int64), "three"),
               numpy_helper.from_array(np.array([1, 3], np.int64), "out_shape")]
    graph = helper.make_graph(
        nodes, "slow", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 32, 32, 3])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 3])], weights)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    return _loop_sidecar(path, "NHWC")


def test_a_model_call_past_its_deadline_is_killed_in_one_line(tmp_path, tiny_dataset,
                                                              monkeypatch, capsys):
    """The defence for what no reading of the graph sees: the runtime's child process is
    killed at POKEDEX_MODEL_CALL_LIMIT (here 1 s; the model needs minutes), and the command
    ends in one line, at once."""
    import time

    from pokedex_trainer.evaluation.bounded_runs import CALL_LIMIT_ENV

    model = _slow_onnx(tmp_path / "slow.onnx")
    monkeypatch.setenv(CALL_LIMIT_ENV, "1")
    started = time.monotonic()
    code = run_main(evaluate_main, ["--model", str(model), "--predict",
                                    str(tiny_dataset / "Gato")])
    assert code == 2
    assert "did not answer within 1 s and was stopped" in _one_line_error(capsys)
    assert time.monotonic() - started < 60
    monkeypatch.setenv(CALL_LIMIT_ENV, "soon")
    assert run_main(evaluate_main, ["--model", str(model), "--predict",
                                    str(tiny_dataset / "Gato")]) == 2
    assert CALL_LIMIT_ENV in _one_line_error(capsys)


def test_a_sidecar_nested_200000_levels_is_one_line_naming_it(torch_exports, tmp_path,
                                                              tiny_dataset, capsys):
    """Issue 32, item 7: not a RecursionError blamed on the runtime."""
    model = _copy_with_sidecar(torch_exports / "tiny_torch_best.pt", tmp_path / "m.pt")
    sidecar = model.with_name(model.name + ".json")
    sidecar.write_text("[" * 200_000 + "]" * 200_000, encoding="utf-8")
    code = run_main(evaluate_main, ["--model", str(model), "--predict",
                                    str(tiny_dataset / "Gato"), "--trust_model_file"])
    assert code == 2
    line = _one_line_error(capsys)
    assert "sidecar" in line and "nested" in line


def _loop_sidecar(path: Path, layout: str) -> Path:
    from pokedex_trainer.evaluation.model_files import ModelInfo, sidecar_path

    info = ModelInfo(["Gato", "León", "Perro"], (32, 32), layout, [0.0] * 3, [1.0] * 3,
                     "tiny_keras", "tiny", "keras", "probabilities")
    sidecar_path(path).write_text(json.dumps(info.to_sidecar()), encoding="utf-8")
    return path


def test_an_onnx_sequence_map_is_refused_like_a_loop(tmp_path, tiny_dataset, capsys):
    """SequenceMap runs its body once per element (ONNX Runtime makes it a Loop)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    body = helper.make_graph([helper.make_node("ReduceSum", ["e"], ["o"], keepdims=0)], "b",
                             [helper.make_tensor_value_info("e", TensorProto.FLOAT, None)],
                             [helper.make_tensor_value_info("o", TensorProto.FLOAT, None)])
    nodes = [helper.make_node("Constant", [], ["big"],
                              value=numpy_helper.from_array(np.zeros(10**6, np.float32))),
             helper.make_node("SplitToSequence", ["big"], ["sq"], axis=0, keepdims=0),
             helper.make_node("SequenceMap", ["sq"], ["os"], body=body),
             helper.make_node("ConcatFromSequence", ["os"], ["cat"], axis=0, new_axis=1),
             helper.make_node("ReduceSum", ["cat"], ["s"], keepdims=0),
             helper.make_node("Add", ["x", "s"], ["x2"]),
             helper.make_node("ReduceMean", ["x2"], ["m"], axes=[1, 2], keepdims=0),
             helper.make_node("Softmax", ["m"], ["y"], axis=1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, ["N", 32, 32, 3])], [helper.make_tensor_value_info(
            "y", TensorProto.FLOAT, ["N", 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = _loop_sidecar(tmp_path / "seqmap.onnx", "NHWC")
    onnx.save(model, path)
    assert run_main(evaluate_main, ["--model", str(path), "--predict",
                                    str(tiny_dataset / "Gato"), "--output_dir",
                                    str(tmp_path / "out")]) == 2
    assert "SequenceMap" in _one_line_error(capsys)


@pytest.mark.slow
def test_a_tflite_while_hidden_in_an_if_branch_is_refused(tmp_path, tiny_dataset, capsys):
    """The interpreter lists the main graph's operators only: IF, not the WHILE of its
    branch. A loop of 4e18 steps that ignores SIGTERM must never start."""
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec([1, 32, 32, 3], tf.float32)])
    def hidden(x):
        s = tf.reduce_mean(x)

        def spin():
            _, v = tf.while_loop(lambda i, v: i < tf.cast(s * 0 + 4e18, tf.int64),
                                 lambda i, v: (i + 1, v + 1e-9),
                                 [tf.constant(0, tf.int64), tf.constant(0.0)])
            return v

        z = tf.cond(s > -1.0, spin, lambda: tf.constant(0.0))
        return tf.nn.softmax(tf.reduce_mean(x, axis=[1, 2]) + z)

    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [hidden.get_concrete_function()], hidden)
    path = _loop_sidecar(tmp_path / "hidden_while.tflite", "NHWC")
    path.write_bytes(converter.convert())
    assert run_main(evaluate_main, ["--model", str(path), "--predict",
                                    str(tiny_dataset / "Gato"), "--output_dir",
                                    str(tmp_path / "out")]) == 2
    assert "WHILE" in _one_line_error(capsys)


@pytest.mark.slow
def test_a_tflite_operator_sized_by_the_photo_is_refused(tmp_path, tiny_dataset, capsys):
    """The TFLite twin of the one-operator probe: a FILL whose size is the photo's brightest
    pixel feeds one CONV_2D (255x255x64 on a white photo, any size a hostile file wants)."""
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec([None, 32, 32, 3], tf.float32)])
    def huge(x):
        side = tf.cast(tf.reduce_max(x), tf.int32)
        big = tf.fill(tf.stack([1, side, side, 64]), 1.0)
        y = tf.nn.conv2d(big, tf.ones([3, 3, 64, 64]) * 1e-3, 1, "SAME")
        return tf.nn.softmax(tf.reduce_mean(x, axis=[1, 2]) + tf.reduce_mean(y))

    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [huge.get_concrete_function()], huge)
    path = _loop_sidecar(tmp_path / "huge.tflite", "NHWC")
    path.write_bytes(converter.convert())
    assert run_main(evaluate_main, ["--model", str(path), "--predict",
                                    str(tiny_dataset / "Gato")]) == 2
    assert "FILL result depends on the photo's values" in _one_line_error(capsys)


@pytest.mark.slow
def test_the_operator_bound_reads_real_exports(keras_exports, torch_run, monkeypatch,
                                               tiny_dataset, tmp_path, capsys):
    """The tool's own ONNX and TFLite files pass the bound (the tests that run them show it);
    with the bound set below their largest convolution they are refused, so it is computed."""
    from pokedex_trainer.evaluation import graph_work

    photo = str(next(tiny_dataset.rglob("*.jpg")))
    assert run_main(export_main, ["--run_dir", str(torch_run), "--formats", "onnx",
                                  "--output_dir", str(tmp_path), "--check_images", "6"]) == 0
    models = [keras_exports / "export" / "tiny_keras_best_int8.tflite",
              keras_exports / "export" / "tiny_keras_best_float32.tflite",
              keras_exports / "export" / "tiny_keras_best.onnx",
              tmp_path / "tiny_torch_best.onnx"]
    for model in models:
        assert run_main(evaluate_main, ["--model", str(model), "--predict", photo]) == 0
    capsys.readouterr()
    monkeypatch.setattr(graph_work, "MAX_WORK", 1000)  # here: the checks run in-process
    from ai_edge_litert.interpreter import Interpreter

    from pokedex_trainer.errors import UserError
    from pokedex_trainer.evaluation.bounded_runs import check_onnx_graph, check_tflite_ops

    for model in models:
        with pytest.raises(UserError, match="operations for one image"):
            if model.suffix == ".onnx":
                layout = json.loads(model.with_name(model.name + ".json").read_text(
                    "utf-8"))["input"]["layout"]
                check_onnx_graph(model, (1, 3, 32, 32) if layout == "NCHW" else (1, 32, 32, 3))
            else:
                interpreter = Interpreter(model_path=str(model))
                interpreter.allocate_tensors()
                check_tflite_ops(model, interpreter)
