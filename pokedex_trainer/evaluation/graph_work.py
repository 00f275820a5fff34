"""What one operator of an ONNX file would cost, read from the file before it runs.

A single enormous operator -- a 540-byte file whose ``ConstantOfShape`` makes a 1x64x4096x4096
tensor for a ``Conv`` -- is better refused in one clear line than run until the child process
that runs it is killed at its deadline (model_child.py). The file says, before it runs, how
large every tensor is and so how much each operator computes: with the input fixed at one image
of the size its sidecar gives, shape inference (with data propagation, so ``Shape -> Gather ->
Concat -> Reshape`` chains resolve) sizes every tensor. Refused:

* a tensor of more than ``MAX_ELEMENTS`` values for one image (8 GiB of float32);
* an operator of more than ``MAX_WORK`` multiply-adds (or element visits) for one image, or of
  what one core does within ``POKEDEX_MODEL_CALL_LIMIT`` when that is shorter (EfficientNetB7
  at 600 px, the largest network this tool trains, needs 3.7e10 for the whole network, its
  largest operator 8.9e8);
* a tensor whose size cannot be known before running (it depends on the photo's values), as no
  network this tool exports has one.

The bound is per image: a batch of N costs N times as much, and what many small operators add
up to is the deadline's to stop.
"""

from __future__ import annotations

import math
from pathlib import Path

from pokedex_trainer.errors import UserError

MAX_ELEMENTS = 2 ** 31
MAX_WORK = 2 * 10 ** 11
OPERATIONS_PER_S = 10 ** 9  # a CPU core's rough pace on one operator's inner loop


def max_work() -> float:
    """The most one operator may need for one image: ``MAX_WORK``, or less with a shorter
    ``POKEDEX_MODEL_CALL_LIMIT`` (what one core does within the limit), since the deadline
    cannot stop an operator half-way."""
    from pokedex_trainer.evaluation.bounded_runs import call_limit_s

    return min(MAX_WORK, call_limit_s() * OPERATIONS_PER_S)


def _dims(value_type) -> list[int] | None:
    """The dimensions of a tensor type, or None when any is not a known number."""
    if not value_type.HasField("tensor_type"):
        return None  # a sequence, a map, an optional: sizes only known while running
    tensor = value_type.tensor_type
    if not tensor.HasField("shape"):
        return None
    dims = []
    for dim in tensor.shape.dim:
        if not dim.HasField("dim_value") or dim.dim_value < 0:
            return None
        dims.append(dim.dim_value)
    return dims


def _fix_inputs(model, input_shape: tuple[int, ...]) -> None:
    """Every graph input that is not a weight gets known dimensions: the first the shape the
    tool feeds, the others 1 wherever a dimension is free."""
    weights = {initializer.name for initializer in model.graph.initializer}
    first = True
    for value in model.graph.input:
        if value.name in weights or not value.type.HasField("tensor_type"):
            continue
        dims = value.type.tensor_type.shape.dim
        wanted = list(input_shape) if first and len(dims) == len(input_shape) else None
        for i, dim in enumerate(dims):
            known = dim.HasField("dim_value") and dim.dim_value > 0
            if wanted is not None:
                dim.Clear()
                dim.dim_value = wanted[i]
            elif not known:
                dim.Clear()
                dim.dim_value = 1
        first = False


def _sort_nodes(graph) -> None:
    """Put the graph's nodes in an order where each comes after what it reads (shape inference
    walks them in file order; ONNX Runtime does not need it, and some tools -- onnxruntime's
    float16 converter among them -- append the input's Cast at the end). Kahn's algorithm:
    linear in the nodes, whatever a file holds."""
    from collections import deque

    nodes = list(graph.node)
    maker = {}
    for index, node in enumerate(nodes):
        for name in node.output:
            if name:
                maker.setdefault(name, index)
    readers = [[] for _ in nodes]
    waiting = [0] * len(nodes)
    for index, node in enumerate(nodes):
        for source in {maker[name] for name in node.input if name in maker}:
            if source != index:
                readers[source].append(index)
                waiting[index] += 1
    ready = deque(i for i, count in enumerate(waiting) if count == 0)
    order = []
    while ready:
        index = ready.popleft()
        order.append(index)
        for reader in readers[index]:
            waiting[reader] -= 1
            if waiting[reader] == 0:
                ready.append(reader)
    placed = set(order)
    order += [i for i in range(len(nodes)) if i not in placed]  # a cycle: as the file has it
    copies = [type(nodes[i])() for i in order]
    for copy, index in zip(copies, order):
        copy.CopyFrom(nodes[index])
    del graph.node[:]
    graph.node.extend(copies)


