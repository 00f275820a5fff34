"""Opening a run: a new one (data checked, split made, configuration resolved once, files
written) or an interrupted one (its own files read back and checked). Framework-free."""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from pokedex_trainer.config import TrainConfig
from pokedex_trainer.runs.checkpoints import STATE_FORMAT
from pokedex_trainer.core.context import RunContext
from pokedex_trainer.core.phases import ResumePoint, plan_phases
from pokedex_trainer.core.training_backend import TrainingBackend
from pokedex_trainer.data.scan import (
    DatasetIndex,
    check_class_count,
    dataset_warnings,
    drop_samples,
    find_unreadable_headers,
    scan_dataset,
    stratified_split,
)
from pokedex_trainer.errors import UserError
from pokedex_trainer.networks import get_spec
from pokedex_trainer.runs.distributed import check_keras_cluster
from pokedex_trainer.runs.footprint import RunFootprint, missing_folders
from pokedex_trainer.runs.store import RunStore, timestamp
from pokedex_trainer.user_io.atomic import ensure_writable_dir

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainingBackendEntry:
    """What runs/ uses of one framework's training backend (backends/<framework>/trainer.py):
    the class that trains a run (core/training_backend.py TrainingBackend) and its
    ``--batch_size auto`` search."""

    make: Callable[[RunContext], TrainingBackend]
    find_batch_size: Callable[..., int]


@dataclass(frozen=True)
class ProcessGroup:
    """torchrun's process group as runs/lifecycle.py talks to it
    (backends/torch/process_group.py): join, leave, one object from rank 0 to every rank,
    one object from every rank to all."""

    join: Callable[[], None]
    leave: Callable[[], None]
    broadcast: Callable[[object], object]
    all_gather: Callable[[object], list]


def _import_framework_module(name: str):
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        if exc.name and exc.name.split(".")[0] in ("tensorflow", "keras", "torch", "torchvision"):
            raise UserError(f"{exc.name} is not installed: run "
                            "'python -m pip install -r requirements.txt'") from None
        raise


def load_training_backend(framework: str) -> TrainingBackendEntry:
    """The training backend of one framework, imported only when a run needs it."""
    module = _import_framework_module({"keras": "pokedex_trainer.backends.keras.trainer",
                                       "torch": "pokedex_trainer.backends.torch.trainer"}[
                                           framework])
    return TrainingBackendEntry(module.Backend, module.find_batch_size)


def load_process_group() -> ProcessGroup:
    """torchrun's process group (PyTorch's; the Keras networks train in one process)."""
    group = _import_framework_module("pokedex_trainer.backends.torch.process_group")
    return ProcessGroup(group.init_distributed, group.leave_distributed, group.broadcast,
                        group.all_gather)


def prepare_data(config: TrainConfig) -> tuple[DatasetIndex, dict, list[str]]:
    """Scan, drop unreadable files, split; returns the warnings to log with the run.

    The warnings are returned, not logged, so they land in the run's training.log too.
    """
    index = scan_dataset(config.data_path)
    bad = find_unreadable_headers(index)
    notes = [f"skipped unreadable image {relative}: {reason}" for relative, reason in bad]
    if bad:
        index, emptied = drop_samples(index, {relative for relative, _ in bad})
        notes.append(f"{len(bad)} unreadable files skipped (run prepare_dataset.py --check for "
                     "a full report)")
        if emptied:
            notes.append(f"class folders with no readable image, left out: {', '.join(emptied)}")
            check_class_count(index, " with readable images")
    notes.extend(dataset_warnings(index, config.image_size))
    from pokedex_trainer.data.balance import IMBALANCE_WARNING_RATIO, imbalance_ratio

    ratio = imbalance_ratio(index.counts().values())
    if ratio > IMBALANCE_WARNING_RATIO and config.class_weight == config.sampler == "none":
        notes.append(f"classes are imbalanced (largest/smallest = {ratio:.1f}): consider "
                     "--class_weight balanced or --sampler balanced")
    splits = stratified_split(index, config.val_split, config.test_split, config.seed)
    return index, splits, notes


def find_batch_size(config: TrainConfig, num_classes: int):
    """Run the backend's batch-size search for ``config``; returns a BatchSearch."""
    spec = config.spec
    logger.info("looking for the largest batch size that trains (%s, %dx%d%s)...",
                spec.display_name, *config.image_size,
                ", mixed precision" if config.mixed_precision else "")
    return load_training_backend(spec.framework).find_batch_size(config, spec, num_classes)


