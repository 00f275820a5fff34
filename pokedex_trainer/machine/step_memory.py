"""What one step of a network needs in memory on the CPU, checked before the first one.

A batch that does not fit ends by the kernel's out-of-memory killer (exit 137, not a word) in
the middle of the first step: the input pixels are a small part of it. A step holds, for every
pixel of every image, what the network computes from it (activations kept for the backward
pass, the framework's workspaces); that grows with pixels x batch, and by network. The bytes
per pixel below were measured by ``benchmarks/step_memory.py`` (peak resident memory of the
real trainer at two image sizes, batch 2; a forward pass of batch 8 for inference) on the
reference machine (2 CPU cores, TensorFlow 2.21, PyTorch 2.14; see docs/benchmarks.md). On a
GPU the frameworks report their own out-of-memory errors, which end in one line already.
"""

from __future__ import annotations

from pokedex_trainer.machine.memory import gigabytes, input_bytes, refuse_unless_fits

# (model_type, framework) -> bytes per input pixel per image: (from scratch, transfer, inference)
# Measured on 2026-12-07 (benchmarks/results/step_memory.json: training at 64 and 128 px;
# inference, the larger of that run and one at 96 and 192 px). The tiny test networks are not
# listed: their step is counted as its input pixels only.
BYTES_PER_PIXEL = {
    ("mobilenet", "keras"): (1454, 627, 290),
    ("mobilenet", "pytorch"): (1848, 1509, 408),
    ("resnet", "pytorch"): (3955, 620, 412),
    ("resnet", "keras"): (3732, 198, 154),
    ("efficientnet", "keras"): (13343, 1144, 778),
    ("efficientnet", "pytorch"): (10546, 198, 875),
}
_SMALLEST = (0, 0, 0)


def _figures(model_type: str, framework: str) -> tuple[int, int, int]:
    framework = "pytorch" if framework == "torch" else framework
    return BYTES_PER_PIXEL.get((model_type, framework), _SMALLEST)


def training_step_bytes(model_type: str, framework: str, pretrained: bool, batch: int,
                        image_size: tuple[int, int]) -> int:
    """Estimated peak memory a training step adds, input pixels included."""
    scratch, transfer, _ = _figures(model_type, framework)
    per_pixel = transfer if pretrained else scratch
    height, width = image_size
    return batch * height * width * per_pixel + input_bytes(batch, image_size)


def inference_bytes(model_type: str, framework: str, batch: int,
                    image_size: tuple[int, int]) -> int:
    """Estimated peak memory a forward pass of ``batch`` images adds, input included."""
    height, width = image_size
    return batch * height * width * _figures(model_type, framework)[2] + \
        input_bytes(batch, image_size)


def check_training_step(config) -> None:
    """Before the first step on the CPU: refuse, with the numbers, a batch that cannot fit."""
    if not isinstance(config.batch_size, int):
        return
    need = training_step_bytes(config.model_type, config.framework, config.pretrained,
                               config.batch_size, config.image_size)
    height, width = config.image_size
    refuse_unless_fits(
        need, f"a training step of {config.spec.display_name} at --image_size {height} {width} "
              f"with --batch_size {config.batch_size} (estimated, "
              f"{gigabytes(need // max(config.batch_size, 1))} per image)",
        "use a smaller --image_size or --batch_size (or --batch_size auto)")
