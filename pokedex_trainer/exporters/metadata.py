"""The sidecar JSON embedded in the exported file itself, where the format has room for it.

ONNX keeps it in ``metadata_props``, TFLite in a named metadata buffer, TorchScript and
``torch.export`` archives in an extra file. Readers exist here so tests (and users) can check it.
"""

from __future__ import annotations

import json
from pathlib import Path

METADATA_KEY = "pokedex_ultra"
EXTRA_FILE = "pokedex_ultra.json"


def add_onnx_metadata(model, sidecar: dict, batch_name: str = "batch"):
    """The ModelProto with the sidecar in ``metadata_props`` and its dynamic batch dimension
    named ``batch`` (converters call it unk__123 or s0)."""
    for entry in list(model.metadata_props):
        if entry.key == METADATA_KEY:
            model.metadata_props.remove(entry)
    model.metadata_props.add(key=METADATA_KEY, value=json.dumps(sidecar, ensure_ascii=False))
    for value in list(model.graph.input) + list(model.graph.output):
        dim = value.type.tensor_type.shape.dim[0]
        if not dim.HasField("dim_value"):
            dim.dim_param = batch_name
    outputs = list(model.graph.output)
    if len(outputs) > 1:  # probabilities first: an app reading output 0 reads them
        ordered = sorted(outputs, key=lambda v: len(v.type.tensor_type.shape.dim) != 2)
        del model.graph.output[:]
        model.graph.output.extend(ordered)
    return model


def read_onnx_metadata(path: Path) -> dict | None:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    for entry in model.metadata_props:
        if entry.key == METADATA_KEY:
            return json.loads(entry.value)
    return None


def add_tflite_metadata(flatbuffer: bytes, sidecar: dict) -> bytes:
    """The TFLite model with the sidecar as a metadata buffer named ``pokedex_ultra``."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(flatbuffer, 0))
    graph = model.subgraphs[0]
    if graph.outputs is not None and len(graph.outputs) > 1:
        # probabilities first (converters order outputs their way): an app reading output 0
        # reads them, as from a file without the known_score output
        graph.outputs = sorted(list(graph.outputs),
                               key=lambda i: len(graph.tensors[i].shape) != 2)
    buffer = schema.BufferT()
    buffer.data = list(json.dumps(sidecar, ensure_ascii=False).encode("utf-8"))
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name = METADATA_KEY
    entry.buffer = len(model.buffers) - 1
    model.metadata = (model.metadata or []) + [entry]
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def read_tflite_metadata(path: Path) -> dict | None:
    from ai_edge_litert import schema_py_generated as schema

    data = Path(path).read_bytes()
    model = schema.Model.GetRootAsModel(data, 0)
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        if entry.Name().decode() == METADATA_KEY:
            buffer = model.Buffers(entry.Buffer())
            return json.loads(bytes(buffer.DataAsNumpy()).decode("utf-8"))
    return None
