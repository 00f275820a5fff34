"""The albumentations pipelines shared by every trainer: uint8 RGB in, uint8 RGB out.

Augmentation never normalizes: each network's normalization lives inside the model, so the
same pipeline feeds Keras and PyTorch and every saved model takes pixels in 0..255.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no network check at import


def _import_albumentations():
    """albumentations imports its optional PyTorch transforms, and so all of PyTorch (1.4 s
    and some 400 MB in every data-loading worker, and PyTorch inside a Keras run), when
    PyTorch is installed. Nothing here uses them: unless PyTorch is already loaded, that one
    import is skipped (albumentations ignores its ImportError), and only while it runs."""
    skip = "torch" not in sys.modules and "albumentations" not in sys.modules
    if skip:
        sys.modules["albumentations.pytorch"] = None
    try:
        import albumentations
    finally:
        if skip and sys.modules.get("albumentations.pytorch", 0) is None:
            del sys.modules["albumentations.pytorch"]  # a later explicit import still works
    return albumentations


A = _import_albumentations()
import cv2  # noqa: E402


def build_train_transform(image_size: tuple[int, int], seed: int | None = None) -> A.Compose:
    """Every transform the guide lists, in an order that works on the small crop early.

    The crop comes first so the costly pixel operations run at the network's size, not at the
    photo's.
    """
    height, width = image_size
    border = cv2.BORDER_REFLECT_101
    return A.Compose(
        [
            # geometric
            A.RandomResizedCrop(size=(height, width), scale=(0.8, 1.0), p=1.0),
            A.HorizontalFlip(p=0.5),
            A.VerticalFlip(p=0.2),
            A.Rotate(limit=30, border_mode=border, p=0.5),
            A.Affine(translate_percent=(-0.0625, 0.0625), scale=(0.9, 1.1), rotate=(-15, 15),
                     border_mode=border, p=0.3),
            A.Perspective(scale=(0.02, 0.05), border_mode=border, p=0.2),
            # colour
            A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.2, p=0.5),
            A.HueSaturationValue(hue_shift_limit=10, sat_shift_limit=20, val_shift_limit=10,
                                 p=0.3),
            A.CLAHE(clip_limit=2.0, p=0.1),
            # noise
            A.GaussianBlur(blur_limit=(3, 5), p=0.1),
            A.GaussNoise(std_range=(0.02, 0.08), p=0.1),
            A.CoarseDropout(num_holes_range=(1, 4), hole_height_range=(0.05, 0.15),
                            hole_width_range=(0.05, 0.15), fill=0, p=0.3),
            A.Sharpen(alpha=(0.1, 0.3), p=0.1),
        ],
        seed=seed,
    )


def build_light_transform(image_size: tuple[int, int], seed: int | None = None) -> A.Compose:
    """``--augment light``: the random crop, the horizontal flip and a mild colour change only,
    so early epochs learn nearly as fast as without augmentation."""
    height, width = image_size
    return A.Compose(
        [
            A.RandomResizedCrop(size=(height, width), scale=(0.8, 1.0), p=1.0),
            A.HorizontalFlip(p=0.5),
            A.RandomBrightnessContrast(brightness_limit=0.1, contrast_limit=0.1, p=0.3),
        ],
        seed=seed,
    )


def build_eval_transform(image_size: tuple[int, int]) -> A.Compose:
    """Resize to the network's size; no randomness, the same image gives the same pixels."""
    height, width = image_size
    return A.Compose([A.Resize(height, width, interpolation=cv2.INTER_AREA)])


AUGMENT_LEVELS = ("none", "light", "full")


def create_transform(image_size: tuple[int, int], is_training: bool,
                     seed: int | None = None, level: str = "full") -> A.Compose:
    """One factory: the augmenting train pipeline of ``level`` (none, light, full) or the
    deterministic eval one."""
    if not is_training or level == "none":
        return build_eval_transform(image_size)
    if level == "light":
        return build_light_transform(image_size, seed)
    return build_train_transform(image_size, seed)


def full_share(epoch: int, augment: str, warmup: int) -> float:
    """The fraction of training images that get the full pipeline in 0-based ``epoch`` (the
    others get the light one): with ``--augment full --augment_warmup N`` it ramps up as
    1/(N+1), 2/(N+1), ... over the first N epochs, then stays at 1."""
    if augment != "full":
        return 0.0
    if warmup <= 0 or epoch >= warmup:
        return 1.0
    return (epoch + 1) / (warmup + 1)
