"""The safe reader turns every odd kind of file into 8-bit RGB, or a clear error."""

import io

import numpy as np
import pytest
from PIL import Image

from pokedex_trainer.data.images import UnreadableImageError, probe_image, read_image


def _save(path, image, fmt, **options):
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, fmt, **options)
    return path


def test_unicode_path(tmp_path):
    path = _save(tmp_path / "León" / "ñandú.jpg", Image.new("RGB", (20, 10), (200, 10, 10)),
                 "JPEG")
    image = read_image(path)
    assert image.shape == (10, 20, 3) and image.dtype == np.uint8
    assert image[5, 10, 0] > 150


def test_exif_orientation_is_applied(tmp_path):
    pixels = np.zeros((10, 30, 3), np.uint8)
    pixels[:, :10] = (255, 0, 0)  # red on the left
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = _save(tmp_path / "rotated.jpg", image, "JPEG", exif=exif, quality=100)
    out = read_image(path)
    assert out.shape == (30, 10, 3)
    assert out[2, 5, 0] > 200 and out[-3, 5, 0] < 60  # red now on top
    assert probe_image(path) == (10, 30)


def test_grayscale_rgba_cmyk_and_16_bit(tmp_path):
    gray = read_image(_save(tmp_path / "g.png", Image.new("L", (8, 8), 100), "PNG"))
    assert gray.shape == (8, 8, 3) and (gray == 100).all()
    rgba = Image.new("RGBA", (8, 8), (0, 0, 255, 0))  # fully transparent blue
    out = read_image(_save(tmp_path / "a.png", rgba, "PNG"))
    assert out.shape == (8, 8, 3) and (out == 255).all()  # composited on white
    cmyk = read_image(_save(tmp_path / "c.jpg", Image.new("CMYK", (8, 8), (0, 255, 255, 0)),
                            "JPEG", quality=100))
    assert cmyk.shape == (8, 8, 3)
    assert cmyk[4, 4, 0] > 200 and cmyk[4, 4, 1] < 60  # red
    deep = Image.fromarray(np.full((8, 8), 65535 // 2, dtype=np.uint16))
    out16 = read_image(_save(tmp_path / "d.png", deep, "PNG"))
    assert out16.dtype == np.uint8 and abs(int(out16[0, 0, 0]) - 127) <= 1


def test_large_jpeg_is_decoded_at_reduced_scale_when_allowed(tmp_path):
    path = _save(tmp_path / "big.jpg", Image.new("RGB", (1600, 1200), (9, 99, 199)), "JPEG")
    full = read_image(path)
    reduced = read_image(path, min_size=(224, 224))
    assert full.shape == (1200, 1600, 3)
    assert reduced.shape[0] >= 224 and reduced.shape[1] >= 224
    assert reduced.shape[0] < 1200


@pytest.mark.parametrize("content,reason", [
    (b"", "empty file"),
    (b"this is not an image", "not an image"),
])
def test_unreadable_files_raise_a_clear_error(tmp_path, content, reason):
    path = tmp_path / "bad.jpg"
    path.write_bytes(content)
    with pytest.raises(UnreadableImageError, match=reason):
        read_image(path)


def test_truncated_jpeg_is_unreadable(tmp_path):
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(
        buffer, "JPEG")
    path = tmp_path / "truncated.jpg"
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(UnreadableImageError, match="truncated"):
        read_image(path)
