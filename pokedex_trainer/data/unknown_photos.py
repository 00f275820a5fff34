"""Photos of none of the classes: a user's folder (any layout), or a built-in far-away source.

Used by training (``--unknown_dir``, outlier exposure: core/outlier_exposure.py) and by
evaluation (``evaluate.py --unknown_data``). A folder that shares a photo with the classes
(the same bytes under any name) is refused: a species' own photo taught as "none of them"
would pull the model two ways.

``--unknown_dir builtin`` needs no download and no folder: 500 generated images written once
into ``<output_dir>/.pokedex_unknown_builtin/`` -- uniform and smooth noise, flat colours,
gradients, stripes and checkerboards, and scikit-learn's bundled handwritten digits
(upscaled, coloured). They are far from any photo; docs/benchmarks.md says what they buy.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import numpy as np

from pokedex_trainer.errors import UserError

logger = logging.getLogger(__name__)

UNKNOWN_LABEL = -1  # the label of a photo of none of the classes (core/outlier_exposure.py)
BUILTIN = "builtin"
BUILTIN_FOLDER = ".pokedex_unknown_builtin"
BUILTIN_VERSION = "v1"
BUILTIN_SIDE = 96
BUILTIN_PER_KIND = 80  # x 5 kinds, + 100 digits


def photo_files(folder: Path, option: str) -> list[Path]:
    """Every photo under ``folder``, in any layout (hidden folders skipped, links to folders
    not followed); one line when there is none."""
    from pokedex_trainer.data.files import is_image_file

    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{option} '{folder}' is not a folder")
    found = []
    for top, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [Path(top) / name for name in sorted(files) if is_image_file(Path(top) / name)]
    if not found:
        raise UserError(f"{option} '{folder}' holds no photo (.jpg, .jpeg, .png)")
    return found


def content_hash(path: Path) -> str:
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def photo_hashes(files: list[Path]) -> dict[Path, str]:
    """The content hash of each file that can be read (the others are left out: they are
    skipped later, with their own warning)."""
    found = {}
    for path in files:
        try:
            found[path] = content_hash(path)
        except OSError:
            continue
    return found


def distinct_photos(files: list[Path], folder: Path, hashes: dict[Path, str]) -> list[Path]:
    """``files`` with one copy of each content (the first by name; ``hashes``: photo_hashes),
    so that a photo saved twice is never both held out and trained on; a warning counts the
    copies left out."""
    seen, kept = set(), []
    for path in files:
        digest = hashes.get(path)
        if digest is None or digest not in seen:
            kept.append(path)
            seen.add(digest)
    if len(kept) < len(files):
        logger.warning("--unknown_dir '%s': %d of its photos are copies of others (the same "
                       "content): each is used once", folder, len(files) - len(kept))
    return kept


def check_no_shared_photos(unknown: dict[Path, str], known: list[Path]) -> None:
    """One line when a photo of the unknown folder (``unknown``: photo_hashes of it) is also
    one of the classes' photos."""
    known_hashes = {}
    for path in known:
        try:
            known_hashes.setdefault(content_hash(path), path)
        except OSError:
            continue
    for path, digest in unknown.items():
        twin = known_hashes.get(digest)
        if twin is not None:
            raise UserError(f"the unknown photo '{path}' is also the class photo '{twin}' (the "
                            "same content): an unknown folder must hold photos of none of the "
                            "classes")


def _builtin_images(rng: np.random.Generator):
    """(name, uint8 RGB image) of every built-in far-away image, in a fixed order."""
    import cv2
    from sklearn.datasets import load_digits

    side = BUILTIN_SIDE
    ys, xs = np.mgrid[0:side, 0:side].astype(np.float32) / side
    for i in range(BUILTIN_PER_KIND):
        yield f"noise_{i:03d}", rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
        sigma = float(rng.uniform(1.5, 10.0))
        smooth = cv2.GaussianBlur(rng.normal(0, 1, (side, side, 3)).astype(np.float32), (0, 0),
                                  sigma)
        smooth = (smooth - smooth.min()) / max(float(np.ptp(smooth)), 1e-6)
        yield f"smooth_{i:03d}", (smooth * 255).astype(np.uint8)
        yield f"flat_{i:03d}", np.broadcast_to(rng.integers(0, 256, 3, dtype=np.uint8),
                                               (side, side, 3)).copy()
        angle = rng.uniform(0, np.pi)
        ramp = np.cos(angle) * xs + np.sin(angle) * ys
        ramp = (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1e-6)
        low, high = rng.integers(0, 256, (2, 3))
        yield f"gradient_{i:03d}", (low + ramp[..., None] * (high - low)).astype(np.uint8)
        period = rng.uniform(4, 24)
        if i % 2:
            pattern = (np.floor(xs * side / period) + np.floor(ys * side / period)) % 2
        else:
            pattern = (np.floor((np.cos(angle) * xs + np.sin(angle) * ys) * side / period)) % 2
        yield f"stripes_{i:03d}", np.where(pattern[..., None] > 0, low, high).astype(np.uint8)
    digits = load_digits().images  # 1797 8x8 images in 0..16, bundled with scikit-learn
    for i, index in enumerate(rng.choice(len(digits), 100, replace=False)):
        glyph = cv2.resize((digits[index] / 16.0).astype(np.float32), (side, side),
                           interpolation=cv2.INTER_CUBIC).clip(0, 1)[..., None]
        ink, paper = rng.integers(0, 256, (2, 3))
        yield f"digit_{i:03d}", (paper + glyph * (ink - paper.astype(np.float32))).astype(
            np.uint8)


