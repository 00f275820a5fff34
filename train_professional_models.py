"""Train an animal classifier: python train_professional_models.py --help

From Python (a notebook): ``from train_professional_models import EfficientNetTrainer``
(also ResNet152Trainer, MobileNetV2Trainer, Trainer); see pokedex_trainer/api.py.
"""

import sys

from pokedex_trainer.api import (EfficientNetTrainer, MobileNetV2Trainer,  # noqa: F401
                                 ResNet152Trainer, Trainer)
from pokedex_trainer.cli import run_main, train_main

if __name__ == "__main__":
    sys.exit(run_main(train_main))
