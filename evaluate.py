"""Evaluate a model, an ensemble or a search, or compare training runs: python evaluate.py --help"""

import sys

from pokedex_trainer.cli.commands import evaluate_main, run_main

if __name__ == "__main__":
    sys.exit(run_main(evaluate_main))
