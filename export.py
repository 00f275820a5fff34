"""Export a trained model to TFLite / ONNX / TorchScript (not available yet)."""

import sys

from pokedex_trainer.cli import not_yet_available, run_main

if __name__ == "__main__":
    sys.exit(run_main(not_yet_available("export.py", "verified TFLite/ONNX/TorchScript export")))
