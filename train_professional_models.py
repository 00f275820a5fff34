"""Train an animal classifier: python train_professional_models.py --help"""

import sys

from pokedex_trainer.cli import run_main, train_main

if __name__ == "__main__":
    sys.exit(run_main(train_main))
