"""Everything a backend needs to know about the run it trains."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pokedex_trainer.config import TrainConfig
from pokedex_trainer.data.scan import DatasetIndex
from pokedex_trainer.data.feeding import BatchLoader, BatchSource
from pokedex_trainer.networks import ModelSpec


@dataclass
class RunContext:
    """One run: its resolved configuration, network, data, split and files.

    Args:
        config: the resolved configuration (not changed after the run starts).
        spec: the network.
        index: the dataset's classes and samples.
        splits: ``{"train"|"val"|"test": [(relative path, label), ...]}``.
        run_dir: the run directory.
        tensorboard_dir: this run's TensorBoard folder.
        timestamp: the stamp in the final model's name.
    """

    config: TrainConfig
    spec: ModelSpec
    index: DatasetIndex
    splits: dict[str, list[tuple[str, int]]]
    run_dir: Path
    tensorboard_dir: Path
    timestamp: str
    image_cache: object = None  # the --cache storage, opened by the first loader
    footprint: object = None  # what a new run made on disk (run_footprint.RunFootprint)
    unknown_photos: list | None = None  # --unknown_dir's photos, read once (unknown_samples)

    def unknown_samples(self) -> list[tuple[str, int]]:
        """(absolute path, -1) of the photos of none of the classes the run trains on
        (``--unknown_dir``, core/outlier_exposure.py); empty without one."""
        if self.config.unknown_dir is None:
            return []
        if self.unknown_photos is None:
            from pokedex_trainer.data.unknown_photos import unknown_training_samples

            known = [self.index.root / relative for split in self.splits.values()
                     for relative, _ in split]
            self.unknown_photos = unknown_training_samples(
                self.config.unknown_dir, Path(self.config.output_dir), known,
                cap=len(self.splits["train"]), seed=self.config.seed)
        return self.unknown_photos

    def open_image_cache(self):
        """The run's decoded-image cache (``--cache``), None when off. One for every split:
        it holds each file of the run's split manifest."""
        config = self.config
        if config.cache == "none":
            return None
        if self.image_cache is None:
            from pokedex_trainer.data.cache import ImageCache, default_cache_dir

            files = sorted({relative for split in self.splits.values()
                            for relative, _ in split} |
                           {path for path, _ in self.unknown_samples()})
            folder = Path(config.cache_dir) if config.cache_dir else \
                default_cache_dir(config.output_dir)
            self.image_cache = ImageCache(self.index.root, files, config.image_size,
                                          config.cache, folder)
        return self.image_cache

    def close_image_cache(self) -> None:
        if self.image_cache is not None:
            self.image_cache.close()
            self.image_cache = None

    @property
    def class_names(self) -> list[str]:
        return self.index.class_names

    @property
    def num_classes(self) -> int:
        return len(self.index.class_names)

    def make_loader(self, split: str, training: bool, shuffle: bool | None = None,
                    workers: int | None = None) -> BatchLoader:
        """A batch loader over ``split``; augmentation only when ``training`` and enabled."""
        config = self.config
        samples = self.splits[split]
        if split == "train" and training:  # photos of none of the classes: training only
            samples = samples + self.unknown_samples()
        source = BatchSource(self.index.root, samples, config.image_size,
                             training=training, seed=config.seed, augment=config.augment,
                             augment_warmup=config.augment_warmup,
                             cache=self.open_image_cache())
        return BatchLoader(source, self.config.batch_size,
                           shuffle=training if shuffle is None else shuffle,
                           workers=self.config.workers if workers is None else workers,
                           seed=self.config.seed, drop_last=training,
                           balanced=training and self.config.sampler == "balanced")

    def class_weights(self):
        """Per-class loss weights of ``--class_weight`` (None when off), from the train split."""
        if self.config.class_weight != "balanced":
            return None
        from pokedex_trainer.data.balance import balanced_class_weights

        return balanced_class_weights([label for _, label in self.splits["train"]],
                                      self.num_classes)
