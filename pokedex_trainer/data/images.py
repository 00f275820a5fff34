"""Read any image file a user may have into 8-bit RGB, or say clearly why it cannot be read.

Bytes are read first and decoded from memory, so unicode paths (``León/``) work on every OS.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from pokedex_trainer.errors import reason_line

EXIF_ORIENTATION = 0x0112


class UnreadableImageError(Exception):
    """The file is not an image Pillow can fully decode (corrupt, truncated, not an image)."""

    def __init__(self, path: Path | str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


def _to_rgb(image: Image.Image) -> np.ndarray:
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16-bit grayscale: scale the full range to 8 bits instead of clipping at 255.
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if values.max(initial=0) > 255 or mode.startswith("I;16") else 255.0
        gray = np.clip(values * (255.0 / top) + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in image.info):
        # Transparent pixels become white, not the arbitrary colour stored under alpha 0.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    if image.mode != "RGB":
        image = image.convert("RGB")
    return np.asarray(image, dtype=np.uint8)


def read_image(path: Path | str, min_size: tuple[int, int] | None = None) -> np.ndarray:
    """Decode ``path`` to a HxWx3 uint8 RGB array, upright as the camera meant it.

    Args:
        path: image file (JPEG, PNG, or anything else Pillow decodes).
        min_size: (height, width) the caller needs at least; large JPEGs are then decoded at a
            reduced scale that still covers it, which is several times faster.

    Raises:
        UnreadableImageError: the file is missing, empty, truncated or not an image.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise UnreadableImageError(path, exc.strerror or str(exc)) from None
    if not data:
        raise UnreadableImageError(path, "empty file")
    try:
        with Image.open(io.BytesIO(data)) as image:
            orientation = image.getexif().get(EXIF_ORIENTATION, 1)
            if min_size is not None and image.format == "JPEG":
                height, width = min_size
                if orientation in (5, 6, 7, 8):
                    height, width = width, height
                image.draft("RGB", (width, height))
            image.load()
            if orientation != 1:
                image = ImageOps.exif_transpose(image)
            return _to_rgb(image)
    except UnreadableImageError:
        raise
    except Exception as exc:  # Pillow raises many types for bad files; all mean "unreadable".
        raise UnreadableImageError(path, _pillow_reason(exc)) from None


def _pillow_reason(exc: Exception) -> str:
    """Pillow's complaint as a user reads it (its "cannot identify image file
    <_io.BytesIO object at 0x...>" names a buffer, not the file)."""
    reason = reason_line(exc)
    if reason.startswith("cannot identify image file"):
        return "not an image (no JPEG or PNG content)"
    return reason


def probe_image(path: Path | str) -> tuple[int, int]:
    """Return (width, height) after EXIF rotation from the header only, without decoding pixels.

    Raises:
        UnreadableImageError: the header is not a readable image.
    """
    try:
        with Image.open(path) as image:
            width, height = image.size
            if image.getexif().get(EXIF_ORIENTATION, 1) in (5, 6, 7, 8):
                width, height = height, width
            return width, height
    except Exception as exc:
        raise UnreadableImageError(path, _pillow_reason(exc)) from None
