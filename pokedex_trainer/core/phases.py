"""The two-phase plan shared by both trainers, and what "the last N layers" means.

A *layer* here is a backbone layer that owns weights and is not BatchNorm: a convolution or a
dense layer. Keras also counts weightless layers (activations, padding, additions) and PyTorch
counts containers, so counting only weighted layers is what makes ``--fine_tune_layers 50``
unfreeze the same kind of thing in both frameworks. BatchNorm layers stay frozen, in inference
mode, so the small batches of fine-tuning do not wreck their ImageNet statistics.
"""

from __future__ import annotations

from dataclasses import dataclass

from pokedex_trainer.config import TrainConfig

WEIGHTED = "weighted"
BATCHNORM = "batchnorm"
OTHER = "other"


@dataclass(frozen=True)
class Phase:
    """One ``fit`` of the plan.

    Args:
        name: ``"head"`` (phase 1) or ``"fine_tune"`` (phase 2).
        epochs: epochs of this phase.
        learning_rate: Adam learning rate of this phase.
        trainable: ``"head"`` (backbone frozen), ``"last_n"`` (the last ``n_layers`` weighted
            layers of the backbone and the head), ``"weighted"`` (every weighted layer of the
            backbone and the head: ``--fine_tune_layers all``; BatchNorm stays frozen as with
            last_n) or ``"all"`` (nothing frozen, BatchNorm trains: from scratch).
        n_layers: used when ``trainable == "last_n"``.
    """

    name: str
    epochs: int
    learning_rate: float
    trainable: str
    n_layers: int = 0


def plan_phases(config: TrainConfig) -> list[Phase]:
    """Phase 1 trains the head, phase 2 fine-tunes; a from-scratch run freezes nothing.

    Phases with zero epochs are left out (``--fine_tune_epochs 0`` skips phase 2).
    """
    if config.pretrained:
        phases = [
            Phase("head", config.epochs, config.learning_rate, "head"),
            Phase("fine_tune", config.fine_tune_epochs, config.fine_tune_learning_rate,
                  *(("weighted", 0) if config.fine_tune_layers == "all" else
                    ("last_n", config.fine_tune_layers))),
        ]
    else:
        # Random weights have nothing worth protecting: train everything, then continue at the
        # fine-tune learning rate so the two phases still read as "fast, then careful".
        phases = [
            Phase("head", config.epochs, config.learning_rate, "all"),
            Phase("fine_tune", config.fine_tune_epochs, config.fine_tune_learning_rate, "all"),
        ]
    return [phase for phase in phases if phase.epochs > 0]


def layers_to_unfreeze(kinds: list[str], n_layers: int) -> set[int]:
    """Indices (into ``kinds``, backbone order) of the last ``n_layers`` weighted layers."""
    weighted = [i for i, kind in enumerate(kinds) if kind == WEIGHTED]
    return set(weighted[-n_layers:]) if n_layers > 0 else set()


def trainable_mask(phase: Phase, kinds: list[str]) -> list[bool]:
    """Per backbone layer: does it train in ``phase``? BatchNorm trains only when all does."""
    if phase.trainable == "all":
        return [True] * len(kinds)
    if phase.trainable == "head":
        return [False] * len(kinds)
    if phase.trainable == "weighted":
        return [kind == WEIGHTED for kind in kinds]
    chosen = layers_to_unfreeze(kinds, phase.n_layers)
    return [i in chosen for i in range(len(kinds))]


@dataclass(frozen=True)
class ResumePoint:
    """Where an interrupted run goes on (resume/state.json; runs/checked_files.py checks it
    before it is read into one): the phase (``phase_index``, its first global epoch
    ``phase_start``), the next global 0-based epoch and whether the phase had ended, the
    learning rate and plateau counters then, the bookkeeping of RunState (``run_state``: best
    score, early stopping, best logs, epochs run), and the folder its weights and optimizer are
    in (``state_dir``, given by the saver that writes it)."""

    phase_index: int
    phase_start: int
    next_epoch: int
    phase_done: bool
    learning_rate: float | None
    plateau: dict | None
    run_state: dict
    state_dir: str | None = None

    @classmethod
    def from_saved(cls, saved: dict) -> "ResumePoint":
        """From a checked resume/state.json (its other keys, such as ``format``, left out)."""
        return cls(**{name: saved.get(name) for name in cls.__dataclass_fields__})

    def saved(self) -> dict:
        """The keys resume/state.json holds for it."""
        return {name: getattr(self, name) for name in self.__dataclass_fields__}
