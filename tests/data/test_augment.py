"""The shared albumentations pipelines hold the seed's transforms and give uint8 HxWx3."""

from pathlib import Path

import numpy as np
import albumentations as A

from pokedex_trainer.data.augment import build_eval_transform, build_train_transform

SEED_TRANSFORMS = {
    "random resized crop": A.RandomResizedCrop, "horizontal flip": A.HorizontalFlip,
    "vertical flip": A.VerticalFlip, "rotation": A.Rotate, "shift/scale/rotate": A.Affine,
    "perspective": A.Perspective, "brightness/contrast": A.RandomBrightnessContrast,
    "hue/saturation/value": A.HueSaturationValue, "CLAHE": A.CLAHE,
    "gaussian blur": A.GaussianBlur, "gaussian noise": A.GaussNoise,
    "coarse dropout": A.CoarseDropout, "sharpen": A.Sharpen,
}


def test_every_seed_transform_is_in_the_train_pipeline():
    pipeline = build_train_transform((64, 64))
    kinds = {type(t) for t in pipeline.transforms}
    missing = [name for name, kind in SEED_TRANSFORMS.items() if kind not in kinds]
    assert not missing
    by_type = {type(t): t for t in pipeline.transforms}
    assert by_type[A.RandomResizedCrop].scale == (0.8, 1.0)
    assert by_type[A.HorizontalFlip].p == 0.5
    assert by_type[A.VerticalFlip].p == 0.2
    assert tuple(by_type[A.Rotate].limit) == (-30, 30)


def test_outputs_are_uint8_at_the_target_size_and_never_normalized():
    image = np.random.default_rng(0).integers(0, 256, (120, 90, 3), dtype=np.uint8)
    for pipeline in (build_train_transform((64, 48), seed=1), build_eval_transform((64, 48))):
        for _ in range(5):
            out = pipeline(image=image)["image"]
            assert out.shape == (64, 48, 3) and out.dtype == np.uint8
            assert out.max() > 1  # still 0..255 pixels


def test_eval_pipeline_is_deterministic_and_train_pipeline_is_seeded():
    image = np.random.default_rng(1).integers(0, 256, (80, 80, 3), dtype=np.uint8)
    evaluate = build_eval_transform((32, 32))
    assert np.array_equal(evaluate(image=image)["image"], evaluate(image=image)["image"])
    a = build_train_transform((32, 32), seed=5)
    b = build_train_transform((32, 32), seed=5)
    assert np.array_equal(a(image=image)["image"], b(image=image)["image"])


def test_the_pipelines_do_not_import_pytorch():
    """Data-loading workers and Keras runs import the pipelines; albumentations would bring all
    of PyTorch with them (its optional ToTensorV2), which they never use."""
    import subprocess
    import sys

    code = ("import sys; import pokedex_trainer.data.feeding, pokedex_trainer.data.augment as a; "
            "a.build_train_transform((32, 32)); print('torch' in sys.modules); "
            "import albumentations.pytorch; print('torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parents[2], timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["False", "True"]
