"""The bare loops this project is measured against: what a user would write by hand.

    python benchmarks/bare_loops.py --model_type mobilenet --loop torch --mixed_precision
    python benchmarks/bare_loops.py --model_type efficientnet --loop keras --keras_backend jax

``torch``: torchvision's network, one random batch already on the device, channels-last,
float16 autocast with a gradient scaler (bfloat16 autocast on a CPU), SGD with momentum,
cudnn.benchmark on, ``--warmup`` steps then ``--steps`` timed ones, synchronized once at the
end. ``keras``: ``keras.applications``' network compiled with SGD and ``model.fit`` on arrays in
memory (a warm-up fit, then a timed one), on the Keras backend asked. Nothing of this project
is imported: these are the yardsticks. Prints one line and writes JSON (--output).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

TORCHVISION = {"mobilenet": "mobilenet_v2", "resnet": "resnet152", "efficientnet": "efficientnet_b7"}
KERAS = {"mobilenet": "MobileNetV2", "resnet": "ResNet152", "efficientnet": "EfficientNetB7"}
SIZES = {"mobilenet": (224, 64), "resnet": (224, 32), "efficientnet": (600, 16)}


def torch_loop(model_type: str, size: int, batch: int, mixed: bool, warmup: int,
               steps: int) -> dict:
    import torch
    import torchvision

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    torch.backends.cudnn.benchmark = True
    model = getattr(torchvision.models, TORCHVISION[model_type])(weights=None, num_classes=10)
    model = model.to(device, memory_format=torch.channels_last).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    dtype = (torch.float16 if cuda else torch.bfloat16) if mixed else None
    scaler = torch.amp.GradScaler("cuda", enabled=mixed and cuda)
    x = torch.rand(batch, 3, size, size, device=device).contiguous(
        memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,), device=device)

    def step():
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    for _ in range(warmup):
        step()
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "backend": "torch", "framework": "pytorch",
            "device": torch.cuda.get_device_name() if cuda else "CPU"}


def keras_loop(model_type: str, size: int, batch: int, mixed: bool, warmup: int, steps: int,
               backend: str) -> dict:
    os.environ["KERAS_BACKEND"] = backend
    import keras
    import numpy as np

    if mixed:
        keras.mixed_precision.set_global_policy("mixed_float16")
    model = getattr(keras.applications, KERAS[model_type])(
        weights=None, input_shape=(size, size, 3), classes=10)
    model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
                  loss="sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (batch * max(warmup, steps), size, size, 3)).astype("float32")
    y = rng.integers(0, 10, len(x)).astype("int32")
    model.fit(x[:batch * warmup], y[:batch * warmup], batch_size=batch, epochs=1, verbose=0,
              shuffle=False)
    start = time.perf_counter()
    model.fit(x[:batch * steps], y[:batch * steps], batch_size=batch, epochs=1, verbose=0,
              shuffle=False)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "backend": backend, "framework": "keras",
            "device": _keras_device(backend)}


def _keras_device(backend: str) -> str:
    if backend == "torch":
        import torch

        return torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    if backend == "jax":
        import jax

        device = jax.devices()[0]
        return f"{device.platform}:0 ({device.device_kind})"
    import tensorflow as tf

    return "GPU" if tf.config.list_physical_devices("GPU") else "CPU"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model_type", choices=sorted(TORCHVISION), default="mobilenet")
    parser.add_argument("--loop", choices=("torch", "keras"), default="torch")
    parser.add_argument("--keras_backend", choices=("tensorflow", "torch", "jax"),
                        default="torch")
    parser.add_argument("--image_size", type=int, default=None, help="square side (default: "
                        "the guide's: 224, EfficientNetB7 600)")
    parser.add_argument("--batch_size", type=int, default=None)
    parser.add_argument("--mixed_precision", action="store_true")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--output", default=None, help="JSON file to write")
    args = parser.parse_args(argv)
    size = args.image_size or SIZES[args.model_type][0]
    batch = args.batch_size or SIZES[args.model_type][1]
    if args.loop == "torch":
        result = torch_loop(args.model_type, size, batch, args.mixed_precision, args.warmup,
                            args.steps)
    else:
        result = keras_loop(args.model_type, size, batch, args.mixed_precision, args.warmup,
                            args.steps, args.keras_backend)
    result.update({"kind": "bare", "model_type": args.model_type, "batch_size": batch,
                   "image_size": [size, size], "mixed_precision": args.mixed_precision,
                   "steps": args.steps, "images_per_second": args.steps * batch / result["seconds"],
                   "machine": platform.platform(), "python": platform.python_version()})
    print(f"bare {args.loop} loop, {args.model_type} on {result['backend']}, batch {batch}, "
          f"{size}x{size}: {result['images_per_second']:.1f} img/s ({result['device']})")
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
