"""Training throughput of one model_type: images/s and peak memory, data loader on or off.

    python benchmarks/train_throughput.py --model_type mobilenet --steps 30 --loader on
    python benchmarks/train_throughput.py --model_type resnet --mixed_precision --loader off

"off" feeds one pre-made batch again and again (the bare framework's speed); "on" feeds the
project's loader (read + decode + full augmentation in worker processes, batches through shared
memory) over generated photo-like JPEGs, with ``--cache ram|disk`` after one epoch that fills
the cache. The gap between the two is what the input pipeline costs on this machine; PyTorch
runs also report the share of the timed steps spent waiting for a batch. Prints a table and
writes JSON (--output).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pokedex_trainer.config import TrainConfig, default_workers  # noqa: E402
from pokedex_trainer.data.scan import scan_dataset  # noqa: E402
from pokedex_trainer.data.feeding import BatchLoader, BatchSource  # noqa: E402
from pokedex_trainer.networks import MODEL_SPECS, get_spec  # noqa: E402


def photo_like_dataset(root: Path, size: int, classes: int = 10, per_class: int = 24) -> Path:
    """Generated JPEGs of realistic size and texture (not flat colours), written once."""
    from pokedex_trainer.data.synthetic import write_dataset

    target = root / f"photos_{size}"
    if not target.exists():
        names = [f"Clase{i:02d}" for i in range(classes)]
        write_dataset(target, classes=names, per_class=per_class,
                      size=(size * 4 // 3, size), seed=0, quality=92)
    return target


class RepeatLoader:
    """A loader that gives one pre-made batch ``steps`` times per epoch (the loader off)."""

    def __init__(self, images, labels, steps: int):
        self.batch = types.SimpleNamespace(images=images, labels=labels)
        self.steps, self.epoch = steps, 0

    def __len__(self) -> int:
        return self.steps

    def iter_epoch(self, epoch=None, in_place=False):
        for _ in range(self.steps):
            yield self.batch


def keras_throughput(config: TrainConfig, loader: BatchLoader | None, steps: int) -> dict:
    """The project's Keras step (its model, compile, feed and ``fit``) on the backend of
    --keras_backend (TensorFlow, PyTorch or JAX)."""
    from pokedex_trainer.backends.keras.select import activate, choose

    backend, _ = choose(config.keras_backend)
    activate(backend)
    import numpy as np

    from pokedex_trainer.core.phases import Phase
    from pokedex_trainer.backends.keras.keras_networks import apply_phase, build_model
    from pokedex_trainer.backends.keras.keras_backends import keras_on_current_backend
    from pokedex_trainer.backends.keras.trainer import compile_model, configure_precision

    keras_on = keras_on_current_backend()
    configure_precision(config.mixed_precision, keras_on)
    spec = get_spec(config.model_type, "keras")
    model = build_model(spec, 10, config.image_size, "none", config.dropout)
    apply_phase(model, Phase("bench", 1, 1e-3, "all"))
    compile_model(model, 1e-3, 10, config)
    if loader is None:
        images = np.random.default_rng(0).integers(0, 256, (config.batch_size,
                                                             *config.image_size, 3), np.uint8)
        loader = RepeatLoader(images, np.zeros(config.batch_size, np.int32), steps)
    feed = keras_on.feed(loader, config.image_size)

    def fit(count):
        keras_on.set_epoch(feed, 0)
        model.fit(feed, steps_per_epoch=count, epochs=1, verbose=0, shuffle=False)

    fit(min(3, steps))  # build the graph / warm the kernels
    start = time.perf_counter()
    peak = keras_on.peak_memory(lambda: fit(steps))
    if peak is None:  # no GPU: the steps ran here instead
        fit(steps)
    elapsed = time.perf_counter() - start
    return {"seconds": elapsed, "gpu_peak_mb": peak / 2**20 if peak else None,
            "framework": "keras", "backend": keras_on.name,
            "device": f"{keras_on.describe()}, Keras on {keras_on.name}"}


def torch_throughput(config: TrainConfig, loader: BatchLoader | None, steps: int) -> dict:
    """The project's PyTorch step: its network, optimizer and ``Runner.train_one_epoch``
    (input conversion, autocast, scaler, metrics on the device, progress bar)."""
    import torch

    from pokedex_trainer.core.phases import Phase
    from pokedex_trainer.backends.torch.feeding import make_data_loader
    from pokedex_trainer.backends.torch.torch_networks import build_model
    from pokedex_trainer.backends.torch.runner import Runner, make_optimizer

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    torch.backends.cudnn.benchmark = True  # as the trainer sets it
    model = build_model(get_spec(config.model_type, "pytorch"), 10, "none",
                        config.dropout).to(device)
    if cuda:
        model = model.to(memory_format=torch.channels_last)
    context = types.SimpleNamespace(config=config, num_classes=10, class_weights=lambda: None)
    runner = Runner(context, model, device)
    optimizer = make_optimizer(config, list(model.parameters()), 1e-3)
    module = torch.compile(model) if config.compile else model
    phase = Phase("bench", 1, 1e-3, "all")
    if loader is None:
        images = torch.randint(0, 256, (config.batch_size, *config.image_size, 3),
                               dtype=torch.uint8)
        batch = (images.pin_memory() if cuda else images,
                 torch.zeros(config.batch_size, dtype=torch.long), None)
        source = None
    else:
        source = make_data_loader(loader, cuda)

    def batches(count):
        if source is None:
            return [batch] * count
        taken, epoch = [], 0
        while len(taken) < count:
            source.set_epoch(epoch)
            taken += [b for _, b in zip(range(count - len(taken)), source)]
            epoch += 1
        return taken

    runner.train_one_epoch(batches(3), optimizer, phase, 0, module)
    feed = batches(steps)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    runner.train_one_epoch(feed, optimizer, phase, 1, module)  # reads its metrics: synced
    elapsed = time.perf_counter() - start
    if source is not None:
        source.close()
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else None
    return {"seconds": elapsed, "gpu_peak_mb": peak, "framework": "pytorch",
            "backend": "torch", "device": torch.cuda.get_device_name() if cuda else "CPU"}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model_type", choices=sorted(MODEL_SPECS), default="mobilenet")
    parser.add_argument("--steps", type=int, default=20, help="timed steps (after 3 warm-up)")
    parser.add_argument("--batch_size", type=int, default=None)
    parser.add_argument("--image_size", type=int, nargs=2, default=None)
    parser.add_argument("--mixed_precision", action="store_true")
    parser.add_argument("--framework", choices=("auto", "keras", "pytorch"), default="auto",
                        help="the network's route (auto: the guide's pairing)")
    parser.add_argument("--keras_backend", choices=("auto", "tensorflow", "torch", "jax"),
                        default="auto", help="Keras networks: the Keras 3 backend")
    parser.add_argument("--compile", action="store_true",
                        help="the trainer's --compile (torch.compile / jit_compile=True)")
    parser.add_argument("--loader", choices=("on", "off"), default="on")
    parser.add_argument("--workers", type=int, default=default_workers())
    parser.add_argument("--cache", choices=("none", "ram", "disk"), default="none",
                        help="the loader's decoded-image cache, filled by one epoch first")
    parser.add_argument("--data_dir", default="benchmarks/data",
                        help="where generated photos are cached")
    parser.add_argument("--output", default=None, help="JSON file to write")
    args = parser.parse_args(argv)
    config = TrainConfig(model_type=args.model_type, batch_size=args.batch_size,
                         image_size=tuple(args.image_size) if args.image_size else None,
                         mixed_precision=args.mixed_precision, workers=args.workers,
                         keras_backend=args.keras_backend, framework=args.framework,
                         compile=args.compile).resolved()
    loader = None
    if args.loader == "on":
        root = photo_like_dataset(Path(args.data_dir), max(config.image_size))
        index = scan_dataset(root)
        cache = None
        if args.cache != "none":
            from pokedex_trainer.data.cache import ImageCache

            cache = ImageCache(root, [r for r, _ in index.samples], config.image_size,
                               args.cache, Path(args.data_dir) / "cache")
        source = BatchSource(root, index.samples, config.image_size, training=True,
                             cache=cache)
        loader = BatchLoader(source, config.batch_size, shuffle=True, workers=args.workers,
                             drop_last=True)
        if cache is not None:
            for _ in loader.iter_epoch(0, in_place=True):  # fill the cache
                pass
    run = torch_throughput if get_spec(args.model_type, args.framework).framework == "torch" \
        else keras_throughput
    try:
        result = run(config, loader, args.steps)
    finally:
        if loader is not None:
            loader.close()
            if loader.source.cache is not None:
                loader.source.cache.close()
    images = args.steps * config.batch_size
    result.update({"kind": "step", "model_type": args.model_type, "loader": args.loader,
                   "compile": args.compile,
                   "batch_size": config.batch_size, "image_size": list(config.image_size),
                   "mixed_precision": args.mixed_precision, "steps": args.steps,
                   "workers": args.workers if args.loader == "on" else 0,
                   "cache": args.cache if args.loader == "on" else "-",
                   "images_per_second": images / result["seconds"],
                   "machine": platform.platform(), "python": platform.python_version()})
    print(f"{'model_type':<12}{'loader':<8}{'cache':<6}{'batch':>6}{'size':>10}{'amp':>5}"
          f"{'img/s':>10}{'GPU MB':>9}{'wait':>6}  device")
    gpu = f"{result['gpu_peak_mb']:.0f}" if result["gpu_peak_mb"] else "-"
    wait = result.get("loader_wait_share")
    print(f"{args.model_type:<12}{args.loader:<8}{result['cache']:<6}{config.batch_size:>6}"
          f"{'x'.join(map(str, config.image_size)):>10}{'yes' if args.mixed_precision else 'no':>5}"
          f"{result['images_per_second']:>10.1f}{gpu:>9}{'-' if wait is None else f'{wait:.2f}':>6}"
          f"  {result['device']}")
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
