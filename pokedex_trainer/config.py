"""The resolved configuration of one training run: the guide's defaults, saved with every run."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, replace
from typing import Iterable

from pokedex_trainer.errors import UserError
from pokedex_trainer.networks import FRAMEWORKS, MODEL_SPECS, choose_framework, get_spec


MAX_IMAGE_SIDE = 4096  # 7x the largest seed default (EfficientNetB7, 600 px)

# The recipes: for every option the command line leaves out, the value measured best for where
# the backbone's weights come from. --recipe guide keeps the guide's values (the defaults of
# TrainConfig below) for every run; --recipe auto (the default) takes:
# * "scratch" (--weights none, no --base_model): benchmarks/recipe.py on real photos, see
#   docs/training.md, "The from-scratch recipe";
# * "transfer" (ImageNet weights or a weights file, no --base_model): benchmarks/transfer_peer.py
#   against a bare torchvision fine-tune script, see docs/training.md, "The transfer recipe".
# A run from --base_model keeps the guide's values.
SCRATCH_DEFAULTS: dict[str, object] = {
    "augment": "light",
    "lr_schedule": "cosine",
    "label_smoothing": 0.1,
}
TRANSFER_DEFAULTS: dict[str, object] = {
    "augment": "light",
    "fine_tune_layers": "all",
}
RECIPES: dict[str, dict[str, object]] = {"scratch": SCRATCH_DEFAULTS,
                                         "transfer": TRANSFER_DEFAULTS}
RECIPE_CHOICES = ("auto", "guide")
# Options that only mean something with the guide's value of a recipe option: giving one keeps
# that value (--lr_patience asks for the plateau schedule, --augment_warmup for full).
RECIPE_DEFAULT_KEPT_BY: dict[str, tuple[str, ...]] = {
    "augment": ("augment_warmup",),
    "lr_schedule": ("lr_patience", "lr_factor"),
}


def default_workers() -> int:
    """Data-loading processes: leave one core to the framework, use at most 8."""
    return max(1, min(8, (os.cpu_count() or 2) - 1))


@dataclass(frozen=True)
class TrainConfig:
    """Every knob of a run. ``None`` for image_size / batch_size means the model's seed default.

    Frozen: a run's configuration is resolved once (``resolved``, then the base model and
    ``--batch_size auto`` in runs/opening.py) and never changed afterwards; derive a new one with
    ``dataclasses.replace``.
    """

    data_path: str = "data/training"
    model_type: str = "efficientnet"
    epochs: int = 50
    fine_tune_epochs: int = 30
    fine_tune_layers: int | str = 50  # or "all": every weighted layer (BatchNorm stays frozen)
    batch_size: int | str | None = None  # "auto": the largest that fits, found at start
    learning_rate: float = 0.001
    fine_tune_learning_rate: float = 0.0001
    image_size: tuple[int, int] | None = None
    patience: int = 10
    lr_patience: int = 5
    lr_factor: float = 0.2
    min_lr: float = 1e-7
    weights: str = "imagenet"
    output_dir: str = "model/ultra"
    log_dir: str = "data/logs_ultra/tensorboard"
    val_split: float = 0.15
    test_split: float = 0.15
    seed: int = 42
    workers: int = field(default_factory=default_workers)
    cache: str = "none"  # decoded-image cache: none, ram or disk (data/cache.py)
    cache_dir: str | None = None  # --cache disk: where (default: <output_dir>/cache)
    mixed_precision: bool = False
    compile: bool = False  # --compile: torch.compile (PyTorch) / jit_compile=True (Keras)
    dropout: float = 0.3
    run_name: str | None = None
    augment: str = "full"  # none, light or full (the guide's 13 transforms)
    histogram_freq: int = 1
    save_every: int = 0
    save_h5: bool = False  # Keras: also <arch>_final_<stamp>.h5 (legacy HDF5) beside the .keras
    keep_resume: bool = False  # a finished run keeps resume/ (by default it is removed)
    class_weight: str = "none"
    sampler: str = "none"
    deterministic: bool = False
    memory_limit_mb: int | None = None
    base_model: str | None = None  # a .keras/.pth of an earlier run: its backbone, a new head
    keras_backend: str = "auto"  # Keras networks: auto, tensorflow, torch or jax (resolved)
    framework: str = "auto"  # auto, keras or pytorch (resolved: keras or pytorch)
    augment_warmup: int = 0  # epochs ramping the augmentation from light to full
    label_smoothing: float = 0.0
    lr_schedule: str = "plateau"  # plateau (reduce on plateau) or cosine (per phase)
    warmup_epochs: int = 0  # cosine: linear warm-up epochs at the start of each phase
    optimizer: str = "adam"  # adam or adamw (decoupled weight decay)
    weight_decay: float = 0.01  # adamw only
    ema: float = 0.0  # decay of the moving average of the weights (0: off)
    unknown_dir: str | None = None  # photos of none of the classes, or "builtin" (outlier exposure)
    unknown_weight: float = 0.5  # weight of an unknown photo's loss (towards uniform)
    recipe: str = "auto"  # auto: the measured defaults for scratch / transfer; guide: the guide's
    search_name: str | None = None  # the hyperparameter search this run is a trial of
    search_trial: int | None = None  # its trial number in that search

    def resolved(self) -> "TrainConfig":
        """Fill the model defaults and check the values; raises UserError on a bad value."""
        spec = self.spec
        values = asdict(self)
        if values["image_size"] is None:
            values["image_size"] = spec.image_size
        if values["batch_size"] is None:
            values["batch_size"] = spec.batch_size
        values["image_size"] = tuple(int(v) for v in values["image_size"])
        if values["framework"] == "auto":
            values["framework"] = choose_framework(self.model_type)
        given = values["unknown_dir"]
        if given is not None and given.strip() and given != "builtin":
            # the folder itself, not a path relative to where the command ran (--resume may
            # run elsewhere)
            values["unknown_dir"] = os.path.abspath(given)
        config = TrainConfig(**values)
        config.validate()
        return config

    def validate(self) -> None:
        spec = self.spec
        height, width = self.image_size
        if min(height, width) < spec.min_image_size:
            raise UserError(
                f"--image_size {height} {width} is too small for {spec.display_name}: "
                f"each side must be at least {spec.min_image_size} px"
            )
        checks = [
            (self.epochs >= 0, "--epochs must be 0 or more"),
            (self.fine_tune_epochs >= 0, "--fine_tune_epochs must be 0 or more"),
            (self.epochs + self.fine_tune_epochs > 0, "--epochs and --fine_tune_epochs are both 0"),
            (self.fine_tune_layers == "all" or (isinstance(self.fine_tune_layers, int) and
                                                self.fine_tune_layers >= 0),
             "--fine_tune_layers must be 0 or more, or all"),
            (self.batch_size == "auto" or self.batch_size >= 1,
             "--batch_size must be at least 1, or 'auto'"),
            (self.learning_rate > 0, "--learning_rate must be positive"),
            (self.fine_tune_learning_rate > 0, "--fine_tune_learning_rate must be positive"),
            (self.patience >= 1, "--patience must be at least 1"),
            (self.lr_patience >= 1, "--lr_patience must be at least 1"),
            (0 < self.lr_factor < 1, "--lr_factor must be between 0 and 1"),
            (0 <= self.val_split < 1, "--val_split must be a fraction in [0, 1)"),
            (0 <= self.test_split < 1, "--test_split must be a fraction in [0, 1)"),
            (self.val_split + self.test_split < 1, "--val_split + --test_split must be below 1"),
            (self.val_split > 0, "--val_split must be above 0: checkpoints and early stopping "
                                 "need a validation split"),
            (0 <= self.dropout < 1, "--dropout must be in [0, 1)"),
            (self.workers >= 0, "--workers must be 0 or more"),
            (self.cache in ("none", "ram", "disk"), "--cache must be none, ram or disk"),
            (self.cache_dir is None or self.cache == "disk", "--cache_dir is the folder of "
                                                            "--cache disk: add --cache disk"),
            (self.histogram_freq >= 0, "--histogram_freq must be 0 or more"),
            (self.save_every >= 0, "--save_every must be 0 or more"),
            (not self.save_h5 or spec.framework == "keras",
             f"--save_h5 writes a Keras .h5 file, so it is for the Keras networks (efficientnet, "
             f"mobilenet); {spec.display_name} saves .pth files"),
            (self.class_weight in ("none", "balanced"), "--class_weight must be none or balanced"),
            (self.sampler in ("none", "balanced"), "--sampler must be none or balanced"),
            (0 <= self.seed < 2**32, "--seed must be a whole number from 0 to 4294967295"),
            (self.keras_backend in ("auto", "tensorflow", "torch", "jax"),
             "--keras_backend must be auto, tensorflow, torch or jax"),
            (self.augment in ("none", "light", "full"), "--augment must be none, light or full"),
            (self.recipe in RECIPE_CHOICES, "--recipe must be auto or guide"),
            (self.augment_warmup >= 0, "--augment_warmup must be 0 or more"),
            (0 <= self.label_smoothing < 1, "--label_smoothing must be in [0, 1)"),
            (self.lr_schedule in ("plateau", "cosine"), "--lr_schedule must be plateau or "
                                                        "cosine"),
            (self.warmup_epochs >= 0, "--warmup_epochs must be 0 or more"),
            (0 <= self.min_lr < min(self.learning_rate, self.fine_tune_learning_rate),
             "--min_lr must be 0 or more and below both learning rates"),
            (self.optimizer in ("adam", "adamw"), "--optimizer must be adam or adamw"),
            (0 <= self.weight_decay < 1, "--weight_decay must be in [0, 1)"),
            (self.ema == 0 or 0.5 <= self.ema < 1, "--ema must be 0 (off) or a decay in "
                                                   "[0.5, 1), such as 0.999"),
            (0 < self.unknown_weight <= 10, "--unknown_weight must be above 0 and at most 10"),
            (self.unknown_dir is not None or self.unknown_weight == TrainConfig.unknown_weight,
             "--unknown_weight weighs the photos of --unknown_dir: give that too (a folder of "
             "photos of none of the classes, or builtin)"),
            (self.unknown_dir is None or bool(self.unknown_dir.strip()),
             "--unknown_dir needs a folder of photos of none of the classes, or builtin"),
            (self.unknown_dir is None or self.sampler == "none",
             "--unknown_dir does not go with --sampler balanced (the unknown photos have no "
             "class to balance): use --class_weight balanced"),
            (max(height, width) <= MAX_IMAGE_SIDE,
             f"--image_size {height} {width}: each side must be at most {MAX_IMAGE_SIDE} px"),
        ]
        for ok, message in checks:
            if not ok:
                raise UserError(message)
        if self.run_name is not None:
            from pokedex_trainer.user_io.path_checks import check_single_component

            check_single_component(self.run_name, "--run_name")
        self._check_batch_memory()

    def _check_batch_memory(self) -> None:
        """One batch of input pixels alone must fit in the memory there is (a first check;
        the framework's own out-of-memory error is reported as one line too)."""
        if self.batch_size == "auto":
            return
        from pokedex_trainer.machine.memory import input_bytes, refuse_unless_fits

        height, width = self.image_size
        refuse_unless_fits(input_bytes(self.batch_size, self.image_size),
                           f"--image_size {height} {width} with --batch_size {self.batch_size} "
                           "(the input pixels alone)",
                           "use a smaller size or batch (or --batch_size auto)")

    @property
    def spec(self):
        """The (network, framework) route of this run; UserError when there is none."""
        if self.framework not in FRAMEWORKS:
            raise UserError(f"--framework must be {', '.join(FRAMEWORKS[:-1])} or "
                            f"{FRAMEWORKS[-1]}, not '{self.framework}'")
        if self.model_type not in MODEL_SPECS:
            raise UserError(f"--model_type must be one of {', '.join(sorted(MODEL_SPECS))}")
        try:
            return get_spec(self.model_type, self.framework)
        except KeyError:
            raise UserError(f"--model_type {self.model_type} has no {self.framework} network"
                            ) from None

    @property
    def pretrained(self) -> bool:
        """True when the backbone starts from trained weights (ImageNet, a file, a base model)."""
        return bool(self.base_model) or self.weights.lower() != "none"

    def recipe_name(self) -> str:
        """Which recipe fills the options left out: guide, scratch or transfer."""
        if self.recipe == "guide" or self.base_model:
            return "guide"
        return "transfer" if self.pretrained else "scratch"

    def with_recipe_defaults(self, explicit: Iterable[str]) -> tuple["TrainConfig", dict]:
        """The run's recipe (``recipe_name``) sets each of its options not in ``explicit`` (the
        options the user gave) nor kept by one of them (``RECIPE_DEFAULT_KEPT_BY``). Returns
        the config and the values it took (those that differ from the guide's)."""
        defaults = RECIPES.get(self.recipe_name(), {})
        given = set(explicit)
        taken = {name: value for name, value in defaults.items()
                 if name not in given and not given & set(RECIPE_DEFAULT_KEPT_BY.get(name, ()))
                 and getattr(self, name) != value}
        return (replace(self, **taken) if taken else self), taken

    def to_dict(self) -> dict:
        values = asdict(self)
        values["image_size"] = list(self.image_size) if self.image_size else None
        return values

    @classmethod
    def field_types(cls) -> dict:
        """Each option's type as written in this class (checked when a saved config is read)."""
        return {name: f.type for name, f in cls.__dataclass_fields__.items()}


@dataclass(frozen=True)
class TrainActions:
    """What the trainer's command line asks beyond a run's configuration: what to do with it
    (resume, measure the batch size, export, k-fold, search) and where to log. ``explicit``:
    the options the command line gives (what a search keeps fixed, what the recipe defaults
    never override); ``recipe_defaults``: the values the run took from its recipe."""

    resume: str | None = None
    find_batch_size: bool = False
    export: str | None = None
    kfold: int | None = None
    live_log: str | None = None
    search_trials: int | None = None
    search_name: str | None = None
    search_storage: str | None = None
    search_space: str | None = None
    explicit: dict = field(default_factory=dict)
    recipe_defaults: dict = field(default_factory=dict)

    @property
    def searching(self) -> bool:
        """Any of the search's options given: the command is a search."""
        return any(value is not None for value in (self.search_trials, self.search_name,
                                                    self.search_storage, self.search_space))