def _work(node, shapes: dict[str, list[int]]) -> int:
    """Multiply-adds (or element visits) of one operator, from its tensors' sizes."""
    def shape(i, of=node.input):
        return shapes.get(of[i], []) if i < len(of) and of[i] else []

    def size(dims):
        return math.prod(dims) if dims else 1

    out = size(shape(0, node.output))
    op = node.op_type
    if op in ("Conv", "ConvInteger", "QLinearConv"):
        weight = shape(3 if op == "QLinearConv" else 1)
        return out * size(weight[1:])
    if op == "ConvTranspose":
        weight = shape(1)
        return size(shape(0)) * size(weight[1:])
    if op in ("MatMul", "MatMulInteger", "QLinearMatMul", "Gemm", "FusedMatMul"):
        a = shape(0)
        transposed = op == "Gemm" and any(a_.name == "transA" and a_.i for a_ in node.attribute)
        inner = (a[0] if transposed else a[-1]) if a else 1
        return out * inner
    if op in ("RNN", "GRU", "LSTM"):
        x, w, r = shape(0), shape(1), shape(2)
        return size(x[:2]) * (w[1] if len(w) > 1 else 1) * ((w[2] if len(w) > 2 else 1)
                                                            + (r[2] if len(r) > 2 else 1))
    if op in ("MaxPool", "AveragePool", "LpPool", "MaxRoiPool", "LRN"):
        kernel = _ints(node, "pooled_shape" if op == "MaxRoiPool" else "kernel_shape")
        if op == "LRN":
            kernel = _ints(node, "size")
        return out * max(1, math.prod(kernel) if kernel else 1)
    if op in ("DFT", "STFT"):  # a plain DFT visits the whole signal for every output value
        signal = shape(0)
        return out * max(signal[1:-1] or [1])
    if op == "NonMaxSuppression":
        boxes = shape(0)
        return size(boxes[:2]) ** 2
    if op == "Einsum":
        return _einsum_work(node, shapes)
    visits = out + sum(size(shape(i)) for i in range(len(node.input)))
    return visits * max(1, int(math.log2(max(visits, 2))))  # sorts (TopK, Unique): n log n


def _ints(node, name: str) -> list[int]:
    for attribute in node.attribute:
        if attribute.name == name:
            return list(attribute.ints) if attribute.ints else [int(attribute.i)]
    return []


def _einsum_work(node, shapes) -> int:
    equation = next((a.s.decode("utf-8", "replace") for a in node.attribute
                     if a.name == "equation"), "")
    sizes: dict[str, int] = {}
    for term, name in zip(equation.split("->")[0].split(","), node.input):
        letters = [c for c in term.strip() if c.isalpha()]
        for letter, dim in zip(letters, shapes.get(name, [])):
            sizes[letter] = max(sizes.get(letter, 1), dim)
    return math.prod(sizes.values()) if sizes else 1


def _graphs(graph):
    """A graph and every subgraph in its nodes' attributes (a list, not recursion)."""
    pending = [graph]
    while pending:
        current = pending.pop()
        yield current
        for node in current.node:
            for attribute in node.attribute:
                if attribute.HasField("g"):
                    pending.append(attribute.g)
                pending.extend(attribute.graphs)


