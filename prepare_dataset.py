"""Standardize and check a raw photo collection: python prepare_dataset.py --help"""

import sys

from pokedex_trainer.cli.commands import prepare_main, run_main

if __name__ == "__main__":
    sys.exit(run_main(prepare_main))