def find_batch_size_only(config: TrainConfig) -> int:
    """``--find_batch_size``: print the batch size ``--batch_size auto`` would use."""
    config, _ = select_keras_backend(config.resolved())
    num_classes = len(scan_dataset(config.data_path).class_names)
    result = find_batch_size(config, num_classes)
    print(result.describe())
    return result.chosen


def settle_framework(config: TrainConfig, probe=None, maybe_gpu=None) -> TrainConfig:
    """A new run's network and framework, before anything is built: those of ``--base_model``,
    else ``--framework auto``'s choice (a switch is said in the log), then checked against the
    options only one framework reads. ``probe``/``maybe_gpu``: see pick_training_framework."""
    from pokedex_trainer.backends.framework_choice import (check_framework_options,
                                                           pick_training_framework)

    if config.base_model:
        config = apply_base_model(config)
    if config.framework == "auto":
        framework, note = pick_training_framework(config, probe, maybe_gpu)
        config = replace(config, framework=framework)
        if note:
            logger.warning("%s", note)
    check_framework_options(config)
    return config


def apply_base_model(config: TrainConfig) -> TrainConfig:
    """Take the network (and, unless given, the input size) of ``--base_model``."""
    from pokedex_trainer.runs.transfer import describe_base_model

    base = describe_base_model(config.base_model)
    if config.model_type not in (None, base.model_type):
        raise UserError(f"--model_type {config.model_type} does not match --base_model "
                        f"'{base.path}', a {get_spec(base.model_type).display_name} model")
    if config.framework not in ("auto", base.framework):
        raise UserError(f"--framework {config.framework} does not match --base_model "
                        f"'{base.path}', a {base.framework} model")
    return replace(config, model_type=base.model_type, framework=base.framework,
                   image_size=config.image_size or base.image_size)


def run_framework(config: TrainConfig, resume_dir: Path | None) -> str:
    """keras or torch: the framework a run (new or resumed) trains with."""
    if resume_dir is not None:
        store = RunStore(Path(resume_dir))
        if store.is_run():
            return store.saved_config().spec.framework
    return config.spec.framework


def select_keras_backend(config: TrainConfig) -> tuple[TrainConfig, list[str]]:
    """For a Keras network: the backend it trains on, chosen once and recorded in the config
    (a resumed run keeps its own), and made the backend of this process."""
    if config.spec.framework != "keras":
        return config, []
    check_keras_cluster()
    from pokedex_trainer.backends.keras.select import activate, choose

    if config.keras_backend == "auto":
        backend, why = choose("auto")
        config = replace(config, keras_backend=backend)
        notes = [f"Keras backend {backend} ({why})"]
    else:
        backend, why = choose(config.keras_backend)
        notes = []
    activate(backend)
    return config, notes


def resolve_for_run(config: TrainConfig, num_classes: int) -> tuple[TrainConfig, list[str]]:
    """The run's final configuration, from one that ``TrainConfig.resolved`` filled and
    checked: the Keras backend, the base model's path, ``--batch_size auto``. Nothing changes
    it afterwards."""
    config, notes = select_keras_backend(config)
    if config.base_model:
        config = replace(config, base_model=str(Path(config.base_model).resolve()))
    elif config.weights.lower() not in ("imagenet", "none") and \
            not Path(config.weights).is_file():
        raise UserError(f"--weights: '{config.weights}' is neither 'imagenet', 'none' nor an "
                        "existing weights file")
    if config.batch_size == "auto":
        result = find_batch_size(config, num_classes)
        config = replace(config, batch_size=result.chosen)
        notes.append(f"--batch_size auto chose {result.describe()}")
    return config, notes


