"""Train an animal classifier: python train_professional_models.py --help

From Python (a notebook): ``from train_professional_models import EfficientNetTrainer``
(also ResNet152Trainer, MobileNetV2Trainer, Trainer); see pokedex_trainer/api.py. The guide's
``ResNet152Model`` (the network of a resnet run, which loads its ``.pth``) is importable too.
"""

import sys

from pokedex_trainer.api import (EfficientNetTrainer, MobileNetV2Trainer,  # noqa: F401
                                 ResNet152Trainer, Trainer)
from pokedex_trainer.cli.commands import run_main, train_main


def __getattr__(name: str):
    # Imported on first use only: --help and the Keras runs never load PyTorch.
    if name == "ResNet152Model":
        from pokedex_trainer.backends.torch.guide_model import ResNet152Model

        return ResNet152Model
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if __name__ == "__main__":
    sys.exit(run_main(train_main))
