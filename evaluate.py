"""Evaluate a trained model (not available yet)."""

import sys

from pokedex_trainer.cli import not_yet_available, run_main

if __name__ == "__main__":
    sys.exit(run_main(not_yet_available("evaluate.py", "the evaluation report")))
