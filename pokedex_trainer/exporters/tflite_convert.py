"""Run inside the TFLite environment (exporters/tflite_env.py): a ``torch.export`` program
written by export.py -> a TFLite flatbuffer.

    python -m pokedex_trainer.exporters.tflite_convert PROGRAM.pt2 N,H,W,C TARGET.tflite
"""

from __future__ import annotations

import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    program, shape, target = argv
    import litert_torch
    import torch

    from pokedex_trainer.exporters.quiet import quiet_converters

    module = torch.export.load(program).module()  # written by export.py a moment ago
    dims = tuple(int(v) for v in shape.split(","))
    example = torch.rand(*dims, generator=torch.Generator().manual_seed(0)) * 255.0
    with quiet_converters():
        edge = litert_torch.convert(module, (example,))
    edge.export(str(Path(target)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
