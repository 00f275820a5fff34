"""Every model run on a user's behalf ends, or is refused, within a bound.

A 1 KB ONNX or TFLite file can hold a loop of 2^62 iterations: opened and run as given, it
never returns and prints nothing. Two defences, both before a result is trusted:

* Refused before loading: control-flow operators that repeat (ONNX ``Loop``, ``Scan`` and
  ``SequenceMap``, TFLite ``WHILE``), in the graph or any subgraph. No network this tool trains or exports uses
  them, so a file that holds one did not come from here.
* Refused before running: an operator too large to finish within the bound, from the tensor
  sizes the file implies (evaluation/graph_work.py).
* Bounded while running, whatever the file holds: the checks, the opening and every call run
  in a child process killed at a deadline (``POKEDEX_MODEL_CALL_LIMIT`` seconds, 600 by
  default: far above a real batch of the largest network on a CPU), with its memory capped
  (evaluation/model_child.py).
"""

from __future__ import annotations

from pathlib import Path

from pokedex_trainer.errors import UserError

CALL_LIMIT_ENV = "POKEDEX_MODEL_CALL_LIMIT"
DEFAULT_CALL_LIMIT_S = 600.0
ONNX_REPEATING_OPS = {"Loop", "Scan", "SequenceMap"}  # SequenceMap: a loop in ONNX Runtime
TFLITE_REPEATING_OPS = {"WHILE"}


def call_limit_s() -> float:
    """Seconds one model call may take (``POKEDEX_MODEL_CALL_LIMIT``)."""
    from pokedex_trainer.user_io.env_values import env_seconds

    return env_seconds(CALL_LIMIT_ENV, DEFAULT_CALL_LIMIT_S)


def _repeating_ops(graph) -> set[str]:
    """Repeating operators of an ONNX graph and of every subgraph in its attributes."""
    found, pending = set(), [graph]
    while pending:  # a list, not recursion: a hostile file may nest deeper than Python's stack
        current = pending.pop()
        for node in current.node:
            if node.op_type in ONNX_REPEATING_OPS:
                found.add(node.op_type)
            for attribute in node.attribute:
                if attribute.HasField("g"):
                    pending.append(attribute.g)
                pending.extend(attribute.graphs)
    return found


def check_onnx_graph(path: Path, input_shape: tuple[int, ...] | None = None) -> None:
    """Refuse an ONNX file whose graph repeats (see the module's notes) before any runtime
    opens it (ONNX Runtime may fold a loop of constants while loading), and, given the shape
    of one image as the tool feeds it, one whose single operator would outlast any deadline
    (evaluation/graph_work.py)."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError, a recursion limit...
        from pokedex_trainer.errors import reason_line

        raise UserError(f"'{path}' is not a readable ONNX file: {reason_line(exc)}") from None
    repeating = _repeating_ops(model.graph) | {op for function in model.functions
                                               for op in _repeating_ops(function)}
    if repeating:
        raise UserError(f"'{path}' holds {', '.join(sorted(repeating))} operators (a loop that "
                        "may never end); no model this tool exports has one, so it is not run")
    if input_shape is not None:
        from pokedex_trainer.evaluation.graph_work import check_onnx_work

        check_onnx_work(path, model, input_shape)


def _tflite_operator_names(path: Path) -> set[str]:
    """The builtin operators a TFLite file declares, for every subgraph (an IF branch or a
    WHILE body is a subgraph of its own, which the interpreter's op list leaves out)."""
    from ai_edge_litert import schema_py_generated as schema

    names = {value: name for name, value in vars(schema.BuiltinOperator).items()
             if isinstance(value, int) and not name.startswith("_")}
    model = schema.Model.GetRootAsModel(Path(path).read_bytes(), 0)
    found = set()
    for i in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(i)
        found.add(names.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()), ""))
    return found


def check_tflite_ops(path: Path, interpreter) -> None:
    """Refuse a TFLite file with a WHILE loop in any subgraph, or an operator too large to end
    (checked after loading, before any invoke)."""
    ops = {detail.get("op_name", "") for detail in interpreter._get_ops_details()}
    try:
        ops |= _tflite_operator_names(path)
    except Exception:  # noqa: BLE001 - the interpreter read it; a schema it cannot parse
        raise UserError(f"'{path}' is a TFLite file whose operators cannot be listed, so it "
                        "is not run") from None
    repeating = ops & TFLITE_REPEATING_OPS
    if repeating:
        raise UserError(f"'{path}' holds {', '.join(sorted(repeating))} operators (a loop that "
                        "may never end); no model this tool exports has one, so it is not run")
    from pokedex_trainer.evaluation.graph_work import check_tflite_work

    check_tflite_work(path, interpreter)  # no operator too large to end