def create_run(config: TrainConfig, prepared: tuple | None = None
               ) -> tuple[RunContext, list[str]]:
    """Check the data, make the run directory and write what the run starts from.

    The configuration is resolved here, once for the run (model defaults, Keras backend, base
    model, ``--batch_size auto``); nothing changes it afterwards. ``prepared`` is (index,
    splits, notes) made beforehand (one fold of --kfold).
    """
    config = config.resolved()
    index, splits, notes = prepared if prepared else prepare_data(config)
    if config.cache == "ram":  # before any work: a full cache would have the run killed
        from pokedex_trainer.data.cache import check_ram_cache_fits

        check_ram_cache_fits(sum(map(len, splits.values())), config.image_size,
                             config.batch_size)
    config, resolve_notes = resolve_for_run(config, len(index.class_names))
    notes = resolve_notes + list(notes)
    unknown, held = None, []
    if config.unknown_dir:  # before the run directory: a folder with no photo is one line
        from pokedex_trainer.data.unknown_photos import unknown_training_samples

        unknown = unknown_training_samples(
            config.unknown_dir, Path(config.output_dir),
            [index.root / relative for split in splits.values() for relative, _ in split],
            cap=len(splits["train"]), seed=config.seed, held_out=held)
    started_stamp = timestamp()
    made = missing_folders(Path(config.log_dir)) + missing_folders(Path(config.output_dir))
    tensorboard_dir = ensure_writable_dir(Path(config.log_dir), "TensorBoard log directory")
    store = RunStore.create(Path(config.output_dir),
                            config.run_name or f"{config.model_type}_{started_stamp}",
                            config.spec)
    context = RunContext(config, config.spec, index, splits, store.root,
                         tensorboard_dir / store.root.name, started_stamp)
    context.footprint = RunFootprint.before_writing(context.tensorboard_dir, made)
    context.unknown_photos = unknown
    try:
        store.write_start(config, index, splits)
        if held:
            from pokedex_trainer.data.unknown_photos import record_held_out

            record_held_out(store.root, held, [Path(path) for path, _ in unknown])
    except BaseException:  # a full disk, Ctrl-C: no half-written run is left behind
        store.remove_new_run()
        context.footprint.remove()
        raise
    return context, notes


def _warn_changed_photos(root: Path, manifest: dict) -> None:
    """Say which photos changed since the run started (same names, other content)."""
    from pokedex_trainer.data.fingerprints import changed_photos

    recorded = manifest.get("fingerprints")
    if not isinstance(recorded, dict):  # a run of an earlier version: nothing to compare
        logger.info("--resume: this run was started by an earlier version, which kept no "
                    "fingerprints of its photos: photos changed since are not noticed")
        return
    changed = changed_photos(root, {k: v for k, v in recorded.items()
                                    if isinstance(k, str) and isinstance(v, str)})
    if changed:
        logger.warning("--resume: %d photo(s) changed since the run started (first: %s): the "
                       "run goes on with them as they are now; start a new run to train on one "
                       "version of the photos", len(changed), ", ".join(changed[:3]))


FEEDING_OPTIONS = ("workers", "cache", "cache_dir")  # how images are fed, not what is trained


def feeding_of(config: TrainConfig) -> dict:
    """The resuming command's feeding options, which replace the run's own (a machine with
    other cores or memory resumes it)."""
    return {name: getattr(config, name) for name in FEEDING_OPTIONS}


def open_resumed_run(run_dir: Path, feeding: dict | None) -> tuple[RunContext, dict]:
    """The context of an interrupted run from its own files: same config, split and names;
    ``feeding`` (see ``feeding_of``) replaces the run's feeding options. A run written by an
    earlier version is upgraded by its store first."""
    store = RunStore(Path(run_dir))
    if not store.is_run():
        raise UserError(f"--resume: '{run_dir}' is not a run directory (no config.json)")
    if not store.has_resume_state():
        raise UserError(f"--resume: '{run_dir}' has no resumable state (it stopped before its "
                        "first epoch ended, or is not a run directory)")
    config = store.config()
    if feeding:
        config = replace(config, **feeding)
    config, _ = select_keras_backend(config)  # the run's own backend (auto: chosen again)
    manifest = store.manifest()
    root = Path(config.data_path)
    if not root.is_dir():
        root = Path(manifest["data_path"])
    samples = [item for split in manifest["splits"].values() for item in split]
    missing = [p for p, _ in samples if not (root / p).is_file()]
    if missing:
        raise UserError(f"--resume: {len(missing)} images of the run's split are missing under "
                        f"'{root}' (first: {missing[0]})")
    store.class_names()  # class_names.json must agree with the manifest
    _warn_changed_photos(root, manifest)
    # The state and the history are checked before anything acts on them: a bad epochs_run
    # would truncate history.csv, an empty state would restart the run from scratch.
    point = ResumePoint.from_saved(
        store.resume_point([p.epochs for p in plan_phases(config)], STATE_FORMAT))
    index = DatasetIndex(root, manifest["class_names"], samples)
    context = RunContext(config, config.spec, index, manifest["splits"],
                         store.root, Path(config.log_dir) / store.root.name,
                         store.final_stamp() or timestamp())
    return context, point
