"""Standardize and check a raw photo collection: python prepare_dataset.py --help"""

import sys

from pokedex_trainer.cli.parsers import run_main
from pokedex_trainer.prepare.run import main

if __name__ == "__main__":
    sys.exit(run_main(main))
