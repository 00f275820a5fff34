"""Export a trained model to TFLite / ONNX / SavedModel / TorchScript, each file verified:
python export.py --help"""

import sys

from pokedex_trainer.cli.commands import export_main, run_main

if __name__ == "__main__":
    sys.exit(run_main(export_main))
