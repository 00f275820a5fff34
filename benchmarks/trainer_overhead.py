"""Epoch time of the project's trainer against the bare framework on the same images.

    python benchmarks/trainer_overhead.py --model_type mobilenet --image_size 96 --epochs 4
    python benchmarks/trainer_overhead.py --model_type resnet --image_size 64 --augment on

The trainer runs for real (train_professional_models.py's code: loader, callbacks, TensorBoard,
best checkpoint, resume point, history). The bare run trains the same network on the same
split, batch size and number of steps from images decoded once into memory: ``model.fit`` on
arrays (Keras) or a plain PyTorch loop, each with a validation pass per epoch. Epoch 1 (graph
building, worker start-up) is left out; the median of the other epochs is compared. With
``--augment on`` the trainer augments while the bare run does not: the ratio then includes the
whole augmentation pipeline. Prints a table and writes JSON (--output).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from pokedex_trainer.config import TrainConfig, default_workers  # noqa: E402
from pokedex_trainer.networks import MODEL_SPECS, get_spec  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_type", choices=sorted(MODEL_SPECS), default="mobilenet")
    parser.add_argument("--image_size", type=int, default=96)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=4, help="at least 2; epoch 1 is left out")
    parser.add_argument("--augment", choices=("on", "off"), default="off")
    parser.add_argument("--workers", type=int, default=default_workers())
    parser.add_argument("--per_class", type=int, default=24, help="images per class (10 classes)")
    parser.add_argument("--data_dir", default="benchmarks/data")
    parser.add_argument("--output", default=None)
    return parser.parse_args(argv)


def trainer_epochs(config: TrainConfig) -> tuple[list[float], Path]:
    """Per-epoch seconds of a real run (history.csv's epoch_time_s) and its directory."""
    from pokedex_trainer.runs.lifecycle import run_training

    from pokedex_trainer.runs.store import RunStore

    run_dir = run_training(config)
    return [float(row["epoch_time_s"]) for row in RunStore(run_dir).history_rows()], run_dir


def decoded_split(run_dir: Path, split: str, size: int):
    from pokedex_trainer.runs.finished import run_split

    return run_split(run_dir, split).load_all((size, size))


def bare_keras(config: TrainConfig, train, val) -> list[float]:
    import keras

    from pokedex_trainer.backends.keras.keras_networks import build_model
    from pokedex_trainer.backends.keras.trainer import compile_model

    spec = get_spec(config.model_type)
    keras.utils.set_random_seed(config.seed)
    model = build_model(spec, 10, config.image_size, "none", config.dropout)
    compile_model(model, config.learning_rate, 10)
    times = []

    class Clock(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            times.append(time.perf_counter() - self.start)

    (x, y), (xv, yv) = train, val
    keep = len(x) - len(x) % config.batch_size  # the trainer drops the last partial batch
    model.fit(x[:keep].astype(np.float32), y[:keep], batch_size=config.batch_size,
              epochs=config.epochs, validation_data=(xv.astype(np.float32), yv),
              validation_batch_size=config.batch_size, shuffle=True, verbose=0,
              callbacks=[Clock()])
    return times


def bare_torch(config: TrainConfig, train, val) -> list[float]:
    import torch

    from pokedex_trainer.backends.torch.torch_networks import build_model

    torch.manual_seed(config.seed)
    model = build_model(get_spec("resnet"), 10, "none", config.dropout)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    x = torch.from_numpy(train[0]).permute(0, 3, 1, 2).float()
    y = torch.from_numpy(train[1]).long()
    xv = torch.from_numpy(val[0]).permute(0, 3, 1, 2).float()
    bs = config.batch_size
    times = []
    for _ in range(config.epochs):
        start = time.perf_counter()
        model.train()
        order = torch.randperm(len(x))
        for i in range(0, len(x) - len(x) % bs, bs):
            batch = order[i:i + bs]
            loss = torch.nn.functional.cross_entropy(model(x[batch]), y[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        model.eval()
        with torch.inference_mode():
            for i in range(0, len(xv), bs):
                model(xv[i:i + bs])
        times.append(time.perf_counter() - start)
    return times


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.epochs < 2:
        raise SystemExit("--epochs must be at least 2 (epoch 1 is left out)")
    from train_throughput import photo_like_dataset

    spec = get_spec(args.model_type)
    if spec.framework == "torch":
        import torchvision  # noqa: F401  (before TensorFlow, see model_files.import_frameworks)
    data = photo_like_dataset(Path(args.data_dir), args.image_size, per_class=args.per_class)
    with tempfile.TemporaryDirectory(prefix="pokedex_overhead_") as tmp:
        config = TrainConfig(data_path=str(data), model_type=args.model_type, weights="none",
                             image_size=(args.image_size, args.image_size),
                             batch_size=args.batch_size, epochs=args.epochs,
                             fine_tune_epochs=0, patience=args.epochs + 1,
                             lr_patience=args.epochs + 1, workers=args.workers,
                             augment=args.augment == "on", histogram_freq=0,
                             output_dir=f"{tmp}/runs", log_dir=f"{tmp}/tb",
                             run_name="overhead")
        trainer, run_dir = trainer_epochs(config)
        from pokedex_trainer.machine.memory import peak_resident_mb

        trainer_rss = peak_resident_mb()  # main process; loader workers are separate processes
        train = decoded_split(run_dir, "train", args.image_size)
        val = decoded_split(run_dir, "val", args.image_size)
        resolved = config.resolved()
        bare = (bare_torch if spec.framework == "torch" else bare_keras)(resolved, train, val)
    trainer_s, bare_s = float(np.median(trainer[1:])), float(np.median(bare[1:]))
    result = {"model_type": args.model_type, "image_size": args.image_size,
              "batch_size": args.batch_size, "epochs": args.epochs, "augment": args.augment,
              "workers": args.workers, "train_images": int(len(train[1])),
              "val_images": int(len(val[1])), "trainer_epoch_s": trainer,
              "bare_epoch_s": bare, "trainer_median_s": trainer_s, "bare_median_s": bare_s,
              "ratio": trainer_s / bare_s, "trainer_peak_rss_mb": trainer_rss, "machine": platform.platform(),
              "python": platform.python_version()}
    print(f"{'model_type':<12}{'size':>6}{'batch':>6}{'augment':>9}{'trainer s/epoch':>17}"
          f"{'bare s/epoch':>14}{'ratio':>7}{'trainer RSS MB':>16}")
    print(f"{args.model_type:<12}{args.image_size:>6}{args.batch_size:>6}{args.augment:>9}"
          f"{trainer_s:>17.2f}{bare_s:>14.2f}{result['ratio']:>7.2f}{trainer_rss:>16.0f}")
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