def check_onnx_work(path: Path, model, input_shape: tuple[int, ...]) -> None:
    """Refuse ``model`` (loaded from ``path``, without external data) if one operator would
    outlast any deadline, given one image of ``input_shape`` (see the module's notes)."""
    import onnx

    model = onnx.ModelProto.FromString(model.SerializeToString())  # a copy to change
    try:
        if model.functions:
            from onnx import inliner

            model = inliner.inline_local_functions(model)
        _fix_inputs(model, input_shape)
        _sort_nodes(model.graph)
        model = onnx.shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)
    except Exception as exc:  # noqa: BLE001 - inference errors name onnx's own internals
        from pokedex_trainer.errors import reason_line

        raise UserError(f"'{path}' cannot be sized before running ({reason_line(exc)}), so it "
                        "is not run") from None
    shapes: dict[str, list[int]] = {}
    limit = max_work()
    for graph in _graphs(model.graph):
        for value in (*graph.input, *graph.value_info, *graph.output):
            dims = _dims(value.type)
            if dims is not None:
                shapes[value.name] = dims
        for initializer in graph.initializer:
            shapes[initializer.name] = list(initializer.dims)
    for graph in _graphs(model.graph):
        for node in graph.node:
            for name in node.output:
                if name and name not in shapes:
                    raise UserError(
                        f"'{path}': the size of '{name}' ({node.op_type}) depends on the "
                        "photo's values and cannot be known before running; no model this "
                        "tool exports has such a tensor, so it is not run")
                if name and math.prod(shapes[name]) > MAX_ELEMENTS:
                    raise UserError(
                        f"'{path}': {node.op_type} makes a tensor of {math.prod(shapes[name]):.3g}"
                        f" values for one image (the most a model may make is "
                        f"{MAX_ELEMENTS:.3g}), so it is not run")
            work = _work(node, shapes)
            if work > limit:
                raise UserError(
                    f"'{path}': one {node.op_type} operator needs {work:.3g} operations for one "
                    f"image (the most one may need is {limit:.3g}; EfficientNetB7 at 600 px "
                    "needs 3.7e10 for all of its layers), so it is not run")


def _tflite_work(op: str, out: int, shapes: list[list[int]]) -> int:
    """Multiply-adds of one TFLite operator (filters are OHWI, depthwise 1HWC)."""
    def size(dims):
        return math.prod(dims) if dims else 1

    weight = shapes[1] if len(shapes) > 1 else []
    if op == "CONV_2D":
        return out * size(weight[1:])
    if op == "DEPTHWISE_CONV_2D":
        return out * size(weight[1:3])
    if op == "FULLY_CONNECTED":
        return out * (weight[-1] if weight else 1)
    if op == "BATCH_MATMUL":
        return out * (shapes[0][-1] if shapes and shapes[0] else 1)
    if op == "TRANSPOSE_CONV":  # inputs: output shape, filter, input
        return size(shapes[2] if len(shapes) > 2 else []) * size(weight[:3])
    visits = out + sum(size(s) for s in shapes)
    return visits * max(1, int(math.log2(max(visits, 2))))


def check_tflite_work(path: Path, interpreter) -> None:
    """The same bound for a TFLite file, read from the interpreter's tensor signatures (a
    free dimension other than the batch: its size depends on the photo's values)."""
    signatures = {d["index"]: [int(v) for v in d["shape_signature"]]
                  for d in interpreter.get_tensor_details()}

    def per_image(index):
        return [max(v, 1) for v in signatures.get(int(index), [])]

    limit = max_work()
    for op in interpreter._get_ops_details():
        name = op.get("op_name", "")
        if name == "DELEGATE":  # a delegate runs operators that are listed on their own
            continue
        out = 0
        for index in op.get("outputs", []):
            signature = signatures.get(int(index), [])
            if any(v < 0 for v in signature[1:]):
                raise UserError(
                    f"'{path}': the size of a {name} result depends on the photo's values and "
                    "cannot be known before running; no model this tool exports has such a "
                    "tensor, so it is not run")
            elements = math.prod(per_image(index)) if signature else 1
            if elements > MAX_ELEMENTS:
                raise UserError(
                    f"'{path}': {name} makes a tensor of {elements:.3g} values for one image "
                    f"(the most a model may make is {MAX_ELEMENTS:.3g}), so it is not run")
            out = max(out, elements)
        work = _tflite_work(name, out, [per_image(i) for i in op.get("inputs", []) if i >= 0])
        if work > limit:
            raise UserError(
                f"'{path}': one {name} operator needs {work:.3g} operations for one image (the "
                f"most one may need is {limit:.3g}; EfficientNetB7 at 600 px needs 3.7e10 "
                "for all of its layers), so it is not run")