def builtin_folder(output_dir: Path) -> Path:
    """The built-in images' folder under ``output_dir``, written once (seeded: the same
    images every time)."""
    import cv2

    folder = Path(output_dir) / BUILTIN_FOLDER / BUILTIN_VERSION
    done = folder / ".complete"
    if done.is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    for name, image in _builtin_images(np.random.default_rng(2019)):
        target = folder / f"{name}.png"
        partial = folder / f".{name}.partial.png"
        cv2.imwrite(str(partial), cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2BGR))
        os.replace(partial, target)
    done.write_text("500 generated images, written by the trainer (--unknown_dir builtin)\n",
                    encoding="utf-8")
    return folder


def _check_one_readable(files: list[Path], folder: Path) -> None:
    """One line when not one of the photos decodes (the loader skips each unreadable one)."""
    from pokedex_trainer.data.images import UnreadableImageError, read_image

    for path in files:
        try:
            read_image(path, min_size=(32, 32))
            return
        except UnreadableImageError:
            continue
    raise UserError(f"--unknown_dir '{folder}': none of its {len(files)} files can be read as "
                    "a photo")


VALIDATION_SHARE = 0.2  # of the unknown photos, held out to choose the shipped score


def split_unknown(files: list[Path], seed: int) -> tuple[list[Path], list[Path]]:
    """(training, validation) photos of an unknown folder: a seeded fifth is held out (none
    below 10 photos), which evaluate.py and export.py use to choose the "unknown" score."""
    held = int(round(VALIDATION_SHARE * len(files))) if len(files) >= 10 else 0
    order = np.random.default_rng([seed, 34]).permutation(len(files))
    chosen = set(order[:held].tolist())
    return ([f for i, f in enumerate(files) if i not in chosen],
            [f for i, f in enumerate(files) if i in chosen])


HELD_OUT_RECORD = "unknown_validation.json"  # in the run folder: what training held out


def record_held_out(run_dir: Path, held: list[Path], trained: list[Path] = ()) -> None:
    """The held-out photos and those training used, by path and content, as training chose
    them (a resumed run keeps the record its start wrote). The trained ones are the bank of
    the knn_contrast score (evaluation/known_score.py)."""
    from pokedex_trainer.user_io.atomic import atomic_write_json

    if (Path(run_dir) / HELD_OUT_RECORD).exists():
        return

    def entries(paths):
        return [{"path": str(Path(path).resolve()), "hash": content_hash(Path(path))}
                for path in paths]

    atomic_write_json(Path(run_dir) / HELD_OUT_RECORD, {
        "note": "photos of --unknown_dir held out of training ('photos': they choose the "
                "'unknown' score) and trained on ('trained')",
        "photos": entries(held), "trained": entries(trained)})


def held_out_files(run_dir: Path, key: str = "photos") -> list[Path]:
    """The held-out unknown photos a run recorded (``key`` "trained": those it trained on),
    those still there with the same content; a warning names what changed. Empty without a
    record (or a damaged one, or a run of an earlier version for "trained")."""
    import json

    record = Path(run_dir) / HELD_OUT_RECORD
    try:
        text = record.read_text("utf-8")
    except OSError:
        return []  # a run without a folder of unknown photos
    try:
        data = json.loads(text)
        entries = data.get(key, []) if key == "trained" else data[key]
        recorded = [(Path(e["path"]), str(e["hash"])) for e in entries]
    except (ValueError, KeyError, TypeError, AttributeError):
        logger.warning("%s is damaged (its '%s' is not a list of photos): those photos are not "
                       "used", record, key)
        return []
    found = []
    for path, digest in recorded:
        # written as absolute paths of regular files: anything else was edited since
        if not path.is_absolute() or not path.is_file():
            continue
        try:
            if content_hash(path) == digest:
                found.append(path)
        except OSError:
            continue
    if len(found) < len(recorded):
        what = "held out" if key == "photos" else "trained on"
        logger.warning("%d of the %d unknown photos %s %s are gone or changed: the %d left "
                       "are used", len(recorded) - len(found), len(recorded), run_dir, what,
                       len(found))
    return found


def unknown_training_samples(given: str, output_dir: Path, known: list[Path], cap: int,
                             seed: int, held_out: list | None = None) -> list[tuple[str, int]]:
    """(absolute path, -1) of the unknown photos a run trains on: at most ``cap`` (the count
    of labelled training photos, so they never outnumber them), a seeded choice, after a
    fifth is held out for validation (split_unknown)."""
    folder = builtin_folder(output_dir) if given == BUILTIN else Path(given)
    files = photo_files(folder, "--unknown_dir")
    if given != BUILTIN:
        hashes = photo_hashes(files)
        check_no_shared_photos(hashes, known)
        _check_one_readable(files, folder)
    # A user's folder: a fifth held out to choose the score. Not the generated images: outlier
    # exposure trains max softmax on their kind, so their held-out twins would choose it,
    # while on real far photos knn does better (docs/benchmarks.md).
    held = []
    if given != BUILTIN:
        files, held = split_unknown(distinct_photos(files, folder, hashes), seed)
    if held_out is not None:
        held_out.extend(held)  # for record_held_out, once the run folder exists
    if held:
        logger.info("--unknown_dir: %d of its photos held out to choose the 'unknown' score "
                    "and check its threshold (evaluate.py, export.py)", len(held))
    if len(files) > cap:
        order = np.random.default_rng([seed, 33]).permutation(len(files))[:cap]
        logger.info("--unknown_dir: %d of its %d photos, as many as the labelled training "
                    "photos", cap, len(files))
        files = [files[i] for i in sorted(order)]
    logger.info("--unknown_dir %s: %d photos of none of the classes join the training split, "
                "trained towards 'none of them' (outlier exposure; never a class)",
                given, len(files))
    return [(str(path.resolve()), UNKNOWN_LABEL) for path in files]
